"""Whole-volume validation: segment every validation subject as the runtime would, score on its own grid.

OSS-Net models go through the runtime's own pipeline (``ossnet_deploy.pipeline``, ``reference``
mode by default) with the PyTorch model as its pair runner (eval mode, no grad, chunks of
``max_queries``); the U-Net baselines through the sliding-window (3D) or slice-wise (2D)
inference of :mod:`ossnet_train.sliding_window`. The region's segmentation is mapped back onto
the subject's input grid with ``region_labels_to_input`` and compared with the subject's label there: Dice and IoU over every
voxel of the input grid (docs/design.md#measuring), never over sampled points.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import InputError, OutputExistsError, describe
from ossnet_deploy.geometry import region_labels_to_input
from ossnet_deploy.metrics import dice, iou
from ossnet_deploy.pipeline import segment_region
from ossnet_deploy.preprocess import PreparedVolume, PreprocessConfig
from ossnet_deploy.scheduler import SchedulerConfig
from ossnet_train.batches import ValidationCase
from ossnet_train.checkpoint import load_model
from ossnet_train.datasets import make_dataset
from ossnet_train.devices import autocast, evaluation_mode, resolve_device
from ossnet_train.model import OSSNet
from ossnet_train.sliding_window import slicewise_logits, sliding_window_logits
from ossnet_train.torch_pair import TorchPair
from ossnet_train.unet import ResidualUNet

__all__ = [
    "SubjectScore",
    "ValidationResult",
    "evaluate_checkpoint",
    "segment_grid",
    "validate",
]


@dataclass(frozen=True)
class SubjectScore:
    """Whole-volume agreement of one subject (over its input grid), with the cost of getting it."""

    case_id: str
    dice: float
    iou: float
    queries: int
    seconds: float


@dataclass(frozen=True)
class ValidationResult:
    """Per-subject scores and their means (``dice``, ``iou``: unweighted means over subjects)."""

    subjects: tuple[SubjectScore, ...]
    dice: float
    iou: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {"dice": self.dice, "iou": self.iou, "seconds": self.seconds,
                "subjects": [asdict(s) for s in self.subjects]}


def segment_grid(
    model: nn.Module,
    prepared: PreparedVolume,
    preprocess: PreprocessConfig,
    *,
    device: torch.device,
    mode: str = "reference",
    max_queries: int = 16384,
    amp_dtype: torch.dtype | None = None,
    roi: Sequence[int] = (128, 128, 128),
    threshold_logit: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Binary segmentation of the input's region of one prepared volume.

    ``threshold_logit``: a voxel is foreground where its logit is above it (0.0: probability
    0.5, what training optimises and export records).

    OSS-Net models go through the runtime's own pipeline (``ossnet_deploy.pipeline``) with a
    :class:`~ossnet_train.torch_pair.TorchPair`, so validation sees exactly what deployment will.

    Returns ``(labels, queries)``: ``labels`` uint8 of the shape of ``prepared.region``,
    ``queries`` the decoder queries made (OSS-Net) or voxels predicted (U-Nets).
    """
    region = prepared.region
    with evaluation_mode(model):
        if isinstance(model, OSSNet):
            runner = TorchPair(model, device=device, amp_dtype=amp_dtype)
            schedule = SchedulerConfig(mode=mode, max_queries=max_queries, threshold_logit=threshold_logit)
            result = segment_region(prepared, preprocess, runner, schedule)
            return result.labels, result.stats.total_queries
        if isinstance(model, ResidualUNet):
            # Only the input's region is predicted; sides shorter than a window are padded with
            # each channel's background value by the sliding-window code.
            volume = torch.from_numpy(np.ascontiguousarray(prepared.padded[(slice(None), *region)]))
            pads = [float(v) for v in prepared.pad_values]
            with autocast(device, amp_dtype):
                if model.config.spatial_dims == 3:
                    logits = sliding_window_logits(model, volume, roi=tuple(roi), overlap=0.25, pad_value=pads)
                else:
                    logits = slicewise_logits(model, volume, model.config.slice_axis, pad_value=pads)
            return (logits[0] > threshold_logit).cpu().numpy().astype(np.uint8), int(np.prod(volume.shape[1:]))
    raise TypeError(f"cannot validate a {type(model).__name__}; expected OSSNet or ResidualUNet")


