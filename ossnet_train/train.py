"""The training loop of OSS-Net and of the U-Net baselines (``ossnet-train fit``).

Recipe (OSS-Net's, docs/training.md#the-recipe): BCE with logits over 2^14 query points
per volume (+ 0.1 x BCE of the coarse logits vs the max-pooled label for C, D); RAdam + Lookahead
(k=5, alpha=0.8), lr 3e-4 for weights and PAU coefficients alike, no weight decay; the LR annealed
by a cosine to 1 % at the last step (or the paper's x0.1 drops); the gradient's global norm
clipped; augmentation (flips, brightness, noise) and random placement shifts; whole-volume
validation through the scheduler. The U-Nets train on random crops (3D) or slices (2D) with the
same loss, optimiser, schedule and checkpoints.

The batch (volumes per step) is chosen to fit ``memory_budget_gb`` by
:func:`ossnet_train.batch_plan.plan_batch` (a memory probe on a copy of the model); the device
and autocast helpers live in :mod:`ossnet_train.devices`.

A run folder holds ``config.json`` (the run's settings and the resolved plan), ``metrics.jsonl``
(one JSON record per step and per validation), ``last.pt`` (every ``checkpoint_every`` steps and
at the end) and ``best.pt`` (best mean validation Dice). ``resume=True`` continues from
``last.pt`` and reproduces the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import InputError, ModelFormatError, OutputExistsError, describe
from ossnet_deploy.memory import peak_rss_bytes
from ossnet_deploy.preprocess import PreprocessConfig, preprocess_preset
from ossnet_deploy.scheduler import MODES as SCHEDULER_MODES
from ossnet_train import checkpoint
from ossnet_train.augment import AugmentConfig
from ossnet_train.batch_plan import BatchPlan, plan_batch
from ossnet_train.batches import (
    ARCHITECTURES,
    CaseCache,
    SampleConfig,
    TrainingSamples,
    ValidationCase,
)
from ossnet_train.config import VARIANT_SPECS, model_config
from ossnet_train.datasets import NiftiDataset, make_dataset
from ossnet_train.decoder import ConditionalBatchNorm
from ossnet_train.devices import autocast_dtype, resolve_device
from ossnet_train.losses import step_loss
from ossnet_train.optim import (
    LR,
    LR_SCHEDULES,
    GradientClipper,
    Lookahead,
    LRSchedule,
    OptimConfig,
    apply_learning_rate,
    build_optimizer,
)
from ossnet_train.registry import build_model
from ossnet_train.training_domain import measure_domain
from ossnet_train.unet import UNetConfig
from ossnet_train.validate import ValidationResult, validate

__all__ = [
    "ARCHITECTURES",
    "DATA_KINDS",
    "FitResult",
    "TrainConfig",
    "fit",
    "load_datasets",
]

logger = logging.getLogger("ossnet_train")

DATA_KINDS = ("brats", "lits", "generic", "demo")
SAMPLINGS = ("uniform", "border")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
#: the batch the paper trains with; the memory plan never goes above ``max_batch`` (default this).
PAPER_BATCH = 8
# Fields of TrainConfig that may differ between a run and its resumption (they change how the
# run is watched, not what it computes).
_RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "val_every", "checkpoint_every", "workers", "device", "threads",
                                "progress", "val_data", "val_mode", "val_max_queries", "memory_budget_gb",
                                "stop_after"})
# Options added after runs were already being made, with the value such a run used when its saved
# config predates them (where that differs from today's default).
_LEGACY_VALUES = {"lr_schedule": "step", "grad_clip": 0.0}
#: default ``--grad-clip``: the global gradient norm is clipped to this many times its running mean
#: (:class:`~ossnet_train.optim.GradientClipper`; docs/training.md#the-recipe).
GRAD_CLIP = 3.0


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (the CLI's ``fit`` options; plain values only).

    Data: ``data_kind`` (``brats``, ``lits``, ``generic``, ``demo``), ``data`` (root folder),
    ``val_data`` (a separate validation root) or ``val_split`` (``"N"``: the last N cases of
    ``data`` validate; ``"reference"``: BraTS's packaged 324/45 split; ``"0"``: no validation),
    ``target`` (BraTS/LiTS target name, dataset default when empty).
    Model: ``arch`` (``ossnet``, ``unet3d``, ``unet2d``), ``variant`` (onet, a-d), ``preset``
    (brats, lits, demo), ``model_overrides`` / ``preprocess_overrides``: ``(name, value)`` pairs
    replacing preset sizes (tests use tiny ones), ``unet_channels``, ``slice_axis`` (2D U-Net).
    Steps: ``steps`` optimiser steps, ``points`` per volume, ``batch`` volumes per step (0: from
    the memory plan), ``memory_budget_gb`` (0: 8 GiB on CPU, 90 % of the GPU), ``max_batch``.
    Recipe: ``lr``, ``pau_lr`` (0: the rate :class:`~ossnet_train.optim.OptimConfig` derives from
    ``lr``), ``lr_schedule`` (``cosine``: annealed to 1 % at the last step; ``step``: x0.1 at each
    of ``lr_milestones``, fractions of ``steps``; the paper's epochs 20 and 30 of 50),
    ``grad_clip`` (the global gradient norm is clipped to this many times its running mean, 0 = no
    clipping), ``freeze_bn_after`` (fraction
    of ``steps`` from which BatchNorm uses its running statistics; 1 = never, 0 = the whole run,
    otherwise only at or after the schedule's first LR drop, and the optimiser's moments restart
    there), ``init_from``, ``sampling`` (uniform, border), ``border_balance``, ``augment``,
    ``crop`` (U-Net 3D), ``slices`` (U-Net 2D: slices per volume).
    Run: ``out``, ``seed``, ``device`` (auto, cpu, cuda, cuda:N), ``amp`` (bf16/fp16 autocast on
    CUDA), ``threads`` (torch CPU threads, set process-wide; 0 = torch's default), ``workers``
    (DataLoader processes; 0 = in the training process), ``val_every``
    (steps; 0 = only at the end), ``val_mode`` (scheduler mode), ``val_max_queries`` (decoder
    chunk), ``checkpoint_every``, ``stop_after`` (end this session after N steps with a
    checkpoint, to continue with ``resume``; 0 = run to ``steps``), ``resume``, ``overwrite``,
    ``progress`` (tqdm bar).
    """

    data_kind: str
    data: str
    out: str
    val_data: str = ""
    val_split: str = "0"
    target: str = ""
    arch: str = "ossnet"
    variant: str = "c"
    preset: str = "demo"
    model_overrides: tuple[tuple[str, Any], ...] = ()
    preprocess_overrides: tuple[tuple[str, Any], ...] = ()
    unet_channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    slice_axis: int = 2
    steps: int = 2000
    points: int = 16384
    batch: int = 0
    memory_budget_gb: float = 0.0
    max_batch: int = PAPER_BATCH
    lr: float = LR
    pau_lr: float = 0.0
    lr_schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = (0.4, 0.6)
    grad_clip: float = GRAD_CLIP
    freeze_bn_after: float = 1.0
    init_from: str = ""
    sampling: str = "uniform"
    border_balance: float = 0.5
    augment: bool = True
    augment_overrides: tuple[tuple[str, Any], ...] = ()
    crop: tuple[int, int, int] = (128, 128, 128)
    slices: int = 8
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: int = 0
    workers: int = 0
    val_every: int = 0
    val_mode: str = "reference"
    val_max_queries: int = 16384
    checkpoint_every: int = 100
    stop_after: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class FitResult:
    """What a finished run reports."""

    run_dir: str
    steps: int
    best_dice: float | None
    best_step: int | None
    last_validation: ValidationResult | None
    plan: BatchPlan
    steps_per_second: float
    points_per_second: float
    peak_memory_bytes: int | None


