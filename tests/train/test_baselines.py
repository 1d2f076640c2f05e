"""Baselines: three-class Otsu against a brute-force reference, and the template WM mask."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ossnet_deploy.errors import DependencyError, InputError
from ossnet_train.baselines import otsu_3class, template_mask, threshold_ceiling
from ossnet_train.demo_cohort import template_dir


def _reference_thresholds(values: np.ndarray, bins: int) -> tuple[float, float]:
    """Textbook Otsu: maximise sum_k w_k (mu_k - mu)^2 over all split pairs, by loops."""
    counts, edges = np.histogram(values, bins=bins)
    p = counts / counts.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    mu = (p * centres).sum()
    best, best_pair = -1.0, (0, 0)
    for a, b in itertools.combinations(range(bins - 1), 2):
        classes = [slice(0, a + 1), slice(a + 1, b + 1), slice(b + 1, bins)]
        weights = [p[c].sum() for c in classes]
        if min(counts[c].sum() for c in classes) == 0:
            continue
        between = sum(w * ((p[c] * centres[c]).sum() / w - mu) ** 2 for w, c in zip(weights, classes, strict=True))
        if between > best + 1e-15:
            best, best_pair = between, (a, b)
    return float(edges[best_pair[0] + 1]), float(edges[best_pair[1] + 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(m, s, n) for m, s, n in [(0, 1, 300), (4, 1.5, 200), (9, 1, 100)]])
    result = otsu_3class(values, bins=24)
    assert result.thresholds == pytest.approx(_reference_thresholds(values, 24), abs=1e-12)


def test_otsu_separates_three_clusters_and_respects_the_mask() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(10, 12, 8))
    image = (truth * 10.0 + rng.normal(0, 1.0, truth.shape)).astype(np.float32)
    result = otsu_3class(image)
    low, high = result.thresholds
    # Any split inside an empty gap scores the same; each threshold must fall in its gap.
    assert image[truth == 0].max() < low <= image[truth == 1].min()
    assert image[truth == 1].max() < high <= image[truth == 2].min()
    np.testing.assert_array_equal(result.labels, truth)
    mask = truth > 0
    masked = otsu_3class(image, mask)  # only two clusters inside: the split falls inside one
    assert masked.labels[~mask].max() == 0
    assert masked.labels.dtype == np.uint8


def test_otsu_refuses_unusable_input() -> None:
    with pytest.raises(InputError, match="too few distinct intensities"):
        otsu_3class(np.ones((4, 4, 4)))
    bad = np.arange(64, dtype=np.float64).reshape(4, 4, 4)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        otsu_3class(bad)
    with pytest.raises(InputError, match="mask does not match"):
        otsu_3class(np.zeros((4, 4, 4)), np.zeros((4, 4, 3), bool))


def test_template_mask_is_the_templates_white_matter() -> None:
    try:
        template_dir()
    except DependencyError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"nilearn's MNI template files are not installed ({exc})")
    mask = template_mask()
    assert mask.shape == (197, 233, 189) and mask.dtype == bool
    # Measured: 7.3 % of the grid; WM is one of the largest tissues of a 1.4 l brain in a 8.7 l box.
    assert 0.06 < mask.mean() < 0.09
    assert template_mask(0.9).sum() < mask.sum() < template_mask(0.1).sum()


def test_threshold_ceiling_is_exact_and_falls_when_the_classes_overlap() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[5:15, 5:15, 5:15] = True  # 12.5 % of the grid: between any two points of a coarse grid
    everywhere = np.ones_like(truth)
    image = np.where(truth, 2.0, 1.0) + rng.normal(0, 0.05, truth.shape)
    score, t = threshold_ceiling(image, truth, everywhere)
    assert score == 1.0 and 1.2 < t < 1.9
    noisy = np.where(truth, 2.0, 1.0) + rng.normal(0, 1.0, truth.shape)
    assert threshold_ceiling(noisy, truth, everywhere)[0] < 0.8
    # Against brute force over every threshold, on a small region.
    region = np.zeros_like(truth)
    region[3:9, 3:9, 3:9] = True
    values = noisy[region]
    brute = max(2 * float((values >= v)[truth[region]].sum()) / float((values >= v).sum() + truth[region].sum())
                for v in values)
    assert threshold_ceiling(noisy, truth, region)[0] == pytest.approx(brute, abs=1e-12)
    with pytest.raises(InputError, match="region is empty"):
        threshold_ceiling(image, truth, np.zeros_like(truth))
