"""The ``ossnet-train`` command line: help, options, errors and exit codes, a tiny fit + evaluate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train import write_ellipsoids

from ossnet_train import cli
from ossnet_train.train import TrainConfig

TINY_FIT = [
    "fit", "--data-kind", "generic", "--variant", "c", "--preset", "demo",
    "--model-override", "global_shape=[16,16,16]", "--model-override", "encoder_channels=[1,8,16]",
    "--model-override", "decoder_width=32",
    "--preprocess-override", "shape=[32,32,32]", "--preprocess-override", "max_shift=0",
    "--preprocess-override", "intensity=zscore_volume", "--preprocess-override", "foreground_threshold=-1000",
    "--preprocess-override", 'foreground="threshold"',
    "--points", "128", "--batch", "1", "--device", "cpu", "--threads", "1", "--no-progress",
]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _option_names(command: str) -> set[str]:
    params = cli.main.commands[command].params  # type: ignore[attr-defined]
    return {opt for p in params if isinstance(p, click.Option) for opt in p.opts}


def test_help_lists_every_subcommand_and_fit_option() -> None:
    runner = CliRunner()
    top = runner.invoke(cli.main, ["--help"])
    assert top.exit_code == 0
    for command in ("fit", "make-demo-data", "evaluate"):
        assert command in top.output
    fit_help = runner.invoke(cli.main, ["fit", "--help"], terminal_width=200)
    assert fit_help.exit_code == 0
    fit_options = _option_names("fit")
    # Every training setting is reachable from the command line ...
    renamed = {"model_overrides": "--model-override", "preprocess_overrides": "--preprocess-override",
               "augment_overrides": "--augment-override",
               "unet_channels": "--model-override", "augment": "--augment"}
    for f in dataclasses.fields(TrainConfig):
        option = renamed.get(f.name, "--" + f.name.replace("_", "-"))
        assert option in fit_options, f"TrainConfig.{f.name} has no option {option}"
    # ... and every option is documented in the help text.
    for option in fit_options:
        assert option in fit_help.output, option
    for params, command in ((["make-demo-data", "--help"], "make-demo-data"), (["evaluate", "--help"], "evaluate")):
        result = runner.invoke(cli.main, params, terminal_width=200)
        assert result.exit_code == 0
        for option in _option_names(command):
            assert option in result.output, option


def test_recipe_options_left_unset_take_train_configs_defaults() -> None:
    """The recipe's defaults live in TrainConfig / ossnet_train.optim only; the help merely shows them."""
    params = {p.name: p for p in cli.main.commands["fit"].params}  # type: ignore[attr-defined]
    for name in ("lr", "pau_lr", "lr_schedule", "grad_clip"):
        assert params[name].default is None, name
    assert float(params["lr"].show_default) == TrainConfig.lr
    assert float(params["grad_clip"].show_default) == TrainConfig.grad_clip
    assert params["lr_schedule"].show_default == TrainConfig.lr_schedule
    assert TrainConfig.pau_lr == 0.0  # = the rate OptimConfig derives from --lr


def test_user_errors_are_one_line_with_usage_exit_code(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli.main, [*TINY_FIT, "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    verbose = runner.invoke(cli.main, [*TINY_FIT, "-v", "--data", str(tmp_path / "none"),
                                       "--out", str(tmp_path / "run")])
    assert verbose.exit_code == 2
    assert "Traceback" in verbose.stderr
    bad = runner.invoke(cli.main, [*TINY_FIT, "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                   "--model-override", "novalue"])
    assert bad.exit_code == 2
    assert "KEY=VALUE" in bad.stderr


def test_make_demo_data_passes_its_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ossnet_train.demo_cohort as demo

    calls = []

    def fake(out_dir: object, n: int, seed_start: int, *, overwrite: bool, progress: object, jobs: int,
             variety: str) -> list[str]:
        calls.append((Path(str(out_dir)), n, seed_start, overwrite, jobs, variety))
        return [f"demo_{seed_start + i:04d}" for i in range(n)]

    monkeypatch.setattr(demo, "make_demo_cohort", fake)
    result = CliRunner().invoke(cli.main, ["make-demo-data", str(tmp_path / "d"), "--subjects", "3",
                                           "--seed-start", "1000", "--overwrite", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 subjects" in result.output
    result = CliRunner().invoke(cli.main, ["make-demo-data", str(tmp_path / "e"), "--subjects", "1",
                                           "--variety", "acquisition"])
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path / "d", 3, 1000, True, 2, "none"), (tmp_path / "e", 1, 1000, False, 1, "acquisition")]


def test_fit_then_evaluate(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(3))
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(cli.main, [*TINY_FIT, "--data", str(tmp_path / "data"), "--out", str(run),
                                      "--steps", "2", "--val-split", "1"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "done: 2 steps" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["plan"]["batch"] == 1 and config["val_cases"] == ["ell_002"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["points_per_s"] > 0 and r["peak_memory_bytes"] > 0 for r in train)
    assert [r["kind"] for r in records].count("val") == 1
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert len(list(run.glob("state-*.pt"))) == 1

    # A subject that cannot be read is reported, the others are scored: exit code 1.
    broken = tmp_path / "eval"
    write_ellipsoids(broken, range(10, 12))
    image = broken / "imagesTr" / "ell_011_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 32, 32), np.nan, np.float32), np.eye(4)), image)
    out = tmp_path / "scores.json"
    result = runner.invoke(cli.main, ["evaluate", str(run / "best.pt"), "--data", str(broken), "--data-kind",
                                      "generic", "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 1, result.output + result.stderr
    report = json.loads(out.read_text())
    assert [s["case_id"] for s in report["subjects"]] == ["ell_010"]
    assert [f["case_id"] for f in report["failed"]] == ["ell_011"]
    assert 0.0 <= report["dice"] <= 1.0
    again = runner.invoke(cli.main, ["evaluate", str(run / "best.pt"), "--data", str(broken), "--data-kind",
                                     "generic", "--device", "cpu", "--json", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr
