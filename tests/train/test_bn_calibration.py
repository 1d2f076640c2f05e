from __future__ import annotations

import torch

from ossnet_train.bn_calibration import batchnorm_layers, recalibrate_batchnorm
from ossnet_train.registry import create_model

TINY = dict(global_shape=(16, 16, 16), encoder_channels=(1, 4, 8), decoder_width=16)


def _batch(seed: int, n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "volume": torch.randn(2, 1, 16, 16, 16, generator=g),
        "coords": torch.rand(2, n, 3, generator=g) * 2 - 1,
        "patches": torch.randn(2, n, 1, 7, 7, 7, generator=g),
    }


def test_single_batch_gives_that_batch_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("c", "demo", **TINY)
    batch = _batch(1)
    # Reference: the decoder's first CBN input statistics of this batch, captured in train mode.
    captured: dict[str, torch.Tensor] = {}
    cbn = model.decoder.blocks[0].cbn1
    handle = cbn.register_forward_hook(lambda m, inp, out: captured.setdefault("x", inp[0].detach()))
    model.train()
    with torch.no_grad():
        model(batch["volume"], batch["coords"], batch["patches"])
    handle.remove()
    x = captured["x"].reshape(-1, captured["x"].shape[-1])
    used = recalibrate_batchnorm(model, [batch])
    assert used == 1 and not model.training
    torch.testing.assert_close(cbn.norm.running_mean, x.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cbn.norm.running_var, x.var(0, unbiased=True), rtol=1e-4, atol=1e-7)
    assert all(layer.momentum == 0.1 for layer in batchnorm_layers(model))


def test_average_over_batches_and_weights_untouched() -> None:
    torch.manual_seed(0)
    model = create_model("a", "demo", **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, [_batch(1), _batch(2), _batch(3)])
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    # num_batches_tracked counts the calibration batches (cumulative average over all three).
    assert int(model.decoder.blocks[0].cbn1.norm.num_batches_tracked) == 3


def test_no_batches_keeps_previous_statistics() -> None:
    model = create_model("c", "demo", **TINY)
    mean = model.decoder.blocks[1].cbn2.norm.running_mean.clone().fill_(0.5)
    model.decoder.blocks[1].cbn2.norm.running_mean.copy_(mean)
    assert recalibrate_batchnorm(model, []) == 0
    torch.testing.assert_close(model.decoder.blocks[1].cbn2.norm.running_mean, mean)