# --------------------------------------------------------------------------------- setup


def _check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot work, before any data is read (InputError naming the option)."""
    def bad(option: str, expected: str, found: object) -> InputError:
        return InputError(describe(None, f"invalid {option}", expected=expected, found=repr(found)))

    if cfg.data_kind not in DATA_KINDS:
        raise bad("--data-kind", " | ".join(DATA_KINDS), cfg.data_kind)
    if cfg.arch not in ARCHITECTURES:
        raise bad("--arch", " | ".join(ARCHITECTURES), cfg.arch)
    if cfg.sampling not in SAMPLINGS:
        raise bad("--sampling", " | ".join(SAMPLINGS), cfg.sampling)
    if cfg.val_mode not in SCHEDULER_MODES:
        raise bad("--val-mode", " | ".join(SCHEDULER_MODES), cfg.val_mode)
    for option, value, low in (("--steps", cfg.steps, 1), ("--points", cfg.points, 1), ("--batch", cfg.batch, 0),
                               ("--max-batch", cfg.max_batch, 1), ("--workers", cfg.workers, 0),
                               ("--val-every", cfg.val_every, 0), ("--checkpoint-every", cfg.checkpoint_every, 1),
                               ("--stop-after", cfg.stop_after, 0), ("--threads", cfg.threads, 0),
                               ("--slices", cfg.slices, 1), ("--val-max-queries", cfg.val_max_queries, 1)):
        if not isinstance(value, int) or value < low:
            raise bad(option, f"an integer >= {low}", value)
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise bad("--lr", "a positive number", cfg.lr)
    for option, value in (("--pau-lr", cfg.pau_lr), ("--grad-clip", cfg.grad_clip)):
        if not (math.isfinite(value) and value >= 0):
            raise bad(option, "a number >= 0 (0: the default rule)", value)
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise bad("--lr-schedule", " | ".join(LR_SCHEDULES), cfg.lr_schedule)
    if any(not 0.0 <= f <= 1.0 for f in cfg.lr_milestones):
        raise bad("--lr-milestones", "fractions of the run in [0, 1]", cfg.lr_milestones)
    if not 0.0 <= cfg.freeze_bn_after <= 1.0:
        raise bad("--freeze-bn-after", "a fraction of the run in [0, 1]", cfg.freeze_bn_after)
    schedule = _schedule(cfg)
    if 0 < _freeze_step(cfg) < schedule.first_drop_step():
        earliest = schedule.first_drop_step() / cfg.steps
        raise InputError(describe(
            None, "invalid --freeze-bn-after", expected=f"0, 1 or at/after the schedule's first LR drop "
            f"(fraction {earliest:g} of --steps with --lr-schedule {cfg.lr_schedule})", found=repr(cfg.freeze_bn_after),
            fix="leave it at 1 (never: the default), or freeze once the LR has dropped (docs/training.md)"))
    if not 0.0 <= cfg.border_balance <= 1.0:
        raise bad("--border-balance", "a fraction in [0, 1]", cfg.border_balance)
    if cfg.memory_budget_gb < 0:
        raise bad("--memory-budget-gb", "a number >= 0 (0: the default)", cfg.memory_budget_gb)
    split = cfg.val_split
    if not (split == "reference" or (split.isdigit())):
        raise bad("--val-split", "a number of cases (the last N of --data) or 'reference' (BraTS)", split)
    if split == "reference" and cfg.data_kind != "brats":
        raise bad("--val-split", "'reference' only with --data-kind brats", split)
    if cfg.val_data and split not in ("0",):
        raise bad("--val-split", "0 when --val-data is given (one source of validation cases)", split)


def _schedule(cfg: TrainConfig) -> LRSchedule:
    return LRSchedule(total_steps=cfg.steps, milestones=tuple(cfg.lr_milestones), kind=cfg.lr_schedule)


def _freeze_step(cfg: TrainConfig) -> int:
    """The 0-based step from which BatchNorm runs on its running statistics (``steps + 1``: never)."""
    return math.ceil(cfg.freeze_bn_after * cfg.steps) if cfg.freeze_bn_after < 1.0 else cfg.steps + 1


def _dataset_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.target and cfg.data_kind in ("brats", "lits"):
        return {"target": cfg.target}
    if cfg.target:
        raise InputError(describe(None, "invalid --target", expected="only with --data-kind brats or lits",
                                  found=repr(cfg.target), fix="leave --target out for generic/demo data"))
    return {}


def _subset(dataset: NiftiDataset, start: int, stop: int) -> NiftiDataset:
    return NiftiDataset(dataset.cases[start:stop], channel_names=dataset.channel_names, labels=dataset.labels,
                        kind=dataset.kind, root=dataset.root, validate=False)


def load_datasets(cfg: TrainConfig) -> tuple[NiftiDataset, NiftiDataset | None]:
    """The training cases and the validation cases (None when the run has none)."""
    kwargs = _dataset_kwargs(cfg)
    if cfg.val_split == "reference":
        train = make_dataset("brats", cfg.data, split="train", **kwargs)
        val = make_dataset("brats", cfg.data, split="val", **kwargs)
        return train, val
    train = make_dataset(cfg.data_kind, cfg.data, **kwargs)  # type: ignore[arg-type]
    if cfg.val_data:
        return train, make_dataset(cfg.data_kind, cfg.val_data, **kwargs)  # type: ignore[arg-type]
    n_val = int(cfg.val_split)
    if n_val == 0:
        return train, None
    if n_val >= len(train):
        raise InputError(describe(cfg.data, "--val-split leaves no training cases",
                                  expected=f"fewer than the {len(train)} cases of the dataset", found=str(n_val),
                                  fix="lower --val-split or pass --val-data"))
    return _subset(train, 0, len(train) - n_val), _subset(train, len(train) - n_val, len(train))


def _preprocess_config(cfg: TrainConfig) -> PreprocessConfig:
    # An unknown variant is refused by _model_config (InputError naming it), not here.
    spec = VARIANT_SPECS.get(cfg.variant.strip().lower())
    large = cfg.arch == "ossnet" and spec is not None and spec.large_patches
    base = preprocess_preset(cfg.preset, large_patches=large)
    if not cfg.preprocess_overrides:
        return base
    # Every field, not to_dict(): that leaves out settings at their defaults (bias correction,
    # tissue foreground), which must still be overridable.
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    for name, value in cfg.preprocess_overrides:
        if name not in values:
            raise InputError(describe(None, f"unknown preprocessing setting {name!r}",
                                      expected=f"one of {sorted(values)}", fix="check the override's name"))
        values[name] = value
    return PreprocessConfig.from_dict(values)  # an invalid value raises InputError naming the setting


def _model_config(cfg: TrainConfig, preprocess: PreprocessConfig) -> Any:
    """The model config of the run (OSS-Net ModelConfig or UNetConfig), checked against the preprocessing."""
    channels = len(preprocess.channels)
    try:
        if cfg.arch == "ossnet":
            overrides = dict(cfg.model_overrides)
            mc = model_config(cfg.variant, cfg.preset, **overrides)
            if mc.grid_shape != tuple(preprocess.shape) or mc.in_channels != channels:
                raise InputError(describe(
                    None, "the model does not match the preprocessing",
                    expected=f"grid {tuple(preprocess.shape)} = 2 x global_shape and {channels} input channel(s)",
                    found=f"grid {mc.grid_shape}, {mc.in_channels} channel(s)",
                    fix="override global_shape / in_channels together with the preprocessing shape"))
            return mc
        overrides = dict(cfg.model_overrides)
        overrides.setdefault("channels", tuple(cfg.unet_channels))
        overrides.setdefault("strides", (2,) * (len(overrides["channels"]) - 1))
        return UNetConfig(architecture=cfg.arch, in_channels=channels, slice_axis=cfg.slice_axis, **overrides)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(describe(None, "invalid model settings", found=str(exc))) from None


def _augment_config(cfg: TrainConfig, preprocess: PreprocessConfig) -> AugmentConfig:
    """The paper's augmentation with the preset's flip axes, then ``--augment-override`` values.

    Raises:
        InputError: an unknown key or a value of the wrong kind (the message lists the keys).
    """
    values: dict[str, Any] = {"flip_axes": tuple(preprocess.flip_axes)}
    known = [f.name for f in dataclasses.fields(AugmentConfig)]
    for key, value in cfg.augment_overrides:
        if key not in known:
            raise InputError(describe(None, f"unknown --augment-override key {key!r}",
                                      expected=" | ".join(known), found=repr(key)))
        if key == "flip_axes":
            if not (isinstance(value, list) and all(isinstance(a, int) and 0 <= a <= 2 for a in value)):
                raise InputError(describe(None, "invalid --augment-override flip_axes",
                                          expected="a list of axes 0-2, e.g. [0]", found=repr(value)))
            values[key] = tuple(value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise InputError(describe(None, f"invalid --augment-override {key}", expected="a number >= 0",
                                      found=repr(value)))
        if key.endswith("_p") and value > 1:
            raise InputError(describe(None, f"invalid --augment-override {key}", expected="a probability in [0, 1]",
                                      found=repr(value)))
        values[key] = float(value)
    return AugmentConfig(**values)


def _sample_config(cfg: TrainConfig, model_cfg: Any, preprocess: PreprocessConfig, points: int) -> SampleConfig:
    augment = _augment_config(cfg, preprocess) if cfg.augment else None
    if cfg.arch == "ossnet":
        return SampleConfig(
            architecture="ossnet", points=points, sampling=cfg.sampling, border_balance=cfg.border_balance,
            coarse_shape=tuple(model_cfg.latent_shape) if model_cfg.has_coarse else None,
            patches=model_cfg.uses_patches, large_patches=model_cfg.large_patches, augment=augment,
        )
    crop = tuple(min(c, s) for c, s in zip(cfg.crop, preprocess.shape, strict=True))
    divisor = model_cfg.size_divisor
    if cfg.arch == "unet3d" and any(c % divisor for c in crop):
        raise InputError(describe(None, "invalid --crop", expected=f"sides divisible by {divisor} (the U-Net's strides)",
                                  found=str(crop), fix=f"use multiples of {divisor}, e.g. 128"))
    return SampleConfig(architecture=cfg.arch, crop=(crop[0], crop[1], crop[2]), slices=cfg.slices,
                        slice_axis=cfg.slice_axis, sampling=cfg.sampling, augment=augment)


# --------------------------------------------------------------------------------- one step


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def freeze_normalisation(model: nn.Module) -> None:
    """Put every BatchNorm (and OSS-Net's conditional BatchNorm) into eval mode; the rest stays in training.

    Training then normalises with the running statistics, exactly as eval mode and the exported
    graphs do, and stops updating them; the weights keep learning. Why: a step's batch statistics
    come from its few volumes, so a model trained only with them can behave very differently
    with the running statistics (see docs/training.md).
    """
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, ConditionalBatchNorm)):
            module.eval()


def _load_initial_weights(path: Path, model: nn.Module, model_cfg: Any) -> None:
    """Load a checkpoint's weights (and normalisation statistics) into the freshly built ``model``.

    Raises:
        ModelFormatError: ``path`` is not a readable ossnet checkpoint, or its model config is not
            this run's (the message lists the differing keys).
    """
    loaded = checkpoint.load_checkpoint(path)
    theirs, ours = loaded.model_config, model_cfg.to_dict()
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        raise ModelFormatError(describe(
            path, "--init-from checkpoint has another model config",
            expected=f"this run's {', '.join(f'{k}={ours.get(k)!r}' for k in differ[:6])}",
            found=", ".join(f"{k}={theirs.get(k)!r}" for k in differ[:6]),
            fix="give the same --variant, --preset and --model-override options as the checkpoint's run"))
    model.load_state_dict(loaded.state_dict, strict=True)


# --------------------------------------------------------------------------------- run folder


def _peak_memory(device: torch.device) -> int | None:
    """Peak memory so far: the CUDA allocator's peak on GPU, the process's VmHWM on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


class _MetricsLog:
    """Append-only JSON-lines log; on resume, records after the resumed step are dropped first."""

    def __init__(self, path: Path, *, keep_until_step: int | None) -> None:
        self.path = path
        if keep_until_step is None:
            with atomic_write(path, overwrite=True) as tmp:
                tmp.write_text("", encoding="utf-8")
        elif path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
            with atomic_write(path, overwrite=True) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    run = Path(cfg.out)
    if cfg.resume:
        if not (run / LAST).is_file():
            raise InputError(describe(run / LAST, "nothing to resume", expected="a last.pt from an earlier run",
                                      found="no such file", fix="drop --resume to start a new run"))
        return run
    taken = [name for name in (CONFIG_FILE, METRICS_FILE, LAST, BEST) if (run / name).exists()]
    if taken and not cfg.overwrite:
        raise OutputExistsError(describe(run, "the run folder already holds a run", found=", ".join(taken),
                                         fix="pass --resume to continue it, --overwrite to replace it, or another --out"))
    if cfg.overwrite:
        for old in (run / LAST, run / BEST, *run.glob("state-*.pt")):
            old.unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return run


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    # Options added after a run started are absent from its checkpoint: it ran with their defaults.
    defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(TrainConfig)
                                      if f.default is not dataclasses.MISSING}))
    saved = {**defaults, **_LEGACY_VALUES, **saved}
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise InputError(describe(path, "the run's settings differ from the checkpoint's",
                                  expected="the settings the run was started with", found=detail,
                                  fix="resume with the original options (or start a new run with --out)"))


