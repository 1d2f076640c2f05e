"""``ossnet-train``: train OSS-Net / U-Net baselines, write the demo cohort, evaluate checkpoints.

Subcommands (``ossnet-train COMMAND --help`` documents every option):

* ``fit``: train a model into a run folder (docs/training.md);
* ``make-demo-data``: write the synthetic MNI white-matter cohort;
* ``evaluate``: whole-volume Dice / IoU of a checkpoint on a dataset.

Errors the user can cause are printed as one line (``-v`` adds the traceback). Exit codes
(docs/design.md#errors-and-exit-codes): 0 done; 1 some subjects failed (evaluate: the rest were scored);
2 usage error (bad option, data or existing output); 3 missing dependency or hardware.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ossnet_deploy.errors import (
    EXIT_DEPENDENCY,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    DependencyError,
    InputError,
    OssnetError,
    describe,
)

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _exit_code(exc: OssnetError) -> int:
    return EXIT_DEPENDENCY if isinstance(exc, DependencyError) else EXIT_USAGE


def _handle_errors(func: F) -> F:
    """Turn ossnet's typed errors into one line on stderr and the contract's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        try:
            return func(*args, **kwargs)
        except OssnetError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(_exit_code(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool, quiet_level: int = logging.INFO) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else quiet_level, format="%(message)s", stream=sys.stderr,
                        force=True)


