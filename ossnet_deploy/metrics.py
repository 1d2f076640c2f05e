"""Agreement between two binary segmentations (docs/design.md#measuring).

Dice and IoU are computed over the foreground of whole volumes: every voxel of the grid
counts, and two empty segmentations agree perfectly (1.0). The reference implementation
scores empty vs empty as 0 and adds 1e-10 to denominators; we do neither.

Memory: a 512^3 volume has 134 M voxels, so no float copy is ever made. Counting runs over
slabs of the first axis, which keeps boolean temporaries to a few MB.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion", "dice", "iou"]

# Voxels per slab: 4 M booleans = 4 MB per temporary.
_SLAB_VOXELS = 1 << 22


def _as_mask(block: np.ndarray, name: str) -> np.ndarray:
    """``block != 0`` as bool, refusing values other than 0 and 1 (e.g. a multi-label map)."""
    if block.dtype == np.bool_:
        return block
    mask = block != 0
    stray = np.count_nonzero(mask & (block != 1))
    if stray:
        bad = block[mask & (block != 1)].flat[0]
        raise ValueError(
            f"{name} must be a binary mask (bool or 0/1 values), found {stray} voxels with other "
            f"values (e.g. {bad!r}); compare one label at a time: (labels == k)"
        )
    return mask


def confusion(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """Count true positives, false positives and false negatives of a binary segmentation.

    Args:
        pred: predicted mask, any shape, bool or 0/1 values of any numeric dtype.
        target: ground-truth mask, same shape and conventions as ``pred``.

    Returns:
        ``(tp, fp, fn)`` as Python ints (voxel counts).

    Raises:
        ValueError: the shapes differ, or an array holds values other than 0 and 1.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {pred.shape} and target {target.shape}"
        )
    if pred.ndim == 0:
        pred, target = pred.reshape(1), target.reshape(1)
    slab_rows = max(1, _SLAB_VOXELS // max(1, int(np.prod(pred.shape[1:]))))
    tp = n_pred = n_target = 0
    for start in range(0, pred.shape[0], slab_rows):
        p = _as_mask(pred[start : start + slab_rows], "pred")
        t = _as_mask(target[start : start + slab_rows], "target")
        tp += int(np.count_nonzero(p & t))
        n_pred += int(np.count_nonzero(p))
        n_target += int(np.count_nonzero(t))
    return tp, n_pred - tp, n_target - tp


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2 tp / (2 tp + fp + fn)`` over the foreground; 1.0 when both are empty.

    Args:
        pred: predicted mask, bool or 0/1, any shape.
        target: ground-truth mask of the same shape.

    Raises:
        ValueError: the shapes differ, or an array holds values other than 0 and 1.
    """
    tp, fp, fn = confusion(pred, target)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union ``tp / (tp + fp + fn)``; 1.0 when both are empty.

    Args:
        pred: predicted mask, bool or 0/1, any shape.
        target: ground-truth mask of the same shape.

    Raises:
        ValueError: the shapes differ, or an array holds values other than 0 and 1.
    """
    tp, fp, fn = confusion(pred, target)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator
