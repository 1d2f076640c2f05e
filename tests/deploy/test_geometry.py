"""Orientation, resampling and placement (ossnet_deploy/geometry.py), on tiny synthetic volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ossnet_deploy.errors import InputError
from ossnet_deploy.geometry import (
    Placement,
    canonical_orientation,
    canonical_voxel_sizes,
    centred_offset,
    foreground_bbox,
    from_canonical,
    labels_to_grid,
    labels_to_input,
    resample_linear,
    resample_nearest,
    spacing_resampled_shape,
    to_canonical,
    validate_affine,
)

RNG_SEED = 1234


def _ras_case(shape: tuple[int, int, int] = (20, 24, 16), spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """A random 2-channel RAS volume and its affine (origin away from 0)."""
    rng = np.random.default_rng(RNG_SEED)
    data = rng.standard_normal((2, *shape)).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    return data, affine


def _restore(data: np.ndarray, affine: np.ndarray, flips: tuple[int, ...], perm: tuple[int, int, int]):
    """The same image stored differently: flip stored axes `flips`, then permute spatial axes to `perm`.

    Returns (data (C, ...) as stored, affine) describing the same voxels in world space.
    """
    n = data.shape[1:]
    out = data
    aff = affine.copy()
    for a in flips:
        out = np.flip(out, axis=1 + a)
        # voxel index v on a flipped axis is old index n-1-v
        flip = np.eye(4)
        flip[a, a] = -1.0
        flip[a, 3] = n[a] - 1
        aff = aff @ flip
    out = np.ascontiguousarray(np.transpose(out, (0, *(1 + p for p in perm))))
    # new axis k is old axis perm[k]
    perm_mat = np.zeros((4, 4))
    for k, p in enumerate(perm):
        perm_mat[p, k] = 1.0
    perm_mat[3, 3] = 1.0
    return out, aff @ perm_mat


STORAGES = {
    "ras": ((), (0, 1, 2)),
    "lps": ((0, 1), (0, 1, 2)),
    "permuted": ((2,), (2, 0, 1)),
    "lps_permuted": ((0, 1), (1, 2, 0)),
}


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("name", sorted(STORAGES))
def test_canonical_array_is_identical_for_every_storage(name: str) -> None:
    data, affine = _ras_case()
    stored, stored_aff = _restore(data, affine, *STORAGES[name])
    ornt = canonical_orientation(stored_aff)
    canon = to_canonical(stored, ornt)
    np.testing.assert_array_equal(canon, data)
    # matches nibabel's own canonicalisation (channels last in a 4D NIfTI)
    img = nib.Nifti1Image(np.moveaxis(stored, 0, -1), stored_aff)
    nib_canon = nib.as_closest_canonical(img)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(nib_canon.dataobj), -1, 0), canon)
    # the inverse is exact and works on 3D label volumes too
    np.testing.assert_array_equal(from_canonical(canon, ornt), stored)
    np.testing.assert_array_equal(from_canonical(to_canonical(stored[0], ornt), ornt), stored[0])


def test_to_canonical_is_a_view() -> None:
    data, affine = _ras_case()
    stored, stored_aff = _restore(data, affine, *STORAGES["lps_permuted"])
    assert np.shares_memory(to_canonical(stored, canonical_orientation(stored_aff)), stored)


def test_canonical_voxel_sizes_follow_the_axes() -> None:
    data, affine = _ras_case(spacing=(1.5, 2.0, 3.0))
    _, stored_aff = _restore(data, affine, *STORAGES["lps_permuted"])
    ornt = canonical_orientation(stored_aff)
    assert canonical_voxel_sizes(stored_aff, ornt) == pytest.approx((1.5, 2.0, 3.0), abs=1e-12)


@pytest.mark.parametrize(
    ("affine", "match"),
    [
        (np.eye(3), "wrong shape"),
        (np.diag([1.0, np.nan, 1.0, 1.0]), "non-finite"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
    ],
)
def test_bad_affine_is_an_input_error(affine: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=rf"scan\.nii\.gz: .*{match}"):
        validate_affine(affine, source="scan.nii.gz")
    with pytest.raises(InputError, match=match):
        canonical_orientation(affine, source="scan.nii.gz")


# ----------------------------------------------------------------------------- spacing


def test_spacing_within_tolerance_keeps_the_shape() -> None:
    assert spacing_resampled_shape((20, 24, 16), (1.04, 0.96, 1.0), (1.0, 1.0, 1.0), 0.05) == (20, 24, 16)


def test_spacing_outside_tolerance_resamples_every_axis() -> None:
    # 1.06 mm is 6 % off: the whole volume goes to 1 mm (rounded extents)
    assert spacing_resampled_shape((20, 24, 16), (1.06, 1.0, 2.5), (1.0, 1.0, 1.0), 0.05) == (21, 24, 40)


# ----------------------------------------------------------------------------- resampling


def test_resample_linear_identity_when_shapes_match() -> None:
    data, _ = _ras_case()
    out = resample_linear(data, data.shape[1:])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)
    assert not np.shares_memory(out, data)


def test_resample_linear_reproduces_a_linear_ramp() -> None:
    # f = a*i + b*j + c*k is reproduced exactly (up to float32) where no edge clamping happens
    shape_in, shape_out = (12, 10, 8), (7, 15, 11)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_in), indexing="ij")
    vol = (0.5 * i - 0.25 * j + 2.0 * k)[None].astype(np.float32)
    out = resample_linear(vol, shape_out)[0]
    pos = [(np.arange(m) + 0.5) * n / m - 0.5 for n, m in zip(shape_in, shape_out, strict=True)]
    pos = [np.clip(p, 0, n - 1) for p, n in zip(pos, shape_in, strict=True)]
    pi, pj, pk = np.meshgrid(*pos, indexing="ij")
    np.testing.assert_allclose(out, 0.5 * pi - 0.25 * pj + 2.0 * pk, atol=2e-5)


def test_resample_linear_preserves_constants_and_writes_into_out() -> None:
    vol = np.full((2, 5, 6, 7), 3.25, dtype=np.float32)
    out = np.zeros((2, 9, 4, 13), dtype=np.float32)
    result = resample_linear(vol, (9, 4, 13), out=out)
    assert result is out
    np.testing.assert_allclose(out, 3.25, atol=1e-6)


def test_resample_linear_accepts_integer_input() -> None:
    vol = np.arange(2 * 4 * 4 * 4, dtype=np.int16).reshape(2, 4, 4, 4)
    np.testing.assert_allclose(resample_linear(vol, (8, 8, 8)), resample_linear(vol.astype(np.float32), (8, 8, 8)))


def test_resample_nearest_index_rule_and_dtype() -> None:
    labels = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    out = resample_nearest(labels, (3, 7, 4))
    assert out.dtype == np.uint8
    assert out.shape == (3, 7, 4)
    for o in range(3):
        for p in range(7):
            # floor((o + 0.5) * n_in / n_out), written as float math for an independent check
            np.testing.assert_array_equal(out[o, p], labels[int((o + 0.5) * 5 / 3), int((p + 0.5) * 3 / 7)])


def test_resample_nearest_resolves_ties_exactly() -> None:
    # output 18 of 37 from 6 inputs has its centre exactly on an input edge: (18 + 0.5) * 6 / 37 = 3
    # (torch's float32 scale rounds this down to input 2; ours is exact integer arithmetic)
    labels = np.arange(6, dtype=np.uint8).reshape(6, 1, 1)
    assert resample_nearest(labels, (37, 1, 1))[18, 0, 0] == 3


def test_resample_nearest_upsample_then_back_is_identity() -> None:
    rng = np.random.default_rng(RNG_SEED)
    labels = rng.integers(0, 4, size=(9, 7, 5)).astype(np.uint8)
    for up in [(9, 7, 5), (13, 7, 11), (18, 15, 6), (27, 8, 5)]:
        np.testing.assert_array_equal(resample_nearest(resample_nearest(labels, up), labels.shape), labels)


# ----------------------------------------------------------------------------- placement


def test_foreground_bbox() -> None:
    mask = np.zeros((6, 7, 8), dtype=bool)
    assert foreground_bbox(mask) is None
    mask[1, 2, 3] = mask[4, 5, 3] = True
    assert foreground_bbox(mask) == ((1, 2, 3), (5, 6, 4))


@pytest.mark.parametrize(("lo", "hi", "size"), [(3, 9, 16), (3, 10, 16), (0, 16, 16), (5, 30, 40)])
def test_centred_offset_puts_the_box_centre_at_the_grid_centre(lo: int, hi: int, size: int) -> None:
    (off, _, _), (shift, _, _) = centred_offset((lo, 0, 0), (hi, 1, 1), (size, 4, 4), (0, 0, 0))
    assert shift == 0
    box_centre = (lo + hi) / 2 + off
    # exact, or half a voxel towards index 0 when size - lo - hi is odd
    assert size / 2 - box_centre in (0.0, 0.5)


def test_centred_offset_shift_is_clipped_to_keep_the_box_inside() -> None:
    # box [2, 12) in a 14 grid: centred offset 0; the box may move by -2..+2 only
    off, applied = centred_offset((2, 2, 2), (12, 12, 12), (14, 14, 14), (1, 5, -5))
    assert applied == (1, 2, -2)
    assert off == (1, 2, -2)


def _placement(stored=(10, 12, 8), canonical=(10, 12, 8), resampled=(10, 12, 8), offset=(3, -2, 4), grid=(16, 8, 16)):
    return Placement(
        stored_shape=stored,
        ornt=((0, 1), (1, 1), (2, 1)),
        canonical_shape=canonical,
        canonical_spacing_mm=(1.0, 1.0, 1.0),
        resampled_shape=resampled,
        offset=offset,
        shift=(0, 0, 0),
        grid_shape=grid,
    )


def test_placement_region_is_clipped() -> None:
    p = _placement()
    assert p.region == (slice(3, 13), slice(0, 8), slice(4, 12))
    assert p.source_region == (slice(0, 10), slice(2, 10), slice(0, 8))
    assert p.zoom == (1.0, 1.0, 1.0)


def test_labels_round_trip_without_resampling_is_identity_inside_the_grid() -> None:
    rng = np.random.default_rng(RNG_SEED)
    p = _placement()
    label = rng.integers(0, 3, size=p.stored_shape).astype(np.uint8)
    grid = labels_to_grid(label, p)
    assert grid.dtype == np.uint8 and grid.shape == p.grid_shape
    back = labels_to_input(grid, p)
    # axis j is cropped by the grid (12 voxels into 8): those voxels come back as 0
    expected = label.copy()
    expected[:, :2] = 0
    expected[:, 10:] = 0
    np.testing.assert_array_equal(back, expected)
    # grid voxels outside the input are 0
    assert not grid[:3].any() and not grid[13:].any()


def test_labels_round_trip_with_upsampling_is_identity() -> None:
    rng = np.random.default_rng(RNG_SEED)
    p = _placement(resampled=(13, 12, 16), offset=(1, -2, 0), grid=(16, 8, 16))
    label = rng.integers(0, 3, size=p.stored_shape).astype(np.uint8)
    back = labels_to_input(labels_to_grid(label, p), p)
    # j is cropped to resampled voxels 2..9, i.e. stored j 2..9 (zoom 1 on j)
    np.testing.assert_array_equal(back[:, 2:10], label[:, 2:10])
    assert not back[:, :2].any() and not back[:, 10:].any()


def test_labels_to_input_rejects_the_wrong_grid_shape() -> None:
    with pytest.raises(InputError, match=r"seg\.nii\.gz: the grid segmentation has the wrong shape"):
        labels_to_input(np.zeros((4, 4, 4), np.uint8), _placement(), source="seg.nii.gz")


def test_labels_to_grid_rejects_non_label_values() -> None:
    label = np.full((10, 12, 8), 0.5, dtype=np.float32)
    with pytest.raises(InputError, match="not labels"):
        labels_to_grid(label, _placement())
