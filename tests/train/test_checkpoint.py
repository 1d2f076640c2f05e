"""Checkpoints (ossnet_train.checkpoint): bit-exact round trip, atomic writes, refusal of bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ossnet_deploy.errors import ModelFormatError, OutputExistsError
from ossnet_train.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model,
    save_checkpoint,
    weights_sha256,
)
from ossnet_train.model import OSSNet
from ossnet_train.registry import create_model

PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [16, 16, 16], "channels": ["t1"]}


class FakePreprocessConfig:
    """Stands in for ossnet_deploy's PreprocessConfig: anything with to_dict()."""

    def to_dict(self) -> dict:
        return dict(PREPROCESS)


class Foreign:
    """A class torch's weights_only loader must refuse to instantiate."""

    def __init__(self) -> None:
        self.value = 1


def trained_tiny(variant: str = "c") -> OSSNet:
    torch.manual_seed(0)
    model = create_model(variant, "demo", global_shape=(8, 8, 8), encoder_channels=(1, 4, 8), decoder_width=16)
    cfg = model.config
    with torch.no_grad():  # moves running statistics and num_batches_tracked off their defaults
        patches = torch.randn(2, 5, cfg.patch_channels, 7, 7, 7) if cfg.uses_patches else None
        model.train()(torch.randn(2, 1, 8, 8, 8), torch.rand(2, 5, 3), patches)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[OSSNet, Path]:
    model = trained_tiny()
    return model, save_checkpoint(tmp_path / "model.pt", model, FakePreprocessConfig(), training={"epochs": 3})


def test_round_trip_is_bit_exact(saved: tuple[OSSNet, Path]) -> None:
    model, path = saved
    loaded, checkpoint = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    original = model.state_dict()
    assert set(checkpoint.state_dict) == set(original)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
        assert tensor.dtype == original[name].dtype
    volume = torch.randn(1, 1, 8, 8, 8)
    coords, patches = torch.rand(9, 3), torch.randn(9, 1, 7, 7, 7)
    with torch.no_grad():
        a, b = model.encode(volume), loaded.encode(volume)
        assert torch.equal(a.latent, b.latent)
        assert torch.equal(a.coarse_logits, b.coarse_logits)
        assert torch.equal(model.decode(coords, patches, a.latent), loaded.decode(coords, patches, b.latent))
    assert checkpoint.weights_sha256() == weights_sha256(original)


def test_contents_are_plain_values(saved: tuple[OSSNet, Path]) -> None:
    model, path = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"checkpoint_format", "model_config", "preprocess", "state_dict", "provenance"}
    assert raw["checkpoint_format"] == CHECKPOINT_FORMAT
    assert raw["model_config"] == model.config.to_dict()
    assert raw["preprocess"] == PREPROCESS
    assert type(raw["state_dict"]) is dict
    provenance = raw["provenance"]
    assert provenance["torch"] == torch.__version__
    assert provenance["training"] == {"epochs": 3}
    assert {"git_commit", "created_utc", "python", "ossnet"} <= set(provenance)


def test_save_refuses_to_overwrite_and_leaves_no_temporary_files(saved: tuple[OSSNet, Path]) -> None:
    model, path = saved
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match=r"model\.pt: output already exists"):
        save_checkpoint(path, model, PREPROCESS)
    assert path.read_bytes() == before
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(path, model, PREPROCESS, overwrite=True)
    assert path.read_bytes() != before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_save_rejects_non_json_values(tmp_path: Path) -> None:
    model = trained_tiny("onet")
    with pytest.raises(ValueError, match="JSON values only"):
        save_checkpoint(tmp_path / "m.pt", model, PREPROCESS, training={"optimizer": object()})
    with pytest.raises(ValueError, match="PreprocessConfig or a dict"):
        save_checkpoint(tmp_path / "m.pt", model, ["not", "a", "dict"])
    assert not list(tmp_path.iterdir())


def test_weights_id_follows_the_weights_not_the_file(saved: tuple[OSSNet, Path], tmp_path: Path) -> None:
    model, path = saved
    again = save_checkpoint(tmp_path / "again.pt", model, {"other": "preprocess"})
    assert load_checkpoint(again).weights_sha256() == load_checkpoint(path).weights_sha256()
    with torch.no_grad():
        model.decoder.out.weight[0, 0] += 1e-3
    assert weights_sha256(model.state_dict()) != load_checkpoint(path).weights_sha256()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"nope\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ModelFormatError, match=r"checkpoint not found.*found a folder"):
        load_model(tmp_path)


def test_truncated_file(saved: tuple[OSSNet, Path]) -> None:
    _, path = saved
    broken = path.with_name("truncated.pt")
    data = path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match=r"truncated\.pt: cannot read checkpoint"):
        load_model(broken)


def test_corrupted_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    with pytest.raises(ModelFormatError, match=r"noise\.pt: cannot read checkpoint"):
        load_checkpoint(path)


def test_bare_state_dict_is_foreign(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(trained_tiny("a").state_dict(), path)
    with pytest.raises(ModelFormatError, match=r"bare\.pt: not an ossnet checkpoint.*bare state dict"):
        load_model(path)


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    torch_pickle = tmp_path / "object.pt"
    torch.save({"checkpoint_format": 1, "model": Foreign()}, torch_pickle)
    with pytest.raises(ModelFormatError, match=r"object\.pt: cannot read checkpoint"):
        load_checkpoint(torch_pickle)
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps({"checkpoint_format": 1}, protocol=2))
    with pytest.raises(ModelFormatError, match=r"plain\.pt: cannot read checkpoint"):
        load_checkpoint(plain_pickle)
    torch_list = tmp_path / "list.pt"
    torch.save([1, 2, 3], torch_list)
    with pytest.raises(ModelFormatError, match=r"list\.pt: not an ossnet checkpoint.*found a list"):
        load_checkpoint(torch_list)


def _rewrite(source: Path, target: Path, **changes: object) -> Path:
    payload = torch.load(source, map_location="cpu", weights_only=True)
    payload.update(changes)
    torch.save(payload, target)
    return target


def test_newer_or_invalid_format_is_refused(saved: tuple[OSSNet, Path]) -> None:
    _, path = saved
    newer = _rewrite(path, path.with_name("newer.pt"), checkpoint_format=CHECKPOINT_FORMAT + 1)
    with pytest.raises(ModelFormatError, match=r"newer\.pt: checkpoint written by a newer ossnet.*pip install -U ossnet"):
        load_checkpoint(newer)
    for bad in ("1", True, 0):
        odd = _rewrite(path, path.with_name("odd.pt"), checkpoint_format=bad)
        with pytest.raises(ModelFormatError, match=r"odd\.pt: invalid checkpoint_format"):
            load_checkpoint(odd)


def test_missing_entries_and_mismatched_weights_are_refused(saved: tuple[OSSNet, Path]) -> None:
    _, path = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["preprocess"]
    torch.save(payload, path.with_name("partial.pt"))
    with pytest.raises(ModelFormatError, match=r"partial\.pt: checkpoint lacks entries.*preprocess"):
        load_checkpoint(path.with_name("partial.pt"))
    config = load_checkpoint(path).model_config
    wider = _rewrite(path, path.with_name("wider.pt"), model_config={**config, "decoder_width": 32})
    with pytest.raises(ModelFormatError, match=r"wider\.pt: weights do not fit the stored model config"):
        load_model(wider)
    invalid = _rewrite(path, path.with_name("invalid.pt"), model_config={**config, "variant": "z"})
    with pytest.raises(ModelFormatError, match=r"invalid\.pt: .*variant='z'"):
        load_model(invalid)
