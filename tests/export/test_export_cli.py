"""``ossnet-export`` end to end: a freshly trained checkpoint through the command line, a
tampered graph caught by ``verify``, and every bad input as one line, an exit code and no
leftovers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from ossnet_deploy.onnx_metadata import read_graph_metadata
from ossnet_export import export_onnx
from ossnet_export.cli import main
from ossnet_export.trt import TRT_INSTALL_COMMAND, detect_environment
from ossnet_train.checkpoint import save_checkpoint
from ossnet_train.registry import build_model
from ossnet_train.unet import UNetConfig

ModelFactory = Callable[..., Any]
_TAMPERED = "model.decoder.blocks.0.fc1.bias"


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), prog_name="ossnet-export")


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_export: Callable[[str], Any]) -> Path:
    """A tiny C checkpoint after a few Adam steps on random data (conftest.py)."""
    return tiny_export("c").checkpoint


@pytest.fixture(scope="module")
def cli_export(tiny_export: Callable[[str], Any]) -> tuple[Path, Any]:
    """``ossnet-export CKPT -o DIR --trt ...`` run in a subprocess: (folder, completed process)."""
    exported = tiny_export("c")
    return exported.directory, exported.process


def test_export_writes_verified_graphs_then_trt_exits_3_with_one_message(cli_export: tuple[Path, Any]) -> None:
    out, done = cli_export
    has_trt = not detect_environment().missing()
    assert done.returncode == (0 if has_trt else 3), done.stderr
    assert {"encoder.onnx", "decoder.onnx"} <= set(_entries(out))
    meta = read_graph_metadata(out / "decoder.onnx")
    assert meta.parity["fp32"]["passed"] is True and meta.variant == "c"
    assert "parity vs PyTorch (phantom, N=61/389)" in done.stdout and "passed" in done.stdout
    if not has_trt:
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].count(TRT_INSTALL_COMMAND) == 1
        assert "Traceback" not in done.stderr
        assert _entries(out) == ["decoder.onnx", "encoder.onnx"]


def test_verify_passes_then_catches_one_altered_weight(
    cli_export: tuple[Path, Any], trained_checkpoint: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    out, _ = cli_export
    ok = _invoke("verify", str(out), "--checkpoint", str(trained_checkpoint))
    assert ok.exit_code == 0, ok.output
    assert "fp32 max |diff|" in ok.output and "passed" in ok.output
    assert "(rtol 0.0001, atol 1e-05)" in ok.output
    loose = _invoke("verify", str(out), "--checkpoint", str(trained_checkpoint), "--atol", "3e-05", "--rtol", "0.001")
    assert loose.exit_code == 0 and "(rtol 0.001, atol 3e-05)" in loose.output, loose.output
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    decoder = onnx.load(tampered / "decoder.onnx")
    (init,) = [i for i in decoder.graph.initializer if i.name == _TAMPERED]
    values = onnx.numpy_helper.to_array(init).copy()
    values[0] += np.float32(0.25)
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(decoder, tampered / "decoder.onnx")
    done = cli("verify", str(tampered), "--checkpoint", str(trained_checkpoint))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert f"{tampered}: verification failed" in line
    assert "decoder logits (N=" in line and "largest deviation at index (" in line and "vs reference" in line


def test_tolerance_defaults_in_help_are_the_verifiers() -> None:
    from ossnet_export.verify import FP32_ATOL, FP32_RTOL

    for command in ("export", "verify"):
        text = " ".join(_invoke(command, "--help").output.split())
        assert f"[default: {FP32_ATOL!r}]" in text and f"[default: {FP32_RTOL!r}]" in text


def test_default_output_folder_is_beside_the_checkpoint(
    cli_export: tuple[Path, Any], trained_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = cli_export
    copy = tmp_path / "run7.pt"
    shutil.copyfile(trained_checkpoint, copy)
    # Replay the subprocess's graphs instead of running the dynamo exporter again.
    monkeypatch.setattr(export_onnx, "_export_graph", lambda spec, opset, n: onnx.load(out / f"{spec.role}.onnx"))
    result = _invoke(str(copy), "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert _entries(tmp_path) == ["run7", "run7.pt"]
    assert _entries(tmp_path / "run7") == ["decoder.onnx", "encoder.onnx"]


# ----------------------------------------------------------------------------------------- bad inputs


def _refused(args: list[str], folder: Path, code: int, message: str) -> Any:
    before = _entries(folder)
    result = _invoke(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ossnet-export: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert _entries(folder) == before  # no output folder, no hidden temporary
    return result


def test_missing_checkpoint(tmp_path: Path) -> None:
    _refused([str(tmp_path / "nope.pt")], tmp_path, 1, "checkpoint not found")
    verbose = _invoke(str(tmp_path / "nope.pt"), "-v")
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def test_truncated_checkpoint(trained_checkpoint: Path, tmp_path: Path) -> None:
    data = trained_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _refused([str(tmp_path / "cut.pt")], tmp_path, 1, "cannot read checkpoint")


def test_foreign_checkpoint(trained_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(trained_checkpoint, weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "bare.pt")
    _refused([str(tmp_path / "bare.pt")], tmp_path, 1, "not an ossnet checkpoint")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    _refused([str(tmp_path / "noise.pt")], tmp_path, 1, "cannot read checkpoint")


def test_checkpoint_from_a_newer_ossnet(trained_checkpoint: Path, tmp_path: Path) -> None:
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["checkpoint_format"] = 99
    torch.save(payload, tmp_path / "future.pt")
    _refused([str(tmp_path / "future.pt")], tmp_path, 1, "checkpoint written by a newer ossnet")


def test_unet_checkpoint_cannot_export(tiny_model: ModelFactory, tmp_path: Path) -> None:
    _, preprocess = tiny_model("a")
    unet = build_model(UNetConfig(channels=(4, 8), strides=(2,), num_res_units=1))
    save_checkpoint(tmp_path / "unet.pt", unet, preprocess)
    _refused([str(tmp_path / "unet.pt")], tmp_path, 1,
             "cannot be exported as an encoder/decoder pair (expected an OSS-Net checkpoint")


def test_existing_output_without_overwrite(trained_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep")
    _refused([str(trained_checkpoint), "-o", str(tmp_path / "out")], tmp_path, 2, "output already exists")
    assert _entries(tmp_path / "out") == ["old.txt"]


def test_bad_trt_profile_is_a_usage_error(trained_checkpoint: Path, tmp_path: Path) -> None:
    result = _invoke(str(trained_checkpoint), "-o", str(tmp_path / "out"), "--trt", "--min-queries", "10",
                     "--opt-queries", "5")
    assert result.exit_code == 2 and "min_queries <= opt_queries <= max_queries" in result.stderr
    assert _entries(tmp_path) == []


def test_verify_refuses_a_folder_without_graphs_and_another_checkpoint(
    cli_export: tuple[Path, Any], tiny_model: ModelFactory, tmp_path: Path
) -> None:
    out, _ = cli_export
    model, preprocess = tiny_model("c", seed=11)
    other = save_checkpoint(tmp_path / "other.pt", model, preprocess)
    _refused(["verify", str(tmp_path), "--checkpoint", str(other)], tmp_path, 1, "model file not found")
    _refused(["verify", str(out), "--checkpoint", str(other)], tmp_path, 1,
             "the graphs were not exported from this checkpoint")
