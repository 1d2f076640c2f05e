"""How much of the demo task's difficulty is the bias field? A diagnostic for the default model.

For each demo seed it regenerates the subject twice (``ossnet_train.demo_cohort``): as the
cohort makes it, and with the bias field switched off (``bias_log_rms=0``; every other random
draw is the same, each comes from its own seeded stream). It prints the best Dice that one global
intensity threshold reaches against the white-matter label (the ceiling of any method that
reads intensity alone, no context) on:

* ``raw``: the image as generated;
* ``no bias``: the same subject without the bias field;
* ``corrected``: the raw image divided by a bias field estimated from it alone: a
  segmentation-driven estimate in the style of FSL FAST / N3, on a 3 mm grid: k-means (3 classes)
  of the log intensity, the residual of the two brightest classes (grey and white matter)
  smoothed by a normalised Gaussian (sigma ``--sigma-mm``), iterated ``--iterations`` times.

It also prints the RMS of the remaining log-field error in tissue (true field: log of raw / no
bias). Nothing here is used by training or the runtime; it measures what a bias-correction step
could give before anyone builds one.

Usage::

    python scripts/probe_bias_field.py 3000 3001 3004 3005 [--sigma-mm 20] [--iterations 8]
"""

from __future__ import annotations

import argparse

import numpy as np

from ossnet_deploy.metrics import dice
from ossnet_train.demo_cohort import DemoParams, make_demo_subject


def best_threshold_dice(image: np.ndarray, label: np.ndarray, mask: np.ndarray) -> float:
    """Best Dice of ``image > t`` against ``label`` over 131 quantiles ``t`` of the head ``mask``."""
    values, truth = image[mask], label[mask] > 0
    return max(dice(values > t, truth) for t in np.quantile(values, np.linspace(0.3, 0.95, 131)))


def _kmeans_1d(x: np.ndarray, k: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.argmin(np.abs(x[:, None] - centres[None]), axis=1)
        centres = np.array([x[assign == j].mean() for j in range(k)])
    return centres, assign


def _along_axes(volume: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Apply one matrix per axis: ``out[i, j, k] = sum A[i, a] B[j, b] C[k, c] volume[a, b, c]``."""
    out = np.einsum("ia,abc->ibc", matrices[0], volume)
    out = np.einsum("jb,ibc->ijc", matrices[1], out)
    return np.einsum("kc,ijc->ijk", matrices[2], out)


def _linear_upsampling(n_full: int, n_small: int, factor: int) -> np.ndarray:
    """``(n_full, n_small)`` linear interpolation from block means (block j centred at j f + (f-1)/2)."""
    pos = np.clip((np.arange(n_full) - (factor - 1) / 2) / factor, 0, n_small - 1)
    j0 = np.floor(pos).astype(int)
    j1 = np.minimum(j0 + 1, n_small - 1)
    t = pos - j0
    matrix = np.zeros((n_full, n_small))
    np.add.at(matrix, (np.arange(n_full), j0), 1 - t)
    np.add.at(matrix, (np.arange(n_full), j1), t)
    return matrix


def estimate_log_bias(image: np.ndarray, *, factor: int = 3, sigma_mm: float = 20.0, iterations: int = 8,
                      classes: int = 3) -> np.ndarray:
    """Log bias field of a 1 mm ``(I, J, K)`` float image, same shape, mean 0 over the head."""
    padded_shape = [-(-n // factor) * factor for n in image.shape]
    padded = np.pad(image, [(0, p - n) for p, n in zip(padded_shape, image.shape, strict=True)])
    small = padded.reshape(padded_shape[0] // factor, factor, padded_shape[1] // factor, factor,
                           padded_shape[2] // factor, factor).mean(axis=(1, 3, 5))
    head = small > 0.1 * np.quantile(small, 0.99)
    inner = head.copy()
    for axis in range(3):  # erode by one voxel: block means at the head's edge mix in background
        for shift in (1, -1):
            inner &= np.roll(head, shift, axis)
    log = np.log(np.maximum(small, 1e-6))
    field = np.zeros_like(log)
    sigma = sigma_mm / factor
    gauss = [np.exp(-0.5 * ((np.arange(n)[:, None] - np.arange(n)[None]) / sigma) ** 2) for n in small.shape]
    for _ in range(iterations):
        corrected = (log - field)[inner]
        centres, assign = _kmeans_1d(corrected, classes)
        tissue = assign >= classes - 2
        residual, weight = np.zeros_like(log), np.zeros_like(log)
        residual[inner] = np.where(tissue, corrected - centres[assign], 0.0)
        weight[inner] = tissue
        num, den = _along_axes(residual, gauss), _along_axes(weight, gauss)
        field += np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
        field -= field[inner].mean()
    up = [_linear_upsampling(n, m, factor) for n, m in zip(image.shape, small.shape, strict=True)]
    return _along_axes(field, up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seeds", type=int, nargs="+", help="demo seeds, e.g. the held-out 3000-3005")
    parser.add_argument("--sigma-mm", type=float, default=20.0)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    print("| seed | raw | no bias | corrected | field RMS in tissue | error RMS after correction |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        subject = make_demo_subject(seed)
        clean = make_demo_subject(seed, DemoParams(bias_log_rms=0.0))
        image, label = subject.image, subject.label
        head = image > 0.1 * np.quantile(image, 0.99)
        tissue = head & (clean.image > np.quantile(clean.image[head], 0.3))
        true_field = np.log(np.maximum(image, 1e-3) / np.maximum(clean.image, 1e-3))[tissue]
        field = estimate_log_bias(image, sigma_mm=args.sigma_mm, iterations=args.iterations)
        error = true_field - field[tissue]
        print(f"| {seed} | {best_threshold_dice(image, label, head):.3f} "
              f"| {best_threshold_dice(clean.image, label, head):.3f} "
              f"| {best_threshold_dice(image / np.exp(field), label, head):.3f} "
              f"| {true_field.std():.3f} | {error.std():.3f} |", flush=True)


if __name__ == "__main__":
    main()
