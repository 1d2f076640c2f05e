"""Training losses: BCE with logits over query points plus the auxiliary coarse-segmentation term.

Total loss (OSS-Net's recipe, docs/training.md#the-recipe): mean BCE over all points of the batch
``+ aux_weight * `` mean BCE of the encoder's coarse logits against the max-pooled label
(variants C and D only; ``aux_weight`` 0.1). We use BCE *with logits* (docs/design.md#model-io):
the reference's clamped sigmoid-BCE is numerically worse.

:func:`step_loss` is the forward pass and loss of one collated training batch, for every
architecture; the training loop and the batch planner's memory probe share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ossnet_train.devices import autocast
from ossnet_train.model import OSSNet

__all__ = ["AUX_WEIGHT", "LossParts", "coarse_target", "occupancy_loss", "step_loss", "voxel_loss"]

AUX_WEIGHT = 0.1


@dataclass(frozen=True)
class LossParts:
    """The total loss (a scalar tensor with grad) and its detached parts as floats."""

    total: torch.Tensor
    points: float
    coarse: float | None


def coarse_target(label: torch.Tensor, coarse_shape: tuple[int, int, int]) -> torch.Tensor:
    """Max-pool a binary grid label to the coarse grid: a cell is 1 if any voxel in it is foreground.

    ``label``: (B, X, Y, Z) or (B, 1, X, Y, Z), any dtype, nonzero = foreground, on the padded
    grid. ``coarse_shape``: (d, h, w) of the encoder's coarse logits. Returns (B, 1, d, h, w)
    float32 in {0, 1}. Adaptive max pooling equals the reference's target and, for grid sides
    divisible by the coarse sides (every preset), is an exact block max.
    """
    if label.ndim == 4:
        label = label.unsqueeze(1)
    binary = (label != 0).to(torch.float32)
    return F.adaptive_max_pool3d(binary, tuple(coarse_shape))


def occupancy_loss(
    point_logits: torch.Tensor,
    point_targets: torch.Tensor,
    coarse_logits: torch.Tensor | None = None,
    coarse_targets: torch.Tensor | None = None,
    *,
    aux_weight: float = AUX_WEIGHT,
) -> LossParts:
    """OSS-Net loss.

    ``point_logits``: decoder logits, any shape with the same number of elements as
    ``point_targets`` (e.g. (B*N, 1) logits for (B, N) targets in {0, 1}).
    ``coarse_logits``: (B, 1, d, h, w) or None (O-Net, A, B); ``coarse_targets`` as returned by
    :func:`coarse_target`. Means are taken in float32 whatever the autocast dtype.
    """
    logits = point_logits.reshape(-1).float()
    targets = point_targets.reshape(-1).to(logits.dtype)
    if logits.numel() != targets.numel():
        raise ValueError(f"{logits.numel()} point logits for {targets.numel()} targets")
    points = F.binary_cross_entropy_with_logits(logits, targets)
    total = points
    coarse_value: float | None = None
    if coarse_logits is not None:
        if coarse_targets is None:
            raise ValueError("coarse logits given without coarse targets")
        coarse = F.binary_cross_entropy_with_logits(coarse_logits.float(), coarse_targets.float())
        total = points + aux_weight * coarse
        coarse_value = float(coarse.detach())
    return LossParts(total=total, points=float(points.detach()), coarse=coarse_value)


def voxel_loss(logits: torch.Tensor, targets: torch.Tensor) -> LossParts:
    """Dense BCE with logits for the U-Net baselines: ``logits`` (B, 1, ...) against ``targets`` (B, ...)."""
    return occupancy_loss(logits, targets)


def step_loss(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
              amp_dtype: torch.dtype | None) -> LossParts:
    """Forward pass and loss of one collated batch (see :class:`~ossnet_train.batches.TrainingSamples`).

    The training loop's step and the batch planner's memory probe both run this.
    """
    with autocast(device, amp_dtype):
        if isinstance(model, OSSNet):
            out = model(batch["volume"], batch["coords"], batch.get("patches"))
            return occupancy_loss(out.logits, batch["targets"], out.coarse_logits, batch.get("coarse"))
        image, target = batch["image"], batch["target"]
        if model.config.spatial_dims == 2:  # (B, S, C, P, Q): S slices of B volumes -> one 2D batch
            image, target = image.flatten(0, 1), target.flatten(0, 1)
        logits = model(image)
        return voxel_loss(logits, target.unsqueeze(1))
