"""The robustness benchmark's file-level conditions (benchmarks/robustness_transforms.py) on a tiny phantom.

Each condition must keep image, label and brain mask on one grid with an affine that follows the
grid (a voxel keeps its world position), leave the brain alone where it only changes the
background or the field of view, and store values that read back as written. numpy + nibabel
only: no nilearn, no generated subjects, no model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import robustness_transforms as rt

SHAPE = (30, 34, 26)
#: oblique-free but not trivial: 1.2 x 1 x 1.5 mm, first axis flipped (L->R stored R->L), shifted origin.
AFFINE = np.array([[-1.2, 0.0, 0.0, 40.0], [0.0, 1.0, 0.0, -20.0], [0.0, 0.0, 1.5, -15.0], [0.0, 0.0, 0.0, 1.0]])


def _radius_mm() -> np.ndarray:
    """World distance (mm) of every voxel from the phantom's centre."""
    world = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1) @ AFFINE[:3, :3].T
    return np.sqrt(((world - AFFINE[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2)) ** 2).sum(-1))


def _phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image values, WM label, true brain incl. ventricle, ventricle): an ellipsoid brain in noise."""
    rng = np.random.default_rng(seed)
    radius = _radius_mm()
    brain = radius < 12.0
    wm = radius < 7.2
    ventricle = radius < 2.6
    wm &= ~ventricle
    values = np.where(brain, 0.55, 0.0) + np.where(wm, 0.4, 0.0)
    values = np.where(ventricle, 0.05, values)
    values = np.abs(values + rng.normal(0.0, 0.02, SHAPE)).astype(np.float32)
    values[1, 1, 1] = 1.0  # a lone bright speck in the background
    return values, wm.astype(np.uint8), brain, ventricle


def _case(seed: int = 0) -> rt.Case:
    values, label, _, _ = _phantom(seed)
    image = rt.store_int16_slope(values, AFFINE)  # the generator's storage
    brain = rt.brain_mask(image.get_fdata(dtype=np.float32), AFFINE)
    return rt.Case(image, label, brain, seed)


def _roundtrip(image: nib.Nifti1Image, tmp_path: Path, name: str) -> nib.Nifti1Image:
    path = tmp_path / name
    nib.save(image, path)
    return nib.load(path)


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return index @ affine[:3, :3].T + affine[:3, 3]


# ------------------------------------------------------------------------------ brain mask


def test_brain_mask_holds_the_brain_fills_the_ventricle_and_drops_the_speck() -> None:
    values, label, brain, ventricle = _phantom()
    mask = rt.brain_mask(values, AFFINE)
    assert mask[label > 0].all()
    assert mask[ventricle].all()
    assert not mask[1, 1, 1]
    # It follows the brain's edge (a sphere of 12 mm radius): nothing of the brain left out, and
    # the rim the 2 mm smoothing adds stays within 4 mm of it.
    assert not (brain & ~mask).any()
    assert _radius_mm()[mask].max() < 12.0 + 4.0


def test_largest_component_and_fill_holes() -> None:
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[5:8, 5:8, 5:7] = True  # 18 voxels
    mask[3, 3, 4] = False
    assert rt.largest_component(mask).sum() == 27
    assert rt.largest_component(np.zeros((3, 3, 3), dtype=bool)).sum() == 0
    shell = np.zeros((7, 7, 7), dtype=bool)
    shell[1:6, 1:6, 1:6] = True
    shell[2:5, 2:5, 2:5] = False
    filled = rt.fill_holes(shell)
    assert filled[1:6, 1:6, 1:6].all() and filled.sum() == 125
    open_shell = shell.copy()
    open_shell[3, 3, 1] = False  # a channel to the outside: not a hole any more
    assert not rt.fill_holes(open_shell)[3, 3, 3]


# ---------------------------------------------------------------------------- conditions


@pytest.mark.parametrize("condition", rt.CONDITIONS)
def test_every_condition_keeps_one_grid(condition: str) -> None:
    case = _case()
    out = rt.transform(case, condition)
    assert out.label.shape == out.brain.shape == out.image.shape
    assert set(np.unique(out.label)) <= {0, 1}
    assert out.brain.dtype == bool
    assert np.allclose(out.image.affine, out.affine)
    assert np.isfinite(out.values()).all()
    # The label's centre of mass stays where it was (within a voxel of the coarsest grid).
    before = _world(case.affine, np.argwhere(case.label).mean(axis=0))
    after = _world(out.affine, np.argwhere(out.label).mean(axis=0))
    assert np.abs(after - before).max() < rt.voxel_sizes(out.affine).max()


def test_unknown_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown condition"):
        rt.transform(_case(), "mirrored")


def test_zero_background_leaves_the_brain_untouched(tmp_path: Path) -> None:
    case = _case()
    out = _roundtrip(rt.zero_background(case).image, tmp_path, "zero.nii.gz")
    before, after = case.values(), out.get_fdata(dtype=np.float32)
    assert np.array_equal(after[case.brain], before[case.brain])
    assert (after[~case.brain] == 0).all()
    assert (np.asanyarray(out.dataobj.get_unscaled())[~case.brain] == 0).all()
    assert out.header.get_data_dtype() == case.image.get_data_dtype()
    assert np.allclose(out.affine, case.affine)


def test_chained_conditions_keep_the_real_values(tmp_path: Path) -> None:
    """cropped_zero is crop(zero_background(...)) on an image made in memory: the header's scaling
    must survive the chain, so the file reads back the generated values inside the brain."""
    case = _case()
    out = rt.transform(case, "cropped_zero")
    path = tmp_path / "cz.nii.gz"
    nib.save(out.image, path)
    back = nib.load(path)
    assert back.get_data_dtype() == np.int16
    assert float(back.dataobj.slope) == pytest.approx(float(case.image.header.get_slope_inter()[0]))
    values = back.get_fdata(dtype=np.float32)
    world = _world(out.affine, np.argwhere(out.brain).astype(float))
    source = np.rint((np.c_[world, np.ones(len(world))] @ np.linalg.inv(AFFINE).T)[:, :3]).astype(int)
    expected = case.values()[source[:, 0], source[:, 1], source[:, 2]]
    assert np.array_equal(values[out.brain], expected)
    assert np.array_equal(out.values(), values)
    assert np.abs(expected - _phantom()[0][source[:, 0], source[:, 1], source[:, 2]]).max() < 1e-3


def test_crop_keeps_world_positions_and_values() -> None:
    case = _case()
    out = rt.crop(case)
    lo, hi = rt.bounding_box(case.brain)
    margin = np.ceil(rt.CROP_MARGIN_MM / rt.voxel_sizes(AFFINE)).astype(int)
    expected = np.minimum(np.asarray(hi) + margin, SHAPE) - np.maximum(np.asarray(lo) - margin, 0)
    assert out.label.shape == tuple(expected)
    assert out.label.sum() == case.label.sum() and out.brain.sum() == case.brain.sum()
    # Every labelled voxel keeps its world position and its value.
    world_before = _world(case.affine, np.argwhere(case.label).astype(float))
    world_after = _world(out.affine, np.argwhere(out.label).astype(float))
    assert np.allclose(world_before, world_after)
    assert np.array_equal(case.values()[case.label > 0], out.values()[out.label > 0])
    both = rt.transform(case, "cropped_zero")
    assert np.allclose(both.affine, out.affine)
    assert (both.values()[~both.brain] == 0).all()


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (1.0, 1.0, 3.0), (0.6, 2.0, 1.5)])
def test_resampling_keeps_the_field_of_view_and_world_positions(spacing: tuple[float, float, float]) -> None:
    # A linear ramp in voxel units: trilinear interpolation reproduces it exactly inside the grid.
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij"), axis=-1)
    ramp = (ijk @ np.array([0.5, -0.25, 2.0]) + 3.0).astype(np.float32)
    out, affine = rt.resample_to_spacing(ramp, AFFINE, spacing, order=1)
    assert np.allclose(rt.voxel_sizes(affine), spacing)
    # The same field of view (voxel edges), to within half an output voxel per side.
    fov_in = np.asarray(SHAPE) * rt.voxel_sizes(AFFINE)
    fov_out = np.asarray(out.shape) * np.asarray(spacing)
    assert np.all(np.abs(fov_out - fov_in) <= np.asarray(spacing) / 2 + 1e-9)
    # Output voxel j sits at input position p(j); the affine maps both to the same world point.
    jkl = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in out.shape], indexing="ij"), axis=-1)
    ratio = np.asarray(spacing) / rt.voxel_sizes(AFFINE)
    pos = (jkl + 0.5) * ratio - 0.5
    assert np.allclose(_world(affine, jkl.reshape(-1, 3)), _world(AFFINE, pos.reshape(-1, 3)))
    inside = np.all((pos >= 0) & (pos <= np.asarray(SHAPE) - 1), axis=-1)
    expected = pos @ np.array([0.5, -0.25, 2.0]) + 3.0
    assert np.allclose(out[inside], expected[inside], atol=1e-4)
    # Nearest neighbour: the label at j is the input's at the nearest voxel of p(j).
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[10:20, 12:22, 8:18] = 1
    near, affine_n = rt.resample_to_spacing(labels, AFFINE, spacing, order=0)
    assert near.dtype == np.uint8 and np.allclose(affine_n, affine)
    nearest = np.clip(np.floor(pos + 0.5).astype(int), 0, np.asarray(SHAPE) - 1)
    assert np.array_equal(near, labels[nearest[..., 0], nearest[..., 1], nearest[..., 2]])


def test_storage_round_trips(tmp_path: Path) -> None:
    values, _, _, _ = _phantom()
    lo, hi = float(values.min()), float(values.max())
    u8 = _roundtrip(rt.store_uint8(values, AFFINE), tmp_path, "u8.nii.gz")
    assert u8.get_data_dtype() == np.uint8
    assert u8.dataobj.slope == 1.0 and u8.dataobj.inter == 0.0  # no scaling in the header
    raw = np.asanyarray(u8.dataobj)
    assert raw.min() == 0 and raw.max() == 255
    assert np.abs(raw / 255.0 * (hi - lo) + lo - values).max() <= 0.5 / 255.0 * (hi - lo) + 1e-6

    i16 = _roundtrip(rt.store_int16_slope(values, AFFINE, full_range=True), tmp_path, "i16.nii.gz")
    assert i16.get_data_dtype() == np.int16
    slope, inter = float(i16.dataobj.slope), float(i16.dataobj.inter)
    assert slope not in (0.0, 1.0) and inter != 0.0
    assert np.abs(i16.get_fdata() - values).max() <= slope / 2 + 1e-6

    gen = _roundtrip(rt.store_int16_slope(values, AFFINE), tmp_path, "gen.nii.gz")
    assert float(gen.dataobj.inter) == 0.0 and np.asanyarray(gen.dataobj.get_unscaled()).max() == rt.INT16_LEVELS
    assert np.abs(gen.get_fdata() - values).max() <= float(gen.dataobj.slope) / 2 + 1e-6

    f32 = _roundtrip(rt.store_float32(values, AFFINE), tmp_path, "f32.nii.gz")
    assert f32.get_data_dtype() == np.float32 and np.array_equal(np.asanyarray(f32.dataobj), values)
    for img in (u8, i16, gen, f32):
        assert np.allclose(img.affine, AFFINE)


def test_strong_bias_field_is_smooth_seeded_and_of_the_stated_strength() -> None:
    case = _case()
    field = rt.bias_field(SHAPE, AFFINE, case.brain, seed=7)
    log = np.log(field.astype(np.float64))[case.brain]
    assert abs(log.mean()) < 1e-4
    assert np.sqrt(np.mean(log**2)) == pytest.approx(rt.BIAS_RMS, rel=1e-3)
    assert np.array_equal(field, rt.bias_field(SHAPE, AFFINE, case.brain, seed=7))
    assert not np.allclose(field, rt.bias_field(SHAPE, AFFINE, case.brain, seed=8))
    # Low frequency: neighbouring voxels differ by a few percent at most (wavelengths >= 120 mm).
    for axis in range(3):
        assert np.abs(np.diff(np.log(field), axis=axis)).max() < 0.1
    biased = rt.strong_bias(case)
    ratio = biased.values()[case.brain] / np.maximum(case.values()[case.brain], 1e-6)
    expected = rt.bias_field(SHAPE, AFFINE, case.brain, seed=case.seed)[case.brain]
    ok = case.values()[case.brain] > 0.3  # away from quantisation noise
    assert np.allclose(ratio[ok], expected[ok], rtol=0.02)
