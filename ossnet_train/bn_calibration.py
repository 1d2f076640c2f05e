"""Recompute batch-normalisation running statistics for a trained model ("precise BN").

During training the running statistics are exponential averages (momentum 0.1) over recent
steps, taken while the weights were still moving, and the encoder sees one volume per step, so
its batch statistics are per-volume. The exported graphs use the running statistics, so they can
lag behind the final weights. This module resets them and accumulates the exact average of the
batch statistics of the *final* weights over many training samples (no augmentation, no
gradients), which is what eval mode should use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]

log = logging.getLogger(__name__)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1d/3d, affine or not) that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """Replace every BatchNorm's running statistics by the average over ``batches``.

    Args:
        model: an OSS-Net model (``forward(volume, coords, patches)``); its weights are not changed.
        batches: training batches (dicts with ``volume`` (B, C, Dg, Hg, Wg), ``coords`` (B, N, 3),
            ``patches`` (B, N, C_p, 7, 7, 7) or absent), e.g. un-augmented training samples.

    Returns:
        The number of batches used. The model is left in eval mode.
    """
    layers = batchnorm_layers(model)
    saved = [(layer.momentum, layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: the exact mean over all batches
    model.train()
    used = 0
    try:
        for batch in batches:
            model(batch["volume"], batch["coords"], batch.get("patches"))
            used += 1
    finally:
        for layer, (momentum, mean, var) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            if used == 0:
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
        model.eval()
    log.info("recalibrated %d BatchNorm layers over %d batches", len(layers), used)
    return used
