"""Point sampling: uniform reach, the border band against references, and the band balance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ossnet_deploy.errors import InputError
from ossnet_deploy.morphology import max_filter
from ossnet_train.sampling import (
    band_indices,
    border_band,
    border_points,
    label_boundary,
    sample_points,
    uniform_points,
)


def _blob(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A random lumpy binary label (a union of balls)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1)
    label = np.zeros(shape, dtype=bool)
    for _ in range(3):
        centre = rng.uniform(0, shape)
        radius = rng.uniform(1.5, 3.5)
        label |= ((grid - centre) ** 2).sum(-1) <= radius**2
    return label


def _reference_boundary(label: np.ndarray) -> np.ndarray:
    """Loop reference: the 3x3x3 neighbourhood clipped to the grid holds both values."""
    out = np.zeros(label.shape, dtype=bool)
    for i, j, k in itertools.product(*(range(s) for s in label.shape)):
        nb = label[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2]
        out[i, j, k] = nb.any() and not nb.all()
    return out


def _reference_dilation(mask: np.ndarray, window: int) -> np.ndarray:
    r = window // 2
    out = np.zeros(mask.shape, dtype=bool)
    for i, j, k in itertools.product(*(range(s) for s in mask.shape)):
        out[i, j, k] = mask[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1, max(k - r, 0):k + r + 1].any()
    return out


def _sobel_nonzero(label: np.ndarray) -> np.ndarray:
    """Nonzero 3D Sobel magnitude of a binary label (edge-replicated, so the grid border is no edge)."""
    x = np.pad(label.astype(np.float64), 1, mode="edge")
    smooth, deriv = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    magnitude = np.zeros(label.shape)
    for axis in range(3):
        kernels = [smooth, smooth, smooth]
        kernels[axis] = deriv
        g = np.zeros(label.shape)
        for (a, wa), (b, wb), (c, wc) in itertools.product(*(enumerate(k) for k in kernels)):
            g += wa * wb * wc * x[a:a + label.shape[0], b:b + label.shape[1], c:c + label.shape[2]]
        magnitude += g**2
    return magnitude > 0


def test_uniform_reaches_every_index_including_the_last() -> None:
    rng = np.random.default_rng(0)
    shape = (5, 7, 3)
    points = uniform_points(shape, 3000, rng)
    assert points.shape == (3000, 3) and points.dtype == np.int64
    for axis, dim in enumerate(shape):
        counts = np.bincount(points[:, axis], minlength=dim)
        assert counts.size == dim  # nothing outside 0 .. dim - 1
        assert (counts > 0).all()
        # Uniform: each index about 3000 / dim times (5 standard deviations).
        expected = 3000 / dim
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_equals_loop_reference(seed: int) -> None:
    label = _blob((9, 11, 8), seed)
    boundary = label_boundary(label)
    np.testing.assert_array_equal(boundary, _reference_boundary(label))
    for window in (5, 13):
        np.testing.assert_array_equal(border_band(label, window), _reference_dilation(boundary, window))


def test_boundary_contains_sobel_edges_and_differs_only_on_thin_structures() -> None:
    """The stated relation: Sobel-nonzero is a subset; a lone voxel is where they differ."""
    for seed in range(4):
        label = _blob((12, 13, 11), seed)
        sobel = _sobel_nonzero(label)
        boundary = label_boundary(label)
        assert not (sobel & ~boundary).any()
        np.testing.assert_array_equal(max_filter(sobel, 13), border_band(label, 13))
    lone = np.zeros((7, 7, 7), dtype=bool)
    lone[3, 3, 3] = True
    assert label_boundary(lone)[3, 3, 3] and not _sobel_nonzero(lone)[3, 3, 3]


def test_grid_border_is_not_a_boundary() -> None:
    label = np.zeros((6, 6, 6), dtype=bool)
    label[:3] = True  # touches five faces of the grid
    boundary = label_boundary(label)
    assert boundary[2].all() and boundary[3].all()
    assert not boundary[[0, 1, 4, 5]].any()
    assert not border_band(np.ones((6, 6, 6), bool)).any()


def test_border_sampling_puts_half_the_points_in_a_small_band() -> None:
    label = np.zeros((64, 64, 64), dtype=bool)
    label[30:32, 30:32, 30:32] = True
    band = border_band(label, 13)
    assert band.sum() == 16**3 and band.mean() < 0.02  # 4^3 boundary dilated by 13 (the reference's band)
    assert border_band(label).sum() == 8**3  # the default: dilated by 5
    rng = np.random.default_rng(0)
    points = border_points(band_indices(band), label.shape, 4000, rng)
    inside = band[points[:, 0], points[:, 1], points[:, 2]].mean()
    # Half from the band, plus the uniform half's share of a band that is 1.6 % of the grid.
    assert abs(inside - 0.5) < 0.02
    assert abs(inside - (0.5 + 0.5 * band.mean())) < 0.015


def test_band_draws_are_without_replacement_and_all_taken_when_few() -> None:
    label = np.zeros((30, 30, 30), dtype=bool)
    label[10:13, 10:13, 10:13] = True
    band = border_band(label, window=3)
    flat = band_indices(band)
    rng = np.random.default_rng(1)
    only_band = border_points(band, label.shape, flat.size, rng, balance=1.0)
    assert np.unique(np.ravel_multi_index(only_band.T, label.shape)).size == flat.size  # each voxel once
    many = border_points(flat, label.shape, 4 * flat.size, rng, balance=0.5)
    drawn = set(np.ravel_multi_index(many.T, label.shape).tolist())
    assert set(flat.tolist()) <= drawn
    assert many.shape == (4 * flat.size, 3)


def test_sample_points_border_with_cached_band_is_identical() -> None:
    label = _blob((20, 22, 18), 5)
    cached = band_indices(border_band(label))
    a = sample_points(label, 500, np.random.default_rng(7), strategy="border")
    b = sample_points(label, 500, np.random.default_rng(7), strategy="border", band=cached)
    np.testing.assert_array_equal(a, b)
    empty = sample_points(np.zeros((4, 5, 6), bool), 50, np.random.default_rng(0), strategy="border")
    assert empty.shape == (50, 3) and (empty < (4, 5, 6)).all()


def test_invalid_arguments_raise_input_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown sampling strategy"):
        sample_points(np.zeros((4, 4, 4)), 10, rng, strategy="surface")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"band does not match the grid \(expected shape \(4, 4, 4\)"):
        border_points(np.zeros((4, 4, 5), bool), (4, 4, 4), 10, rng)
    with pytest.raises(InputError, match="band indices outside the grid"):
        border_points(np.array([0, 64]), (4, 4, 4), 10, rng)
    with pytest.raises(InputError, match="invalid border balance"):
        border_points(np.zeros((4, 4, 4), bool), (4, 4, 4), 10, rng, balance=1.5)
    with pytest.raises(InputError, match="invalid sampling grid"):
        uniform_points((4, 0, 4), 10, rng)
    with pytest.raises(InputError, match="odd"):
        border_band(np.zeros((4, 4, 4), bool), window=4)
