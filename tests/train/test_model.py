"""OSS-Net model zoo: configs, registry, parameter counts, shapes, wiring, batch independence, export."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from ossnet_deploy.errors import ModelFormatError
from ossnet_deploy.preprocess import preprocess_preset
from ossnet_deploy.presets import PRESETS as PRESET_TABLE
from ossnet_train import pau as pau_module
from ossnet_train.config import (
    PATCH_MODES,
    PRESETS,
    VARIANT_SPECS,
    VARIANTS,
    ModelConfig,
    ModelPreset,
    canonical_variant,
    model_config,
    uses_large_patches,
)
from ossnet_train.decoder import CBNActivationFunction
from ossnet_train.model import OSSNet
from ossnet_train.pau import lean_backward
from ossnet_train.registry import build_model, config_from_dict, create_model, register_model

# The reference implementation's counts (docs/models.md#parameter-counts), PAU = 10 each.
REFERENCE_PARAMETERS = {
    ("brats", "onet"): 6_890_753,
    ("brats", "a"): 7_245_438,
    ("brats", "b"): 7_254_358,
    ("brats", "c"): 8_695_733,
    ("brats", "d"): 8_704_653,
    ("lits", "onet"): 9_057_237,
    ("lits", "a"): 9_409_177,
    ("lits", "b"): 9_409_520,
    ("lits", "c"): 10_866_490,
    ("lits", "d"): 10_866_833,
}
# Parts the reference details also give for BraTS.
REFERENCE_BRATS_PLAIN_ENCODER = 907_421
REFERENCE_BRATS_SKIP_ENCODER = 2_357_716
REFERENCE_BRATS_ONET_DECODER = 5_983_332

TINY = {"global_shape": (16, 16, 16), "encoder_channels": (4, 8, 16), "decoder_width": 32}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(variant: str, **overrides: object) -> OSSNet:
    torch.manual_seed(0)
    return create_model(variant, "brats", **{**TINY, **overrides})


def tiny_demo(variant: str) -> OSSNet:
    """One image channel (C_p <= 2) and an 8^3 global volume: the cheapest real model."""
    torch.manual_seed(0)
    return create_model(variant, "demo", global_shape=(8, 8, 8), encoder_channels=(1, 4, 8), decoder_width=16)


def inputs(model: OSSNet, batch: int, queries: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    volume = torch.randn(batch, cfg.in_channels, *cfg.global_shape, generator=gen)
    coords = torch.rand(batch, queries, 3, generator=gen) * 2 - 1
    patches = torch.randn(batch, queries, cfg.patch_channels, 7, 7, 7, generator=gen) if cfg.uses_patches else None
    return volume, coords, patches


# ---- configs and registry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("O-Net", "onet"), ("onet", "onet"), ("o_net", "onet"), ("A", "a"), ("b", "b"), (" C ", "c"), ("D", "d")],
)
def test_variant_aliases(alias: str, canonical: str) -> None:
    assert canonical_variant(alias) == canonical


def test_unknown_variant_and_preset_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown OSS-Net variant 'E'"):
        model_config("E", "brats")
    with pytest.raises(ValueError, match="unknown preset 'kits'"):
        model_config("c", "kits")
    with pytest.raises(ValueError, match=r"cannot override \['skip_encoder'\]"):
        model_config("a", "brats", skip_encoder=True)


def test_presets_follow_the_contract_table() -> None:
    brats, lits, demo = (model_config("c", name) for name in ("brats", "lits", "demo"))
    assert (brats.in_channels, brats.grid_shape, brats.latent_size, brats.latent_channels) == (4, (256, 256, 160), 320, 6)
    assert (lits.in_channels, lits.grid_shape, lits.latent_size, lits.num_blocks) == (1, (512, 512, 512), 512, 5)
    assert (demo.in_channels, demo.grid_shape, demo.latent_shape, demo.decoder_width) == (1, (224, 256, 192), (7, 8, 6), 128)
    assert model_config("a", "brats").latent_channels == 1
    assert model_config("b", "lits").patch_channels == 2
    assert model_config("d", "brats").patch_channels == 8
    assert model_config("onet", "demo").patch_channels == 0


@pytest.mark.parametrize(("variant", "large"), [("onet", False), ("a", False), ("b", True), ("c", False), ("d", True)])
def test_large_patches_are_decided_by_the_patch_mode(variant: str, large: bool) -> None:
    # B and D (and only they) add the pooled 14^3 patch: C_p = 2C, and the preprocessing pairs with it.
    cfg = model_config(variant, "brats")
    assert cfg.large_patches is large
    assert VARIANT_SPECS[variant].large_patches is large
    assert uses_large_patches(cfg.patch_mode) is large
    assert cfg.patch_channels == (2 * cfg.in_channels if large else cfg.in_channels if cfg.uses_patches else 0)
    assert [uses_large_patches(mode) for mode in PATCH_MODES] == [False, False, True]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_model_presets_come_from_the_one_preset_table(preset: str) -> None:
    # ossnet_deploy.presets holds both halves; the model's sizes and its preprocessing always fit.
    table = PRESET_TABLE[preset]
    assert PRESETS[preset] == ModelPreset(table.in_channels, table.encoder_channels, table.global_shape,
                                          table.decoder_width)
    for variant in VARIANTS:
        cfg = model_config(variant, preset)
        preprocess = preprocess_preset(preset, large_patches=cfg.large_patches)
        assert cfg.grid_shape == preprocess.shape and cfg.in_channels == len(preprocess.channels)
        assert cfg.patch_channels == (preprocess.patch_channels() if cfg.uses_patches else 0)


def test_tiny_overrides_derive_the_latent() -> None:
    cfg = model_config("c", "brats", **TINY)
    assert (cfg.num_blocks, cfg.latent_shape, cfg.latent_size) == (2, (4, 4, 4), 64)
    assert model_config("a", "demo", in_channels=2).encoder_channels == (2, 16, 32, 64, 128)
    assert model_config("a", "demo", encoder_channels=(3, 8)).in_channels == 3


def test_indivisible_sides_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"global_shape side 81 is not divisible by 2\^4 = 16"):
        model_config("c", "brats", global_shape=(128, 128, 81))
    with pytest.raises(ValueError, match=r"global_shape side 12 is not divisible by 2\^3 = 8"):
        model_config("a", "brats", global_shape=(16, 12, 16), encoder_channels=(4, 8, 16, 32))


def test_config_rejects_contradictions() -> None:
    cfg = model_config("c", "brats")
    with pytest.raises(ValueError, match="skip_encoder=False contradicts variant 'c'"):
        dataclasses.replace(cfg, skip_encoder=False)
    with pytest.raises(ValueError, match=r"encoder_channels\[0\]=4 differs from in_channels=2"):
        dataclasses.replace(cfg, in_channels=2)
    with pytest.raises(ValueError, match=r"latent_shape=\(8, 8, 4\) is not global_shape / 16"):
        dataclasses.replace(cfg, latent_shape=(8, 8, 4))
    with pytest.raises(ValueError, match="decoder_width=0 is not a positive int"):
        dataclasses.replace(cfg, decoder_width=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_dict_round_trip_is_json_safe(variant: str) -> None:
    cfg = model_config(variant, "demo")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(data["global_shape"], list)
    again = ModelConfig.from_dict(data)
    assert again == cfg
    assert isinstance(again.encoder_channels, tuple)
    assert config_from_dict(data) == cfg


def test_config_from_bad_dict_raises_model_format_error() -> None:
    data = model_config("c", "brats").to_dict()
    with pytest.raises(ModelFormatError, match=r"ckpt\.pt: model config has unknown fields"):
        ModelConfig.from_dict({**data, "dropout": 0.1}, source="ckpt.pt")
    del data["latent_shape"]
    with pytest.raises(ModelFormatError, match=r"ckpt\.pt: model config lacks fields.*latent_shape"):
        ModelConfig.from_dict(data, source="ckpt.pt")
    with pytest.raises(ModelFormatError, match=r"ckpt\.pt: unknown architecture 'vnet'"):
        config_from_dict({"architecture": "vnet"}, source="ckpt.pt")


def test_registry_dispatches_and_accepts_extensions() -> None:
    assert isinstance(build_model(model_config("a", "brats", **TINY)), OSSNet)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(object())

    @dataclasses.dataclass(frozen=True)
    class LinearConfig:
        architecture: str = "test_linear"

        @classmethod
        def from_dict(cls, data: dict, source: str | None = None) -> LinearConfig:
            return cls(**data)

    @register_model("test_linear", LinearConfig)
    def build_linear(config: LinearConfig) -> torch.nn.Module:
        return torch.nn.Linear(2, 1)

    assert isinstance(build_model(LinearConfig()), torch.nn.Linear)
    assert config_from_dict({"architecture": "test_linear"}) == LinearConfig()
    with pytest.raises(ValueError, match="built in"):
        register_model("ossnet", LinearConfig)


@pytest.mark.parametrize("architecture", ["unet3d", "unet2d"])
def test_registry_builds_the_unet_baselines_from_their_dicts(architecture: str) -> None:
    from ossnet_train.unet import UNetConfig  # the registry's built-in entries point here

    config = config_from_dict(UNetConfig(architecture=architecture).to_dict(), source="u.pt")
    with torch.device("meta"):
        model = build_model(config)
    assert model.config == config


# ---- parameter counts and shapes of the full presets (meta device: nothing allocated) -----------


@pytest.mark.parametrize(("preset", "variant"), sorted(REFERENCE_PARAMETERS))
def test_parameter_counts_equal_the_reference(preset: str, variant: str) -> None:
    with torch.device("meta"):
        model = create_model(variant, preset)
    assert n_params(model) == REFERENCE_PARAMETERS[(preset, variant)]


def test_brats_part_counts_equal_the_reference() -> None:
    with torch.device("meta"):
        onet, c = create_model("onet", "brats"), create_model("c", "brats")
    assert n_params(onet.encoder) == REFERENCE_BRATS_PLAIN_ENCODER
    assert n_params(onet.decoder) == REFERENCE_BRATS_ONET_DECODER
    assert n_params(c.encoder) == REFERENCE_BRATS_SKIP_ENCODER


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_full_presets_build_with_contract_shapes(preset: str, variant: str) -> None:
    with torch.device("meta"):
        model = create_model(variant, preset).eval()
        cfg = model.config
        latent, coarse = model.encode(torch.empty(1, cfg.in_channels, *cfg.global_shape))
        patches = torch.empty(5, cfg.patch_channels, 7, 7, 7) if cfg.uses_patches else None
        logits = model.decode(torch.empty(5, 3), patches, latent)
    assert latent.shape == (1, cfg.latent_channels, cfg.latent_size)
    assert cfg.latent_channels == (6 if variant in ("c", "d") else 1)
    assert (coarse.shape if coarse is not None else None) == ((1, 1, *cfg.latent_shape) if variant in ("c", "d") else None)
    assert logits.shape == (5, 1)


# ---- real forwards at tiny sizes --------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_forward_shapes_in_training_and_eval(variant: str) -> None:
    model = tiny_demo(variant)
    cfg = model.config
    volume, coords, patches = inputs(model, batch=2, queries=6)
    out = model.train()(volume, coords, patches)
    assert out.logits.shape == (2, 6, 1)
    assert out.logits.dtype == torch.float32
    has_coarse = variant in ("c", "d")
    assert (out.coarse_logits is not None) == has_coarse
    if has_coarse:
        assert out.coarse_logits.shape == (2, 1, 2, 2, 2)
    (out.logits.sum() + (out.coarse_logits.sum() if has_coarse else 0)).backward()
    model.eval()
    with torch.no_grad():
        latent, coarse = model.encode(volume[:1])
        logits = model.decode(coords[0], None if patches is None else patches[0], latent)
    assert latent.shape == (1, cfg.latent_channels, 8)
    assert (coarse.shape if coarse is not None else None) == ((1, 1, 2, 2, 2) if has_coarse else None)
    assert logits.shape == (6, 1)


def test_aux_head_returns_logits_not_probabilities() -> None:
    model = tiny_demo("c").eval()
    volume, _, _ = inputs(model, batch=1, queries=1)
    with torch.no_grad():
        model.encoder.aux_head.weight.mul_(50.0)
        coarse = model.encode(volume).coarse_logits
    assert coarse.min() < 0 or coarse.max() > 1


def test_patches_must_match_the_variant() -> None:
    a, onet = tiny("a").eval(), tiny("onet").eval()
    latent = torch.zeros(1, 1, 64)
    with pytest.raises(ValueError, match="needs patches"):
        a.decode(torch.zeros(3, 3), None, latent)
    with pytest.raises(ValueError, match=r"expects patches \(N, 4, 7, 7, 7\), got \(3, 8, 7, 7, 7\)"):
        a.decode(torch.zeros(3, 3), torch.zeros(3, 8, 7, 7, 7), latent)
    with pytest.raises(ValueError, match="takes no patches"):
        onet.decode(torch.zeros(3, 3), torch.zeros(3, 4, 7, 7, 7), latent)


def test_side_branch_pooling_equals_adaptive_max_pooling() -> None:
    model = tiny("c", global_shape=(32, 32, 16), encoder_channels=(4, 6, 8, 10)).eval()
    encoder = model.encoder
    volume, _, _ = inputs(model, batch=1, queries=1)
    assert encoder.pool_sizes == (4, 2, 1)
    with torch.no_grad():
        x, sides = volume, []
        for block, conv, bn, act in zip(encoder.blocks, encoder.side_convs, encoder.side_bns, encoder.side_acts, strict=True):
            x = block(x)
            sides.append(act(bn(conv(F.adaptive_max_pool3d(x, model.config.latent_shape)))))
        expected = encoder.merge_act(encoder.merge_bn(encoder.merge(torch.cat(sides, 1)))).flatten(2)
        latent = model.encode(volume).latent
    assert torch.equal(latent, expected)


# ---- wiring of the latent ---------------------------------------------------------------------------


def _modulations(model: OSSNet, coords: torch.Tensor, patches: torch.Tensor | None, latent: torch.Tensor) -> list[torch.Tensor]:
    """gamma/beta outputs of every CBN, in block order, for one decode call."""
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
        for block in model.decoder.blocks
        for cbn in (block.cbn1, block.cbn2)
        for layer in (cbn.gamma, cbn.beta)
    ]
    try:
        with torch.no_grad():
            model.decode(coords, patches, latent)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _randomise_cbn_linears(model: OSSNet) -> None:
    """Zero-initialised CBN weights would hide any wiring; give them values."""
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for block in model.decoder.blocks:
            for cbn in (block.cbn1, block.cbn2):
                for layer in (cbn.gamma, cbn.beta):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.1)


def test_skip_latent_channel_k_plus_1_conditions_exactly_block_k() -> None:
    model = tiny_demo("c").eval()
    _randomise_cbn_linears(model)
    _, coords, patches = inputs(model, batch=1, queries=5)
    latent = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1))
    base = _modulations(model, coords[0], patches[0], latent)
    for channel in range(1, 6):
        changed = latent.clone()
        changed[0, channel] += 1.0
        after = _modulations(model, coords[0], patches[0], changed)
        differs = [not torch.equal(x, y) for x, y in zip(base, after, strict=True)]
        block = channel - 1
        assert differs == [k // 4 == block for k in range(20)], f"latent channel {channel}"


def test_latent_channel_0_enters_the_decoder_input_only() -> None:
    model = tiny_demo("c").eval()
    _randomise_cbn_linears(model)
    _, coords, patches = inputs(model, batch=1, queries=5)
    latent = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1))
    changed = latent.clone()
    changed[0, 0] += 1.0
    assert all(torch.equal(x, y) for x, y in zip(_modulations(model, coords[0], patches[0], latent),
                                                 _modulations(model, coords[0], patches[0], changed), strict=True))
    with torch.no_grad():
        assert not torch.equal(model.decode(coords[0], patches[0], latent), model.decode(coords[0], patches[0], changed))
        # Block 0 sees it through its first Linear's last L input columns.
        block0 = model.decoder.blocks[0]
        block0.fc1.weight[:, -8:] = 0.0
        block0.shortcut.weight[:, -8:] = 0.0
        assert torch.equal(model.decode(coords[0], patches[0], latent), model.decode(coords[0], patches[0], changed))


def test_plain_latent_conditions_every_block() -> None:
    model = tiny_demo("a").eval()
    _randomise_cbn_linears(model)
    _, coords, patches = inputs(model, batch=1, queries=5)
    latent = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(1))
    base = _modulations(model, coords[0], patches[0], latent)
    after = _modulations(model, coords[0], patches[0], latent + 1.0)
    assert all(not torch.equal(x, y) for x, y in zip(base, after, strict=True))


def test_each_volume_conditions_only_its_own_queries() -> None:
    model = tiny_demo("d").eval()
    volume, coords, patches = inputs(model, batch=2, queries=7)
    with torch.no_grad():
        batched = model(volume, coords, patches)
        for b in range(2):
            latent, coarse = model.encode(volume[b : b + 1])
            torch.testing.assert_close(batched.logits[b], model.decode(coords[b], patches[b], latent), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(batched.coarse_logits[b : b + 1], coarse, rtol=1e-5, atol=1e-6)


def test_eval_logit_does_not_depend_on_the_batch() -> None:
    for model, queries in ((tiny_demo("onet"), 10_000), (tiny_demo("c"), 300)):  # CPU conv3d of patches is slow
        model.train()
        volume, coords, patches = inputs(model, batch=2, queries=64, seed=3)
        with torch.no_grad():
            model(volume, coords, patches)  # non-trivial running statistics
        model.eval()
        gen = torch.Generator().manual_seed(4)
        coords = torch.rand(queries, 3, generator=gen) * 2 - 1
        patches = torch.randn(queries, 1, 7, 7, 7, generator=gen) if model.config.uses_patches else None
        with torch.no_grad():
            latent = model.encode(volume[:1]).latent
            together = model.decode(coords, patches, latent)
            for i in (0, queries // 2, queries - 1):
                alone = model.decode(coords[i : i + 1], None if patches is None else patches[i : i + 1], latent)
                assert abs(alone.item() - together[i].item()) <= 1e-6


# ---- the lean training path -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1 << 20, 64])
def test_lean_training_equals_naive_autograd(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(pau_module, "_MIN_CHUNK_ELEMENTS", chunk)
    lean_model = tiny_demo("d").double().train()
    naive_model = copy.deepcopy(lean_model)
    volume, coords, patches = (t.double() for t in inputs(lean_model, batch=2, queries=9))
    results = []
    for model, lean in ((lean_model, True), (naive_model, False)):
        with lean_backward(lean):
            out = model(volume, coords, patches)
            (out.logits.square().mean() + out.coarse_logits.mean()).backward()
        results.append(out.logits.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)
    naive_params = dict(naive_model.named_parameters())
    for name, p in lean_model.named_parameters():
        scale = max(1.0, naive_params[name].grad.abs().max().item())
        torch.testing.assert_close(p.grad, naive_params[name].grad, rtol=0, atol=1e-10 * scale, msg=name)
    naive_buffers = dict(naive_model.named_buffers())
    for name, b in lean_model.named_buffers():
        torch.testing.assert_close(b, naive_buffers[name], rtol=1e-10, atol=1e-12, msg=name)


def test_fused_cbn_activation_keeps_only_its_inputs() -> None:
    model = tiny_demo("c").train()
    volume, coords, patches = inputs(model, batch=1, queries=12)
    block = model.decoder.blocks[1]
    captured = []
    handle = block.register_forward_hook(lambda _m, _i, out: captured.append(out))
    model(volume, coords, patches)
    handle.remove()
    fn = captured[0].grad_fn
    assert fn.name() == f"{CBNActivationFunction.__name__}Backward"
    full_size = [t for t in fn.saved_tensors if t.numel() == captured[0].numel()]
    assert len(full_size) == 2  # the CBN input and the residual; nothing recomputable is kept


def test_decoder_exports_with_a_dynamic_number_of_queries() -> None:
    model = tiny_demo("b").eval()

    class Decode(torch.nn.Module):
        def __init__(self, net: OSSNet) -> None:
            super().__init__()
            self.net = net

        def forward(self, coords: torch.Tensor, patches: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
            return self.net.decode(coords, patches, latent)

    n = torch.export.Dim("num_queries", min=1)
    volume, _, _ = inputs(model, batch=1, queries=1)
    latent = model.encode(volume).latent.detach()
    gen = torch.Generator().manual_seed(5)
    example = (torch.rand(6, 3, generator=gen), torch.randn(6, 2, 7, 7, 7, generator=gen), latent)
    exported = torch.export.export(Decode(model).eval(), example, dynamic_shapes=({0: n}, {0: n}, None))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("autograd" in t or "Function" in t for t in targets)
    for queries in (1, 11):
        coords, patches = torch.rand(queries, 3, generator=gen), torch.randn(queries, 2, 7, 7, 7, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(coords, patches, latent), model.decode(coords, patches, latent))


@pytest.mark.parametrize("patch_channels", [1, 4, 8])
def test_patch_encoder_matrix_form_equals_conv3d(patch_channels: int) -> None:
    """The GEMM form of the two 7^3 convolutions is the same linear map as Conv3d."""
    from ossnet_train.encoder import PatchEncoder

    torch.manual_seed(patch_channels)
    encoder = PatchEncoder(patch_channels)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0.0, 0.1)
    patches = torch.randn(300, patch_channels, 7, 7, 7)
    matrix_form = encoder(patches)
    conv_form = encoder.forward_conv(patches)
    scale = conv_form.abs().max().item()
    assert scale > 0.1  # the map is not trivially zero
    torch.testing.assert_close(matrix_form, conv_form, rtol=1e-5, atol=1e-5 * scale)
    # Gradients reach the convolution weights through the matrix construction.
    matrix_form.square().sum().backward()
    assert encoder.conv1.weight.grad is not None and encoder.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8])
def test_stem_slabs_equal_the_whole_stem_in_eval(rows: int) -> None:
    # Depth 14 (7 pooled rows): slabs of 1..7 rows, a ragged last slab (2, 3) and one slab (7, 8).
    from ossnet_train.encoder import ResidualBlock3d

    torch.manual_seed(0)
    block = ResidualBlock3d(2, 5)
    with torch.no_grad():
        block.bn1.running_mean.normal_(0, 0.5)
        block.bn1.running_var.uniform_(0.5, 2.0)
    block.eval()
    x = torch.randn(2, 2, 14, 6, 10) + 1.0  # non-zero mean: wrong border padding would show
    with torch.no_grad():
        whole = block._stem(x)
        slabs = block._stem_slabs(x, rows)
    assert slabs.shape == whole.shape == (2, 5, 7, 3, 5)
    torch.testing.assert_close(slabs, whole, rtol=1e-5, atol=1e-6)


def test_large_eval_blocks_run_in_slabs_and_training_never(monkeypatch: pytest.MonkeyPatch) -> None:
    import ossnet_train.encoder as encoder

    calls: list[int] = []
    real = encoder.ResidualBlock3d._stem_slabs

    def spy(self: encoder.ResidualBlock3d, x: torch.Tensor, rows: int) -> torch.Tensor:
        calls.append(rows)
        return real(self, x, rows)

    monkeypatch.setattr(encoder.ResidualBlock3d, "_stem_slabs", spy)
    monkeypatch.setattr(encoder, "_SLAB_ELEMENTS", 2 * (2 * 4 * 16 * 16))  # 2 pooled rows: 2 x (2 rows x 4 x 16 x 16)
    torch.manual_seed(0)
    block = encoder.ResidualBlock3d(1, 4)
    x = torch.randn(1, 1, 16, 16, 16)
    block.train()
    trained = block(x)
    assert calls == [] and trained.shape == (1, 4, 8, 8, 8)
    block.eval()
    with torch.no_grad():
        sliced = block(x)
        monkeypatch.setattr(encoder, "_SLAB_ELEMENTS", 1 << 40)
        whole = block(x)
    assert calls == [2, 8]
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
