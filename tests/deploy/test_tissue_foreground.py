"""The tissue foreground (``PreprocessConfig(foreground="tissue")``): normalisation and placement
that do not depend on the background or the field of view (docs/design.md#intensities).

A brain-like phantom (CSF, grey and white matter in nested ellipsoids; Rician-like noise) is
stored four ways: noisy background over a wide field of view, the same with the background set
exactly to zero, cropped to the brain plus 3 voxels, and padded with 20 more voxels of noise per
side. The brain's normalised intensities on the model grid must agree within 0.05 z units (the
white/grey contrast is about 1.5 z) and the brain must land on the same grid voxels; with the
raw > 0 rule they differ by far more, which is what the tissue rule fixes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ossnet_deploy.geometry import block_means, foreground_bbox, otsu_threshold, tissue_mask
from ossnet_deploy.preprocess import PreprocessConfig, prepare_volume

GRID = (72, 72, 72)
CONFIG = PreprocessConfig(geometry="fixed_spacing_pad", shape=GRID, channels=("t1",), intensity="zscore_foreground",
                          foreground="tissue")
TOLERANCE_Z = 0.05


def _brain(shape: tuple[int, int, int] = (64, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy image, brain mask): WM 1.0 inside GM 0.6 inside a CSF rim 0.25; noise sigma 0.03."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij"))
    r = np.sqrt(((grid / np.array([22.0, 26.0, 20.0])[:, None, None, None]) ** 2).sum(0))
    clean = np.where(r < 0.55, 1.0, np.where(r < 0.9, 0.6, np.where(r < 1.0, 0.25, 0.0)))
    noisy = np.sqrt((clean + rng.normal(0, 0.03, shape)) ** 2 + rng.normal(0, 0.03, shape) ** 2)
    return noisy.astype(np.float32), r < 1.0


def _prepare(image: np.ndarray, config: PreprocessConfig = CONFIG) -> np.ndarray:
    return prepare_volume(image[None], np.eye(4), config).padded[0]


def _variants(image: np.ndarray, brain: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[int, int, int]]]:
    """Stored variants and where the original volume's voxel (0, 0, 0) sits in each."""
    lo, hi = foreground_bbox(brain)
    crop = tuple(slice(max(a - 3, 0), b + 3) for a, b in zip(lo, hi, strict=True))
    rng = np.random.default_rng(1)
    wide = np.sqrt(rng.normal(0, 0.03, [n + 40 for n in image.shape]) ** 2
                   + rng.normal(0, 0.03, [n + 40 for n in image.shape]) ** 2).astype(np.float32)
    wide[20:-20, 20:-20, 20:-20] = image
    return {
        "noisy": (image, (0, 0, 0)),
        "zero_background": (np.where(brain, image, 0).astype(np.float32), (0, 0, 0)),
        "cropped": (np.ascontiguousarray(image[crop]), tuple(-s.start for s in crop)),
        "padded": (wide, (20, 20, 20)),
    }


def test_brain_intensities_and_placement_do_not_depend_on_background_or_field_of_view() -> None:
    image, brain = _brain()
    reference = _prepare(image)
    ref_brain = tissue_mask(reference[None] - reference.min(), 0.5)  # the bright core on the grid
    assert ref_brain.sum() > 1000
    for name, (stored, _) in _variants(image, brain).items():
        grid = _prepare(stored)
        # Same grid voxels hold the brain, and its values agree: placement and statistics both.
        inside = grid[ref_brain]
        diff = float(np.max(np.abs(inside - reference[ref_brain])))
        assert diff < TOLERANCE_Z, f"{name}: brain intensities differ by {diff:.3f} z"


def test_the_raw_threshold_rule_fails_the_same_comparison() -> None:
    # Guards the test above: with foreground = raw > 0 the noisy and zero-background volumes
    # normalise far apart (the noisy background joins the statistics), as the issue measured.
    image, brain = _brain()
    old = replace(CONFIG, foreground="threshold")
    variants = _variants(image, brain)
    noisy, zero = _prepare(variants["noisy"][0], old), _prepare(variants["zero_background"][0], old)
    core = _prepare(image) > 1.0
    assert float(np.max(np.abs(noisy[core] - zero[core]))) > 10 * TOLERANCE_Z


def test_tissue_mask_excludes_noise_and_keeps_the_brain() -> None:
    image, brain = _brain()
    mask = tissue_mask(image[None], CONFIG.foreground_fraction)
    assert mask[brain].mean() > 0.97          # CSF rim (0.25) is above 0.2 x the bright level
    assert mask[~brain].mean() < 0.01         # background noise is not tissue
    zero = tissue_mask(np.zeros((1, 8, 8, 8), np.float32), 0.2)
    assert not zero.any()


def test_block_means_and_otsu() -> None:
    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    means = block_means(vol, 4)
    assert means.shape == (2, 2, 2)
    assert means[1, 1, 1] == pytest.approx(vol[4:, 4:, 4:].mean())
    values = np.concatenate([np.zeros(1000), np.ones(200) * 10])
    assert 0 < otsu_threshold(values) < 10
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


def test_tissue_foreground_is_recorded_only_when_used() -> None:
    assert "foreground" not in replace(CONFIG, foreground="threshold").to_dict()
    data = CONFIG.to_dict()
    assert data["foreground"] == "tissue" and data["foreground_fraction"] == 0.2
    assert PreprocessConfig.from_dict(data) == CONFIG
    with pytest.raises(ValueError, match="foreground"):
        replace(CONFIG, foreground="otsu")
    with pytest.raises(ValueError, match="foreground_fraction"):
        replace(CONFIG, foreground_fraction=1.5)