def _overrides(option: str, items: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """``KEY=VALUE`` pairs, VALUE parsed as JSON when it is JSON (``[16,16,16]``, ``8``), else a string."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(describe(None, f"invalid {option}", expected="KEY=VALUE", found=repr(item),
                                      fix=f"e.g. {option} global_shape=[16,16,16]"))
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.append((key.strip(), tuple(value) if isinstance(value, list) else value))
    return tuple(out)


def _triple(option: str, text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise InputError(describe(None, f"invalid {option}", expected="one size or three (e.g. 128 or 128,128,96)",
                                  found=repr(text)))
    return (values[0], values[1], values[2])


def _fractions(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = (-1.0,)
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise InputError(describe(None, f"invalid {option}", expected="comma-separated fractions in [0, 1]",
                                  found=repr(text), fix=f"e.g. {option} 0.4,0.6"))
    return values


verbose_option = click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks with errors.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """Train OSS-Net (and the U-Net baselines), make the demo cohort, evaluate checkpoints.

    Exit codes: 0 done; 1 some subjects failed; 2 usage error (options, data, existing output);
    3 missing dependency or hardware.
    """


@main.command("fit")
@click.option("--data-kind", type=click.Choice(["brats", "lits", "generic", "demo"]), required=True,
              help="Layout of --data: BraTS 2020 folders, LiTS volume-N/segmentation-N, nnU-Net imagesTr/labelsTr, "
                   "or the demo cohort.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Training dataset folder.")
@click.option("--val-data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Separate validation dataset folder (same layout).")
@click.option("--val-split", default="0", show_default=True,
              help="Validation cases taken from --data: N = its last N cases; 'reference' = BraTS's 324/45 split.")
@click.option("--target", default="", help="BraTS/LiTS target (e.g. whole_tumour, tumour_core; liver_and_tumour, "
                                           "tumour). Default: the dataset's.")
@click.option("--arch", type=click.Choice(["ossnet", "unet3d", "unet2d"]), default="ossnet", show_default=True,
              help="OSS-Net, or a residual U-Net baseline (3D on crops, 2D on slices).")
@click.option("--variant", default="c", show_default=True, help="OSS-Net variant: onet, a, b, c or d.")
@click.option("--preset", type=click.Choice(["brats", "lits", "demo"]), default="demo", show_default=True,
              help="Size and preprocessing preset.")
@click.option("--model-override", "model_overrides", multiple=True, metavar="KEY=VALUE",
              help="Replace a model size (e.g. decoder_width=64, global_shape=[16,16,16]; U-Net: channels=[8,16,32]). "
                   "Repeatable.")
@click.option("--preprocess-override", "preprocess_overrides", multiple=True, metavar="KEY=VALUE",
              help="Replace a preprocessing setting (e.g. shape=[32,32,32], max_shift=0). Repeatable.")
@click.option("--augment-override", "augment_overrides", multiple=True, metavar="KEY=VALUE",
              help="Replace an augmentation setting: flip_axes=[0], flip_p, brightness (fraction of the channel "
                   "maximum), brightness_p, noise_sigma (normalised units), noise_p; e.g. brightness=0. Repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: config.json, metrics.jsonl, last.pt, best.pt.")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Optimiser steps; the LR schedule ends at the last of them.")
@click.option("--points", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Query points per volume per step (OSS-Net).")
@click.option("--batch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Volumes per step; 0 = the most that fit --memory-budget-gb (at most --max-batch).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Upper bound of the automatic batch (the paper's 8).")
@click.option("--memory-budget-gb", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Memory the step may use (GiB): process RSS on CPU, CUDA allocations on GPU. "
                   "0 = 8 on CPU, 90 % of the GPU.")
@click.option("--lr", type=float, default=None, show_default="3e-4", help="Learning rate of the weights.")
@click.option("--pau-lr", type=float, default=None, show_default="the weights' --lr",
              help="Learning rate of the PAU coefficients.")
@click.option("--lr-schedule", type=click.Choice(["cosine", "step"]), default=None, show_default="cosine",
              help="cosine: annealed from --lr to 1 % of it at the last step; step: x0.1 at each --lr-milestones "
                   "fraction (the paper's).")
@click.option("--lr-milestones", default="0.4,0.6", show_default=True,
              help="--lr-schedule step: fractions of --steps at which the LR drops x0.1 (the paper's epochs 20 and "
                   "30 of 50).")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=None, show_default="3",
              help="Clip the gradient's global L2 norm to this many times the running mean of the earlier steps' "
                   "norms; 0 = no clipping. metrics.jsonl logs the norm before clipping (grad_norm) and the limit "
                   "(grad_limit).")
@click.option("--freeze-bn-after", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Fraction of --steps after which BatchNorm uses (and keeps) its running statistics, as "
                   "the exported graphs do; 1 = never, 0 = the whole run; otherwise at or after the schedule's first "
                   "LR drop (cosine: half way), and the optimiser's moments restart there.")
@click.option("--init-from", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start from this checkpoint's weights (same model config) instead of a random "
                   "initialisation; the optimiser starts fresh.")
@click.option("--sampling", type=click.Choice(["uniform", "border"]), default="uniform", show_default=True,
              help="Query points: uniform over the grid, or half from a +-2 voxel band around the label surface and "
                   "the rest mostly from the input's foreground (never the padding).")
@click.option("--border-balance", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Fraction of border-band points with --sampling border.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Flips, brightness and noise (p=0.5 each); placement shifts follow the preset's max_shift.")
@click.option("--crop", default="128", show_default=True, help="U-Net 3D training crop (one side or D,H,W).")
@click.option("--slices", type=click.IntRange(min=1), default=8, show_default=True,
              help="U-Net 2D: slices per volume per step.")
@click.option("--slice-axis", type=click.IntRange(0, 2), default=2, show_default=True,
              help="U-Net 2D: grid axis the slices are taken along.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, sampling and augmentation.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA (bf16, else fp16).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch CPU threads (0 = torch's default). On a shared machine 1 can be much faster than 2.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (each caches its own volumes); 0 = in the training process.")
@click.option("--val-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Validate every N steps (0: only at the end); best.pt keeps the best mean Dice.")
@click.option("--val-mode", type=click.Choice(["reference", "dense", "adaptive"]), default="reference",
              show_default=True, help="Scheduler mode of OSS-Net validation.")
@click.option("--val-max-queries", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Decoder queries per call during validation.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Write last.pt every N steps (and at the end).")
@click.option("--stop-after", type=click.IntRange(min=0), default=0, show_default=True,
              help="End this session after N steps (with last.pt) and continue later with --resume; 0 = run to --steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (same settings).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bar.")
@verbose_option
@_handle_errors
def fit_command(**options: Any) -> None:
    """Train a model into a run folder (recipe and memory rule: docs/training.md)."""
    from ossnet_train.train import TrainConfig, fit

    _setup_logging(options.pop("verbose"))
    options["model_overrides"] = _overrides("--model-override", options["model_overrides"])
    options["preprocess_overrides"] = _overrides("--preprocess-override", options["preprocess_overrides"])
    options["augment_overrides"] = _overrides("--augment-override", options["augment_overrides"])
    options["crop"] = _triple("--crop", options["crop"])
    options["lr_milestones"] = _fractions("--lr-milestones", options["lr_milestones"])
    for key in ("data", "out"):
        options[key] = str(options[key])
    options["val_data"] = str(options["val_data"]) if options["val_data"] else ""
    options["init_from"] = str(options["init_from"]) if options["init_from"] else ""
    # Options left unset take TrainConfig's defaults (one place defines them).
    result = fit(TrainConfig(**{k: v for k, v in options.items() if v is not None}))
    best = f"{result.best_dice:.4f} at step {result.best_step}" if result.best_dice is not None else "n/a"
    peak = f"{result.peak_memory_bytes / 2**30:.2f} GiB" if result.peak_memory_bytes else "unknown"
    click.echo(f"done: {result.steps} steps in {result.run_dir}; {result.steps_per_second:.3f} steps/s, "
               f"{result.points_per_second:.0f} points/s, peak memory {peak}; best Dice {best}")


@main.command("make-demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--subjects", type=click.IntRange(min=1), default=20, show_default=True, help="Number of subjects.")
@click.option("--seed-start", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Seed of the first subject (subjects use consecutive seeds).")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Subjects generated in parallel processes (the output does not depend on it).")
@click.option("--variety", type=click.Choice(["none", "acquisition"]), default="none", show_default=True,
              help="none: every subject on the template's grid, Rician background, int16 (the version-1 cohort, "
                   "e.g. the held-out test seeds); acquisition: each subject its own background (zero or noise), "
                   "field of view, voxel spacing, storage, gain, contrast, bias field and noise (for training; "
                   "docs/data.md).")
@verbose_option
@_handle_errors
def make_demo_data_command(out: Path, subjects: int, seed_start: int, overwrite: bool, jobs: int, variety: str,
                           verbose: bool) -> None:
    """Write the demo cohort (random warps of the MNI template, white-matter labels) to OUT."""
    from tqdm import tqdm

    from ossnet_train.demo_cohort import make_demo_cohort

    _setup_logging(verbose, logging.WARNING)  # the progress bar reports each subject
    with tqdm(total=subjects, desc="subjects", unit="subject") as bar:
        written = make_demo_cohort(out, subjects, seed_start, overwrite=overwrite, jobs=jobs, variety=variety,
                                   progress=lambda done, total: bar.update(done - bar.n))
    click.echo(f"wrote {len(written)} subjects to {out}")


@main.command("evaluate")
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset folder.")
@click.option("--data-kind", type=click.Choice(["brats", "lits", "generic", "demo"]), default="demo",
              show_default=True, help="Layout of --data.")
@click.option("--target", default="", help="BraTS/LiTS target (default: the dataset's).")
@click.option("--mode", type=click.Choice(["reference", "dense", "adaptive"]), default="reference",
              show_default=True, help="Scheduler mode (OSS-Net checkpoints).")
@click.option("--max-queries", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Decoder queries per call.")
@click.option("--fit", "fit_mode", type=click.Choice(["error", "downsample"]), default="error", show_default=True,
              help="A foreground larger than the grid: refuse the subject, or shrink it to fit.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write per-subject scores and means to this JSON file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
@verbose_option
@_handle_errors
def evaluate_command(checkpoint_path: Path, data: Path, data_kind: str, target: str, mode: str, max_queries: int,
                     fit_mode: str, device: str, json_out: Path | None, overwrite: bool, verbose: bool) -> None:
    """Whole-volume Dice and IoU of CHECKPOINT on every subject of --data (scored on each input grid)."""
    from ossnet_train.validate import evaluate_checkpoint

    _setup_logging(verbose)
    report = evaluate_checkpoint(checkpoint_path, data, data_kind=data_kind, target=target, mode=mode,
                                 max_queries=max_queries, fit=fit_mode, device=device, json_out=json_out,
                                 overwrite=overwrite)
    for subject in report["subjects"]:
        click.echo(f"{subject['case_id']}: Dice {subject['dice']:.4f} IoU {subject['iou']:.4f} "
                   f"({subject['queries']} queries, {subject['seconds']:.1f} s)")
    for failure in report["failed"]:
        click.echo(f"failed: {failure['case_id']}: {failure['error']}", err=True)
    if report["subjects"]:
        click.echo(f"mean over {len(report['subjects'])} subject(s): Dice {report['dice']:.4f} IoU {report['iou']:.4f}")
    sys.exit(EXIT_SOME_FAILED if report["failed"] else EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    main()