def validate(
    model: nn.Module,
    cases: Sequence[ValidationCase],
    *,
    device: torch.device,
    mode: str = "reference",
    max_queries: int = 16384,
    amp_dtype: torch.dtype | None = None,
    roi: Sequence[int] = (128, 128, 128),
) -> ValidationResult:
    """Segment and score every case (see the module docstring)."""
    started = time.perf_counter()
    scores = []
    for case in cases:
        scores.append(_score(model, case, device=device, mode=mode, max_queries=max_queries, amp_dtype=amp_dtype,
                             roi=roi))
    n = max(len(scores), 1)
    return ValidationResult(
        subjects=tuple(scores),
        dice=float(sum(s.dice for s in scores) / n),
        iou=float(sum(s.iou for s in scores) / n),
        seconds=time.perf_counter() - started,
    )


def _score(model: nn.Module, case: ValidationCase, *, device: torch.device, mode: str, max_queries: int,
           amp_dtype: torch.dtype | None, roi: Sequence[int]) -> SubjectScore:
    t0 = time.perf_counter()
    region_labels, queries = segment_grid(model, case.prepared, case.preprocess, device=device, mode=mode,
                                          max_queries=max_queries, amp_dtype=amp_dtype, roi=roi)
    predicted = region_labels_to_input(region_labels, case.prepared.placement)
    return SubjectScore(case.case_id, dice(predicted, case.label), iou(predicted, case.label), queries,
                        time.perf_counter() - t0)


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    data_kind: str = "demo",
    target: str = "",
    mode: str = "reference",
    max_queries: int = 16384,
    fit: str = "error",
    device: str = "auto",
    roi: Sequence[int] = (128, 128, 128),
    json_out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Whole-volume Dice / IoU of a checkpoint on every subject of a dataset (``ossnet-train evaluate``).

    A subject whose data cannot be used (:class:`InputError`) is reported under ``failed`` and
    the rest are still scored. Returns (and with ``json_out`` writes, atomically) a dict:
    ``checkpoint``, ``data``, ``mode``, ``subjects`` (per-subject :class:`SubjectScore` dicts),
    ``failed`` (``case_id``, ``error``), ``dice`` / ``iou`` (means over scored subjects).
    """
    if json_out is not None and Path(json_out).exists() and not overwrite:
        raise OutputExistsError(describe(json_out, "output already exists", fix="pass --overwrite or another --json"))
    torch_device = resolve_device(device)
    model, ckpt = load_model(checkpoint_path)
    model.to(torch_device)
    try:
        preprocess = PreprocessConfig.from_dict(ckpt.preprocess)
    except ValueError as exc:
        raise InputError(describe(checkpoint_path, "checkpoint holds an invalid preprocessing config",
                                  found=str(exc), fix="re-save the checkpoint")) from None
    kwargs = {"target": target} if target else {}
    dataset = make_dataset(data_kind, data, **kwargs)  # type: ignore[arg-type]
    if len(dataset.channel_names) != len(preprocess.channels):
        raise InputError(describe(data, "the dataset's channel count does not match the model",
                                  expected=f"{len(preprocess.channels)} channel(s) {list(preprocess.channels)}",
                                  found=f"{len(dataset.channel_names)} channel(s)",
                                  fix="evaluate on data of the model's modality"))
    scores: list[SubjectScore] = []
    failed: list[dict[str, str]] = []
    for index, case_id in enumerate(dataset.case_ids):
        try:
            case = ValidationCase.load(dataset, index, preprocess, fit=fit)
        except InputError as exc:
            failed.append({"case_id": case_id, "error": str(exc)})
            continue
        scores.append(_score(model, case, device=torch_device, mode=mode, max_queries=max_queries, amp_dtype=None,
                             roi=roi))
    n = max(len(scores), 1)
    report: dict[str, Any] = {
        "checkpoint": os.fspath(checkpoint_path),
        "data": os.fspath(data),
        "data_kind": data_kind,
        "mode": mode,
        "subjects": [asdict(s) for s in scores],
        "failed": failed,
        "dice": sum(s.dice for s in scores) / n if scores else None,
        "iou": sum(s.iou for s in scores) / n if scores else None,
    }
    if json_out is not None:
        with atomic_write(json_out, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
