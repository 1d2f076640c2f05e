"""Model-free baselines for the demo task (white matter on the demo cohort's T1).

* :func:`template_mask`: the unwarped template's white matter (probability > 0.5), i.e. what
  you get by assuming every subject *is* the template. It measures how much the random warps
  move the anatomy.
* :func:`threshold_ceiling`: the best Dice any single global intensity threshold reaches
  against the label (the ceiling of every intensity-only method, no context).
* :func:`otsu_3class`: three-class Otsu thresholding (two thresholds maximising the
  between-class variance of the intensity histogram). On a T1 the brightest class is white
  matter, so ``otsu_3class(image, mask).labels == 2`` is an intensity-only WM segmentation.

A learned model should beat both; docs/data.md lists them with the demo cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ossnet_deploy.errors import InputError, describe
from ossnet_train.demo_cohort import load_template

__all__ = ["Otsu3", "otsu_3class", "template_mask", "threshold_ceiling"]


def template_mask(threshold: float = 0.5) -> np.ndarray:
    """The template's white-matter mask on the template grid (the demo cohort's grid).

    Args:
        threshold: probability threshold (the demo labels use 0.5).

    Returns:
        ``(197, 233, 189)`` bool, axes of the template's array (RAS, 1 mm; affine
        ``load_template().affine``).

    Raises:
        DependencyError: nilearn's template files are missing.
    """
    return load_template().wm > threshold * 255.0


@dataclass(frozen=True, eq=False)
class Otsu3:
    """Result of :func:`otsu_3class`.

    Attributes:
        thresholds: ``(low, high)`` in image units; class 0 is ``value < low``, class 1
            ``low <= value < high``, class 2 ``value >= high``.
        labels: uint8 array of the image's shape with the class of every voxel (voxels
            outside the mask are 0).
    """

    thresholds: tuple[float, float]
    labels: np.ndarray


def otsu_3class(image: np.ndarray, mask: np.ndarray | None = None, bins: int = 256) -> Otsu3:
    """Three-class Otsu: the two thresholds that maximise the between-class variance.

    The histogram has ``bins`` equal bins over the [min, max] of the (masked) values; every
    pair of bin boundaries splitting it into three non-empty classes is scored at once
    (a ``bins x bins`` table), so the result is the exact optimum on that histogram.

    Args:
        image: array of any shape (e.g. ``(X, Y, Z)`` float T1 intensities).
        mask: bool array of the same shape selecting the voxels used (e.g. the head);
            all voxels when omitted.
        bins: histogram bins (>= 3).

    Returns:
        :class:`Otsu3` with the thresholds and the per-voxel classes (0 darkest .. 2 brightest).

    Raises:
        InputError: non-finite values, a mask of the wrong shape or empty, fewer than three
            distinct histogram bins in use.
    """
    data = np.asarray(image)
    if bins < 3:
        raise InputError(describe(None, "too few Otsu bins", expected="bins >= 3", found=str(bins)))
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise InputError(
                describe(None, "Otsu mask does not match the image", expected=f"shape {data.shape}",
                         found=f"shape {mask.shape}")
            )
        values = data[mask]
    else:
        values = data.ravel()
    values = values.astype(np.float64, copy=False)
    if values.size == 0:
        raise InputError(describe(None, "Otsu mask is empty", expected="at least three voxels", found="none"))
    if not np.isfinite(values).all():
        raise InputError(describe(None, "image has non-finite values", expected="finite intensities",
                                  found=f"{int((~np.isfinite(values)).sum())} NaN/inf voxels"))
    counts, edges = np.histogram(values, bins=bins)
    if np.count_nonzero(counts) < 3:
        raise InputError(
            describe(None, "image has too few distinct intensities for three classes",
                     expected="at least three occupied histogram bins", found=str(np.count_nonzero(counts)))
        )
    prob = counts / counts.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    w = np.cumsum(prob)
    m = np.cumsum(prob * centres)
    # Classes: bins [0, a], [a + 1, b], [b + 1, bins - 1]. With the total mean fixed, the
    # between-class variance is sum_k M_k^2 / W_k minus a constant.
    a = np.arange(bins)[:, None]
    b = np.arange(bins)[None, :]
    w0, m0 = w[a], m[a]
    w1, m1 = w[b] - w[a], m[b] - m[a]
    w2, m2 = 1.0 - w[b], m[-1] - m[b]
    # Emptiness from integer counts: the float cumulative sums can leave 1e-17 crumbs.
    n = np.cumsum(counts)
    valid = (a < b) & (b < bins - 1) & (n[a] > 0) & (n[b] > n[a]) & (n[-1] > n[b])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(valid, m0**2 / w0 + m1**2 / w1 + m2**2 / w2, -np.inf)
    best_a, best_b = np.unravel_index(int(np.argmax(score)), score.shape)
    low, high = float(edges[best_a + 1]), float(edges[best_b + 1])
    labels = ((data >= low).astype(np.uint8) + (data >= high).astype(np.uint8))
    if mask is not None:
        labels[~mask] = 0
    return Otsu3((low, high), labels)


def threshold_ceiling(image: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """Best Dice of ``image >= t`` against ``truth`` inside ``region``, over every threshold ``t``.

    Exact: every cut between the sorted distinct values of the region is scored at once
    (cumulative sums), so no threshold grid can miss the optimum.

    Args:
        image: ``(X, Y, Z)`` intensities (any real dtype).
        truth: label of the same shape (nonzero = the structure).
        region: bool mask of the same shape: the voxels that count (e.g. the brain).

    Returns:
        ``(dice, t)``: the best Dice and the lowest intensity of the predicted set.

    Raises:
        InputError: shapes differ or the region is empty.
    """
    image, truth, region = np.asarray(image), np.asarray(truth) > 0, np.asarray(region, dtype=bool)
    if not image.shape == truth.shape == region.shape:
        raise InputError(describe(None, "threshold_ceiling needs one grid", expected=f"shape {image.shape} for all",
                                  found=f"truth {truth.shape}, region {region.shape}"))
    if not region.any():
        raise InputError(describe(None, "threshold_ceiling region is empty", expected="at least one voxel",
                                  found="none"))
    order = np.argsort(image[region], kind="stable")
    values, labels = image[region][order], truth[region][order]
    positives_above = np.cumsum(labels[::-1])[::-1].astype(np.float64)  # true voxels at index i or above
    predicted = np.arange(len(values), 0, -1, dtype=np.float64)  # voxels at index i or above
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])  # ties stay on one side of a cut
    scores = 2 * positives_above[starts] / (predicted[starts] + float(labels.sum()))
    best = int(np.argmax(scores))
    return float(scores[best]), float(values[starts[best]])
