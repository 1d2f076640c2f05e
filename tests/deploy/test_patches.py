"""Patches and decoder coordinates (ossnet_deploy/patches.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ossnet_deploy.patches import extract_patches, normalise_coords, patch_windows

SHAPE = (20, 24, 16)


@pytest.fixture
def grid() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    padded = rng.standard_normal((2, *SHAPE)).astype(np.float32)
    pads = np.array([-1.5, 0.75], dtype=np.float32)
    return padded, pads


def _reference_window(padded: np.ndarray, pads: np.ndarray, centre, lo: int, hi: int) -> np.ndarray:
    """(C, w, w, w) window centre+lo .. centre+hi built with np.pad (an independent route)."""
    margin = 8
    ext = np.stack([np.pad(padded[c], margin, constant_values=pads[c]) for c in range(padded.shape[0])])
    i, j, k = (int(x) + margin for x in centre)
    return ext[:, i + lo : i + hi + 1, j + lo : j + hi + 1, k + lo : k + hi + 1]


def test_interior_small_patch_is_the_volume_slice(grid) -> None:
    padded, pads = grid
    idx = np.array([[10, 12, 8], [3, 3, 3], [16, 20, 12]], dtype=np.int64)
    patches = extract_patches(padded, pads, idx, large=False)
    assert patches.shape == (3, 2, 7, 7, 7) and patches.dtype == np.float32
    for n, (i, j, k) in enumerate(idx):
        np.testing.assert_array_equal(patches[n], padded[:, i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4])


def test_border_patch_holds_the_pad_value(grid) -> None:
    padded, pads = grid
    idx = np.array([[0, 0, 0], [19, 23, 15], [0, 12, 15]], dtype=np.int64)
    patches = extract_patches(padded, pads, idx, large=False)
    # voxel (0,0,0) patch: the first 3 planes of each axis are outside the grid
    for c in range(2):
        assert np.all(patches[0, c, :3] == pads[c])
        assert np.all(patches[0, c, :, :3] == pads[c])
        assert np.all(patches[0, c, :, :, :3] == pads[c])
        np.testing.assert_array_equal(patches[0, c, 3:, 3:, 3:], padded[c, :4, :4, :4])
        assert np.all(patches[1, c, 4:] == pads[c])
    for n, centre in enumerate(idx):
        np.testing.assert_array_equal(patches[n], _reference_window(padded, pads, centre, -3, 3))


def test_large_patch_is_the_pooled_14_window(grid) -> None:
    padded, pads = grid
    idx = np.array([[10, 12, 8], [0, 0, 0], [19, 23, 15], [5, 1, 14]], dtype=np.int64)
    patches = extract_patches(padded, pads, idx, large=True)
    assert patches.shape == (4, 4, 7, 7, 7)
    np.testing.assert_array_equal(patches[:, :2], extract_patches(padded, pads, idx, large=False))
    for n, centre in enumerate(idx):
        window = _reference_window(padded, pads, centre, -7, 6).astype(np.float64)
        # pooling as the sum of the 8 strided sub-lattices, a different route than a reshape
        pooled = sum(window[:, a::2, b::2, c::2] for a in (0, 1) for b in (0, 1) for c in (0, 1)) / 8.0
        np.testing.assert_allclose(patches[n, 2:], pooled, atol=1e-6)


def test_many_queries_match_one_by_one_and_fill_out(grid) -> None:
    # more queries than one gather block, some near borders; also a non-contiguous grid
    padded, pads = grid
    rng = np.random.default_rng(3)
    idx = np.stack([rng.integers(0, s, 2500) for s in SHAPE], axis=1)
    out = np.empty((2500, 4, 7, 7, 7), dtype=np.float32)
    result = extract_patches(padded, pads, idx, large=True, out=out)
    assert result is out
    for n in (0, 1023, 1024, 2499):
        np.testing.assert_array_equal(out[n], extract_patches(padded, pads, idx[n : n + 1], large=True)[0])
    fortran = np.asfortranarray(padded)
    np.testing.assert_array_equal(extract_patches(fortran, pads, idx[:50], large=True), out[:50])


@pytest.mark.parametrize("shape", [SHAPE, (7, 30, 7), (6, 9, 9)])
def test_every_query_matches_the_padded_reference(shape: tuple[int, int, int]) -> None:
    # The fast path reads whole windows from a strided view and redoes border windows; a side
    # of exactly 7 has one interior centre per axis, a side below 7 none (the flat-index path).
    rng = np.random.default_rng(11)
    padded = rng.standard_normal((2, *shape)).astype(np.float32)
    pads = np.array([3.25, -0.5], dtype=np.float32)
    idx = np.stack([rng.integers(0, s, 1500) for s in shape], axis=1)
    patches = extract_patches(padded, pads, idx, large=False)
    for n, centre in enumerate(idx):
        np.testing.assert_array_equal(patches[n], _reference_window(padded, pads, centre, -3, 3))


def test_patch_windows() -> None:
    np.testing.assert_array_equal(patch_windows(7, large=False), np.arange(-3, 4))
    np.testing.assert_array_equal(patch_windows(7, large=True), np.arange(-7, 7))
    with pytest.raises(ValueError, match="odd"):
        patch_windows(6, large=False)


def test_extract_patches_rejects_bad_arguments(grid) -> None:
    padded, pads = grid
    with pytest.raises(ValueError, match=r"\(N, 3\) integer"):
        extract_patches(padded, pads, np.zeros((4, 3), dtype=np.float32), large=False)
    with pytest.raises(ValueError, match="pad_values"):
        extract_patches(padded, pads[:1], np.zeros((4, 3), dtype=np.int64), large=False)
    with pytest.raises(ValueError, match="out must be"):
        extract_patches(padded, pads, np.zeros((4, 3), dtype=np.int64), large=True, out=np.empty((4, 2, 7, 7, 7), np.float32))


def test_coordinate_fixed_points() -> None:
    shape = (20, 24, 16)
    idx = np.array([[0, 0, 0], [19, 23, 15], [10, 12, 8]], dtype=np.int64)
    c = normalise_coords(idx, shape)
    assert c.dtype == np.float32 and c.shape == (3, 3)
    sides = np.array(shape, dtype=np.float64)
    np.testing.assert_allclose(c[0], -1 + 1 / sides, rtol=0, atol=1e-7)
    np.testing.assert_allclose(c[1], 1 - 1 / sides, rtol=0, atol=1e-7)
    # the voxel just past the centre of an even axis sits at +1/shape
    np.testing.assert_allclose(c[2], 1 / sides, rtol=0, atol=1e-7)
    # symmetric: idx and shape-1-idx mirror each other
    np.testing.assert_array_equal(normalise_coords(sides.astype(np.int64) - 1 - idx, shape), -c)


def test_coordinates_reject_float_indices() -> None:
    with pytest.raises(ValueError, match="integer"):
        normalise_coords(np.zeros((2, 3), dtype=np.float32), (4, 4, 4))