# --------------------------------------------------------------------------------- fit


def fit(cfg: TrainConfig, *, log: Callable[[str], None] | None = None) -> FitResult:
    """Train a model as ``cfg`` says; see the module docstring for what the run folder holds.

    ``log``: receives human-readable lines (plan, validation results); default: the
    ``ossnet_train`` logger at INFO.

    Raises:
        InputError: bad settings or data; OutputExistsError: the run folder is taken;
        DependencyError: CUDA asked for but missing; ModelFormatError: a foreign checkpoint.
    """
    say = log or logger.info
    _check_config(cfg)
    if cfg.augment:
        _augment_config(cfg, _preprocess_config(cfg))  # bad overrides fail before any data is read
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.amp)
    run = _prepare_run_dir(cfg)
    preprocess = _preprocess_config(cfg)
    model_cfg = _model_config(cfg, preprocess)

    train_set, val_set = load_datasets(cfg)
    if len(train_set.channel_names) != len(preprocess.channels):
        raise InputError(describe(train_set.root, "the dataset's channel count does not match the preset",
                                  expected=f"{len(preprocess.channels)} channel(s) {list(preprocess.channels)}",
                                  found=f"{len(train_set.channel_names)} channel(s) {list(train_set.channel_names)}",
                                  fix="choose the preset of this data (or override its channels)"))
    if cfg.arch == "ossnet":
        # What the training inputs look like, for the runtime's input and output warnings
        # (docs/design.md#input-and-output-checks); through the runtime's own preprocessing.
        domain: dict[str, Any] | None = measure_domain(train_set, preprocess, log=say).to_dict()
        say(f"domain: {len(train_set)} training case(s) profiled")
    else:
        domain = None

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    if cfg.init_from and not cfg.resume:
        # Before the optimiser exists: Lookahead's slow weights start as a copy of the parameters.
        _load_initial_weights(Path(cfg.init_from), model, model_cfg)
        say(f"initial weights from {cfg.init_from}")
    optimizer = build_optimizer(model, OptimConfig(lr=cfg.lr, pau_lr=cfg.pau_lr))
    schedule = _schedule(cfg)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    clipper = GradientClipper(cfg.grad_clip)

    start_step, best_dice, best_step = 0, None, None
    plan_dict = None
    if cfg.resume:
        resumed = _load_training_state(run / LAST, cfg, model, optimizer, scaler, device, clipper)
        start_step, best_dice, best_step, plan_dict = resumed
        say(f"resuming {run / LAST} at step {start_step}")

    cache = CaseCache(train_set, preprocess, band=cfg.sampling == "border" and cfg.arch == "ossnet")
    if plan_dict is not None:
        plan = BatchPlan(**plan_dict)
    else:
        probe_sample = _sample_config(cfg, model_cfg, preprocess, cfg.points)
        plan = plan_batch(cfg, model, probe_sample, preprocess, device, amp_dtype, len(train_set),
                          len(val_set) if val_set else 0)
    say(f"memory plan: {plan.describe()}")
    sample_cfg = _sample_config(cfg, model_cfg, preprocess, plan.points or cfg.points)

    val_cases = [ValidationCase.load(val_set, i, preprocess) for i in range(len(val_set))] if val_set else []
    _write_json(run / CONFIG_FILE, {
        "train": cfg.to_dict(), "architecture": cfg.arch, "model_config": model_cfg.to_dict(),
        "preprocess": preprocess.to_dict(), "plan": dataclasses.asdict(plan), "device": str(device),
        "amp_dtype": str(amp_dtype) if amp_dtype else None, "train_cases": list(train_set.case_ids),
        "val_cases": [c.case_id for c in val_cases], "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    })
    metrics = _MetricsLog(run / METRICS_FILE, keep_until_step=start_step if cfg.resume else None)

    samples = TrainingSamples(cache, sample_cfg, seed=cfg.seed, length=cfg.steps * plan.batch)
    end_step = min(cfg.steps, start_step + cfg.stop_after) if cfg.stop_after else cfg.steps
    loader = DataLoader(samples, batch_size=plan.batch, sampler=range(start_step * plan.batch, end_step * plan.batch),
                        num_workers=cfg.workers, persistent_workers=False, pin_memory=device.type == "cuda")

    def save(name: str, step: int) -> None:
        _save_training_state(run / name, cfg, model, preprocess, optimizer, scaler, clipper, step,
                             best_dice, best_step, plan, domain=domain)

    def run_validation(step: int) -> ValidationResult | None:
        nonlocal best_dice, best_step
        if not val_cases:
            return None
        result = validate(model, val_cases, device=device, mode=cfg.val_mode, max_queries=cfg.val_max_queries,
                          amp_dtype=amp_dtype, roi=sample_cfg.crop)
        improved = best_dice is None or result.dice > best_dice
        if improved:
            best_dice, best_step = result.dice, step
        metrics.write({"kind": "val", "step": step, **result.to_dict(), "best_dice": best_dice,
                       "best_step": best_step, "peak_memory_bytes": _peak_memory(device)})
        say(f"step {step}: validation Dice {result.dice:.4f} IoU {result.iou:.4f} over {len(result.subjects)} "
            f"subject(s) in {result.seconds:.1f} s (best {best_dice:.4f} at step {best_step})")
        if improved:
            save(BEST, step)
        return result

    model.train()
    # From this step on the normalisation uses the running statistics, as the exported graphs do.
    freeze_step = _freeze_step(cfg)
    units = plan.batch * plan.units
    last_val: ValidationResult | None = None
    bar = tqdm(total=end_step, initial=start_step, desc="fit", unit="step", disable=not cfg.progress or None,
               dynamic_ncols=True)
    train_seconds = 0.0
    step = start_step
    try:
        fetch_started = time.perf_counter()
        for batch in loader:
            data_seconds = time.perf_counter() - fetch_started
            t0 = time.perf_counter()
            factor = apply_learning_rate(optimizer.param_groups, schedule, step)
            if step >= freeze_step:
                freeze_normalisation(model)
                if step == freeze_step and step > 0:
                    # The gradients' scale jumps at the switch (x5.4 on the demo model): restart
                    # RAdam's moments so they do not turn it into oversized steps.
                    optimizer.reset_moments()
            batch = _to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            parts = step_loss(model, batch, device, amp_dtype)
            if not math.isfinite(parts.points):
                raise InputError(describe(run, f"the loss became {parts.points} at step {step + 1}",
                                          expected="a finite loss", fix="lower --lr, check the data for extreme values"))
            if scaler is not None:
                scaler.scale(parts.total).backward()
                scaler.unscale_(optimizer)  # type: ignore[arg-type]
                grad_limit = clipper.limit()
                grad_norm = clipper(model.parameters())
                scaler.step(optimizer)  # type: ignore[arg-type]  # skips the step when the norm is not finite
                scaler.update()
            else:
                parts.total.backward()
                grad_limit = clipper.limit()
                grad_norm = clipper(model.parameters())
                if not math.isfinite(grad_norm):
                    raise InputError(describe(run, f"the gradient norm became {grad_norm} at step {step + 1}",
                                              expected="finite gradients",
                                              fix="lower --lr or --grad-clip, check the data for extreme values"))
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step += 1
            seconds = time.perf_counter() - fetch_started
            train_seconds += seconds
            record = {"kind": "train", "step": step, "loss": float(parts.total.detach()),
                      "loss_points": parts.points, "loss_coarse": parts.coarse, "lr": cfg.lr * factor,
                      "grad_norm": grad_norm if math.isfinite(grad_norm) else None, "grad_limit": grad_limit or None,
                      "points_per_s": units / seconds, "step_seconds": seconds, "data_seconds": data_seconds,
                      "compute_seconds": time.perf_counter() - t0, "batch": plan.batch, "units": plan.units,
                      "peak_memory_bytes": _peak_memory(device)}
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", pts_s=f"{record['points_per_s']:.0f}", refresh=False)
            bar.update(1)
            if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
                last_val = run_validation(step)
            if step % cfg.checkpoint_every == 0 and step < end_step:
                save(LAST, step)
            fetch_started = time.perf_counter()
    except KeyboardInterrupt:
        if step > start_step:
            save(LAST, step)
            say(f"interrupted: saved {run / LAST} at step {step}; continue with --resume")
        raise
    finally:
        bar.close()
    if step == cfg.steps:
        last_val = run_validation(step)
    save(LAST, step)
    metrics.close()
    done = step - start_step
    return FitResult(run_dir=str(run), steps=step, best_dice=best_dice, best_step=best_step,
                     last_validation=last_val, plan=plan,
                     steps_per_second=done / max(train_seconds, 1e-9) if done else 0.0,
                     points_per_second=done * units / max(train_seconds, 1e-9) if done else 0.0,
                     peak_memory_bytes=_peak_memory(device))


# --------------------------------------------------------------------------------- checkpoints
#
# ``last.pt`` / ``best.pt`` are ordinary model checkpoints (ossnet_train.checkpoint: weights, model
# config, preprocessing, provenance; the run's facts under provenance["training"]), so either can
# be exported or evaluated as is. What only resuming needs (optimiser and Lookahead state, loss
# scaler, RNG states) is written beside last.pt as ``state-<step>.pt`` *before* last.pt, which
# names it; the previous state file is removed only afterwards, so a crash at any moment leaves a
# last.pt whose state file exists.


def _state_name(step: int) -> str:
    return f"state-{step:08d}.pt"


def _save_training_state(path: Path, cfg: TrainConfig, model: nn.Module, preprocess: PreprocessConfig,
                         optimizer: Lookahead, scaler: torch.amp.GradScaler | None, clipper: GradientClipper,
                         step: int,
                         best_dice: float | None, best_step: int | None, plan: BatchPlan, *,
                         domain: dict[str, Any] | None = None) -> None:
    facts: dict[str, Any] = {"step": step, "best_dice": best_dice, "best_step": best_step,
                             "train_config": cfg.to_dict(), "plan": dataclasses.asdict(plan)}
    if path.name != LAST:
        checkpoint.save_checkpoint(path, model, preprocess, training=facts, domain=domain, overwrite=True)
        return
    state_path = path.with_name(_state_name(step))
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "clipper": clipper.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_write(state_path, overwrite=True) as tmp:
        torch.save(state, tmp)
    previous = None
    if path.is_file():
        try:
            previous = (checkpoint.load_checkpoint(path).provenance.get("training") or {}).get("state_file")
        except ModelFormatError:
            previous = None
    checkpoint.save_checkpoint(path, model, preprocess, training={**facts, "state_file": state_path.name},
                               domain=domain, overwrite=True)
    if previous and previous != state_path.name:
        path.with_name(previous).unlink(missing_ok=True)


def _load_training_state(path: Path, cfg: TrainConfig, model: nn.Module, optimizer: Lookahead,
                         scaler: torch.amp.GradScaler | None, device: torch.device, clipper: GradientClipper,
                         ) -> tuple[int, float | None, int | None, dict[str, Any]]:
    loaded = checkpoint.load_checkpoint(path)
    facts = loaded.provenance.get("training") or {}
    state_file = facts.get("state_file")
    if not state_file or not (path.parent / state_file).is_file():
        raise ModelFormatError(describe(path, "cannot resume: the optimiser state is missing",
                                        expected=f"{state_file or 'state-<step>.pt'} beside it, written by fit",
                                        found="no such file", fix="start a new run (weights alone cannot resume)"))
    _check_resumable(facts.get("train_config", {}), cfg, path)
    state_path = path.parent / state_file
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise ModelFormatError(describe(state_path, "cannot read the training state",
                                        found=f"{type(exc).__name__}: {str(exc)[:200]}",
                                        fix="start a new run")) from None
    if state.get("step") != facts.get("step"):
        raise ModelFormatError(describe(state_path, "training state does not belong to last.pt",
                                        expected=f"step {facts.get('step')}", found=f"step {state.get('step')}",
                                        fix="start a new run"))
    model.load_state_dict(loaded.state_dict)
    model.to(device)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ModelFormatError(describe(state_path, "optimiser state does not fit the model", found=str(exc),
                                        fix="resume with the original model settings")) from None
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    clipper.load_state_dict(state.get("clipper") or {})  # states saved before clipping existed: none
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(facts["step"]), facts.get("best_dice"), facts.get("best_step"), facts["plan"]
