"""Config, presets, intensities and prepare_volume (ossnet_deploy/preprocess.py)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from ossnet_deploy.errors import InputError
from ossnet_deploy.geometry import labels_to_grid, labels_to_input
from ossnet_deploy.patches import extract_patches
from ossnet_deploy.preprocess import (
    COORDINATE_CONVENTION,
    PREPROCESS_PRESETS,
    PreprocessConfig,
    encoder_input,
    global_pool,
    intensity_stats,
    normalise,
    padding_values,
    prepare_volume,
    preprocess_preset,
)


def _config(**overrides) -> PreprocessConfig:
    base = {
        "geometry": "fixed_spacing_pad",
        "shape": (24, 24, 16),
        "channels": ("a", "b"),
        "intensity": "zscore_foreground",
        "max_shift": 3,
    }
    base.update(overrides)
    return PreprocessConfig(**base)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def _image(shape=(20, 18, 12), centre=(9.0, 8.0, 6.0), radii=(6.0, 5.0, 4.0), seed=0):
    """2-channel image: positive noise inside an ellipsoid, exact zeros outside; and its label."""
    rng = np.random.default_rng(seed)
    label = _ellipsoid(shape, centre, radii)
    data = np.zeros((2, *shape), dtype=np.float32)
    data[0][label] = 100.0 + 10.0 * rng.random(int(label.sum()))
    data[1][label] = 5.0 + rng.random(int(label.sum()))
    return data, label.astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


# ----------------------------------------------------------------------------- config


def test_presets_follow_the_contract() -> None:
    brats, lits, demo = (preprocess_preset(n) for n in ("brats", "lits", "demo"))
    assert brats.channels == ("flair", "t1", "t1ce", "t2")
    assert (brats.geometry, brats.shape, brats.global_shape) == ("fixed_spacing_pad", (256, 256, 160), (128, 128, 80))
    assert (brats.intensity, brats.spacing_mm, brats.flip_axes) == ("zscore_foreground", (1.0, 1.0, 1.0), (0,))
    assert lits.channels == ("ct",)
    assert (lits.geometry, lits.shape, lits.global_shape) == ("fixed_shape_resample", (512,) * 3, (256,) * 3)
    assert (lits.intensity, lits.ct_window_hu, lits.background_raw) == ("ct_window", (-250.0, 250.0), -250.0)
    assert demo.channels == ("t1",)
    assert (demo.geometry, demo.shape, demo.global_shape) == ("fixed_spacing_pad", (224, 256, 192), (112, 128, 96))
    for cfg in (brats, lits, demo):
        assert cfg.patch_size == 7 and cfg.global_downsample == 2 and not cfg.large_patches
        assert cfg.coordinate_convention == COORDINATE_CONVENTION
    assert preprocess_preset("brats", large_patches=True).patch_channels() == 8
    assert brats.patch_channels() == 4 and brats.patch_channels(3) == 3
    assert set(PREPROCESS_PRESETS) == {"brats", "lits", "demo"}
    with pytest.raises(InputError, match=r"unknown preprocess preset 'nope' \(expected one of \['brats', 'demo', 'lits'\]"):
        preprocess_preset("nope")


@pytest.mark.parametrize("name", ["brats", "lits", "demo"])
def test_config_round_trips_through_json(name: str) -> None:
    cfg = preprocess_preset(name, large_patches=True)
    again = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.shape, tuple) and isinstance(again.channels, tuple)
    assert hash(again) == hash(cfg)


def test_config_from_dict_names_unknown_and_missing_keys() -> None:
    d = _config().to_dict()
    with pytest.raises(InputError, match=r"unknown keys \['colour', 'zz'\] \(expected keys among .*\)\. Fix: "):
        PreprocessConfig.from_dict({**d, "zz": 1, "colour": "red"})
    del d["channels"]
    with pytest.raises(InputError, match=r"missing required keys \['channels'\].*Fix: add the missing settings"):
        PreprocessConfig.from_dict(d)
    with pytest.raises(InputError, match=r"invalid preprocessing configuration \(expected a mapping.*found list\)"):
        PreprocessConfig.from_dict([("geometry", "fixed_spacing_pad")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("geometry", "stretch", r"geometry \(expected one of \('fixed_spacing_pad', 'fixed_shape_resample'\); found 'stretch'\)"),
        ("intensity", "minmax", r"intensity \(expected one of .*; found 'minmax'\)"),
        ("shape", (24, 24), r"shape \(expected 3 values; found \(24, 24\)\)"),
        ("shape", (24, 23, 16), r"shape \(expected three positive ints divisible by global_downsample=2; found \(24, 23, 16\)\)"),
        ("shape", (24, float("nan"), 16), r"shape \(expected a whole number; found nan\)"),
        ("shape", (24, float("inf"), 16), r"shape \(expected a whole number; found inf\)"),
        ("spacing_mm", (1.0, 0.0, 1.0), r"spacing_mm \(expected three positive sizes in mm; found \(1\.0, 0\.0, 1\.0\)\)"),
        ("spacing_mm", (1.0, float("inf"), 1.0), r"spacing_mm \(expected a finite number; found inf\)"),
        ("channels", ("a", "a"), r"channels \(expected unique non-empty names; found \('a', 'a'\)\)"),
        ("channels", "ab", r"channels \(expected a sequence; found 'ab'\)"),
        ("ct_window_hu", (10.0, -10.0), r"ct_window_hu \(expected \(lower, upper\) with lower < upper; found \(10\.0, -10\.0\)\)"),
        ("patch_size", 6, r"patch_size \(expected a positive odd int; found 6\)"),
        ("max_shift", -1, r"max_shift \(expected an int >= 0; found -1\)"),
        ("max_shift", True, r"max_shift \(expected an int; found True\)"),
        ("flip_axes", (0, 3), r"flip_axes \(expected distinct axes among 0, 1, 2; found \(0, 3\)\)"),
        ("coordinate_convention", "raw", r"coordinate_convention \(expected 'voxel_centre_minus1_plus1'; found 'raw'\)\. Fix: re-export"),
        ("large_patches", "yes", r"large_patches \(expected a bool; found 'yes'\)"),
    ],
)
def test_config_validation_names_the_bad_value(field: str, value, match: str) -> None:
    # An InputError (a ValueError, so older `except ValueError` callers keep working) in describe() form.
    with pytest.raises(InputError, match=r"^invalid preprocessing setting PreprocessConfig\." + match) as info:
        _config(**{field: value})
    assert isinstance(info.value, ValueError)
    assert ". Fix: " in str(info.value)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _config().shape = (8, 8, 8)  # type: ignore[misc]


# ----------------------------------------------------------------------------- intensities


def test_zscore_foreground_normalises_over_the_foreground_only() -> None:
    data, label = _image()
    mask = label.astype(bool)
    out = normalise(data, mask, _config())
    assert out.dtype == np.float32
    for c in range(2):
        assert abs(float(out[c][mask].mean())) < 1e-5
        assert float(out[c][mask].std()) == pytest.approx(1.0, abs=1e-5)


def test_zscore_volume_and_constant_channels() -> None:
    data, _ = _image()
    data[1] = 4.0  # constant channel: std 0 becomes 1, with a warning naming the channel
    with pytest.warns(RuntimeWarning, match=r"channel 'b' is constant over the image \(every voxel 4\), so it normalises "
                      r"to zeros \(expected varying intensities; found standard deviation 0\)"):
        out = normalise(data, None, _config(intensity="zscore_volume"))
    assert abs(float(out[0].mean())) < 1e-5 and float(out[0].std()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(out[1], 0.0)


def test_a_channel_constant_over_the_foreground_warns_and_normalises_to_zeros() -> None:
    data, label = _image()
    data[1][label.astype(bool)] = 7.0  # varies over the image (0 outside), constant over the foreground
    with pytest.warns(RuntimeWarning, match=r"^sub\.nii: channel 'b' is constant over the foreground \(every voxel 7\)"):
        prepared = prepare_volume(data, np.eye(4), _config(), source="sub.nii")
    region = prepared.placement.region
    inside = prepared.padded[1][region][label.astype(bool)]
    np.testing.assert_array_equal(inside, 0.0)  # (7 - 7) / 1: the numbers are those of before the warning
    assert prepared.stats.scale[1] == 1.0 and prepared.stats.offset[1] == 7.0


def test_a_varying_image_prepares_without_warnings() -> None:
    data, _ = _image()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_volume(data, np.eye(4), _config())


def test_ct_window_clips_and_maps_to_minus_one_one() -> None:
    cfg = _config(channels=("ct",), intensity="ct_window", ct_window_hu=(-250.0, 250.0), background_raw=-250.0)
    raw = np.array([[-1000.0, -250.0, 0.0, 125.0, 250.0, 3000.0]], dtype=np.float32)
    np.testing.assert_allclose(normalise(raw, None, cfg)[0], [-1.0, -1.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    np.testing.assert_array_equal(padding_values(intensity_stats(raw, None, cfg), cfg), [-1.0])


def test_padding_value_equals_a_normalised_background_voxel() -> None:
    data, label = _image()
    cfg = _config()
    prepared = prepare_volume(data, np.eye(4), cfg)
    stats = prepared.stats
    pads = padding_values(stats, cfg)
    np.testing.assert_array_equal(pads, prepared.pad_values)
    expected = [(0.0 - stats.offset[c]) / stats.scale[c] for c in range(2)]
    np.testing.assert_allclose(pads, expected, rtol=1e-6)
    # a raw-0 voxel inside the input region is bit-identical to the padding
    grid_label = labels_to_grid(label, prepared.placement)
    region_bg = np.zeros(cfg.shape, dtype=bool)
    region_bg[prepared.region] = True
    region_bg &= grid_label == 0
    for c in range(2):
        assert np.all(prepared.padded[c][region_bg] == pads[c])


# ----------------------------------------------------------------------------- prepare_volume


def test_prepare_volume_outputs() -> None:
    data, label = _image()
    cfg = _config()
    prepared = prepare_volume(data, np.eye(4), cfg)
    assert prepared.padded.shape == (2, 24, 24, 16) and prepared.padded.dtype == np.float32
    assert prepared.padded.flags.c_contiguous
    assert prepared.global_volume.shape == (2, 12, 12, 8) and prepared.global_volume.dtype == np.float32
    assert encoder_input(prepared).shape == (1, 2, 12, 12, 8)
    assert prepared.pad_values.shape == (2,) and prepared.pad_values.dtype == np.float32
    # the foreground box centre sits at the grid centre (or half a voxel below)
    box = np.argwhere(labels_to_grid(label, prepared.placement))
    centre = (box.min(axis=0) + box.max(axis=0) + 1) / 2.0
    assert np.all(np.isin(np.array(cfg.shape) / 2.0 - centre, (0.0, 0.5)))
    # voxels outside the region are padding; the region holds the normalised input
    outside = np.ones(cfg.shape, dtype=bool)
    outside[prepared.region] = False
    for c in range(2):
        assert np.all(prepared.padded[c][outside] == prepared.pad_values[c])
    src = prepared.placement.source_region
    ref = normalise(data, label.astype(bool), cfg)
    np.testing.assert_allclose(prepared.padded[(slice(None), *prepared.region)], ref[(slice(None), *src)], atol=1e-6)


def test_global_volume_is_exact_mean_pooling() -> None:
    data, _ = _image()
    prepared = prepare_volume(data, np.eye(4), _config())
    p = prepared.padded.astype(np.float64)
    expected = sum(p[:, a::2, b::2, c::2] for a in (0, 1) for b in (0, 1) for c in (0, 1)) / 8.0
    np.testing.assert_allclose(prepared.global_volume, expected, atol=1e-6)
    with pytest.raises(ValueError, match="not divisible"):
        global_pool(np.zeros((1, 5, 4, 4), np.float32))


def test_shift_moves_the_placement_and_is_bounded() -> None:
    data, label = _image()
    cfg = _config()
    base = prepare_volume(data, np.eye(4), cfg)
    moved = prepare_volume(data, np.eye(4), cfg, shift=(2, -1, 0))
    assert moved.placement.shift == (2, -1, 0)
    assert np.subtract(moved.placement.offset, base.placement.offset).tolist() == [2, -1, 0]
    np.testing.assert_array_equal(moved.padded, np.roll(base.padded, (2, -1), axis=(1, 2)))
    with pytest.raises(ValueError, match=r"\|shift\| <= max_shift=3"):
        prepare_volume(data, np.eye(4), cfg, shift=(4, 0, 0))
    # a shift never crops the foreground: the 8-voxel-high box fits a 10 grid with 1 spare each side
    tight = _config(shape=(24, 24, 10))
    shifted = prepare_volume(data, np.eye(4), tight, shift=(0, 0, 3))
    assert shifted.placement.shift[2] == 1
    assert labels_to_grid(label, shifted.placement).sum() == label.sum()


def test_statistics_do_not_depend_on_the_grid_crop() -> None:
    # the volume (40 voxels) is wider than the grid (24), the foreground is not
    data, _ = _image(shape=(40, 18, 12), centre=(20.0, 8.0, 6.0))
    small = prepare_volume(data, np.eye(4), _config(intensity="zscore_volume"))
    big = prepare_volume(data, np.eye(4), _config(intensity="zscore_volume", shape=(48, 24, 16)))
    assert small.placement.region[0] == slice(0, 24)
    assert small.stats == big.stats


def test_foreground_too_large_is_an_input_error_unless_downsampling() -> None:
    data, label = _image(shape=(30, 18, 12), centre=(15.0, 8.0, 6.0), radii=(14.0, 5.0, 4.0))
    cfg = _config()
    with pytest.raises(InputError, match=r"big\.nii\.gz: the foreground does not fit.*\(29, 11, 9\) voxels.*--fit downsample"):
        prepare_volume(data, np.eye(4), cfg, source="big.nii.gz")
    prepared = prepare_volume(data, np.eye(4), cfg, fit="downsample")
    p = prepared.placement
    assert p.resampled_shape[0] < 30
    zoom = p.zoom
    assert max(zoom) - min(zoom) < 0.1  # isotropic up to rounding
    grid_label = labels_to_grid(label, p)
    assert grid_label.any()
    back = labels_to_input(grid_label, p)
    assert back.shape == label.shape
    assert _dice(back, label) > 0.9
    # The same InputError Segmenter raises for a bad fit.
    with pytest.raises(InputError, match=r"unknown fit 'squash' \(expected 'error' or 'downsample'; found 'squash'\)"
                       r"\. Fix: use fit='downsample'"):
        prepare_volume(data, np.eye(4), cfg, fit="squash")


def test_empty_foreground_centres_the_whole_volume() -> None:
    data = np.zeros((2, 20, 18, 12), dtype=np.float32)
    with pytest.warns(RuntimeWarning) as record:
        prepared = prepare_volume(data, np.eye(4), _config(), source="empty.nii")
    assert [str(w.message).split(" is constant")[0] for w in record] == ["empty.nii: channel 'a'", "empty.nii: channel 'b'"]
    assert prepared.placement.offset == (2, 3, 2)
    assert np.all(prepared.padded == 0.0)


def test_image_checks_are_input_errors() -> None:
    data, _ = _image()
    cfg = _config()
    with pytest.raises(InputError, match=r"x\.nii: the image has the wrong shape.*C = 2 channel\(s\) \['a', 'b'\]"):
        prepare_volume(data[:1], np.eye(4), cfg, source="x.nii")
    bad = data.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"channel 'b' has non-finite voxels.*found 1 NaN/inf"):
        prepare_volume(bad, np.eye(4), cfg, source="x.nii")
    with pytest.raises(InputError, match="singular"):
        prepare_volume(data, np.zeros((4, 4)), cfg, source="x.nii")


def test_fixed_shape_resample_fills_the_grid() -> None:
    cfg = _config(geometry="fixed_shape_resample", channels=("ct",), intensity="ct_window", background_raw=-250.0)
    rng = np.random.default_rng(5)
    data = rng.uniform(-400.0, 400.0, size=(1, 10, 12, 5)).astype(np.float32)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    prepared = prepare_volume(data, affine, cfg)
    p = prepared.placement
    assert p.resampled_shape == cfg.shape and p.offset == (0, 0, 0)
    assert prepared.region == (slice(0, 24), slice(0, 24), slice(0, 16))
    assert prepared.padded.min() >= -1.0 and prepared.padded.max() <= 1.0
    np.testing.assert_array_equal(prepared.pad_values, [-1.0])
    label = (data[0] > 0).astype(np.uint8)
    np.testing.assert_array_equal(labels_to_input(labels_to_grid(label, p), p), label)


def _lps_anisotropic(data: np.ndarray, label: np.ndarray, spacing):
    """Store a RAS volume (voxel sizes ``spacing``, origin 0) as LPS: i and j flipped.

    Returns the stored data, label and the affine that puts every voxel at its RAS world position.
    """
    n = data.shape[1:]
    stored = np.ascontiguousarray(data[:, ::-1, ::-1, :])
    stored_label = np.ascontiguousarray(label[::-1, ::-1, :])
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (spacing[0] * (n[0] - 1), spacing[1] * (n[1] - 1), 0.0)
    return stored, stored_label, affine


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (0.8, 1.3, 1.7)])
def test_runtime_round_trip_for_an_lps_anisotropic_input(spacing) -> None:
    # Spacing (0.8, 1.3, 1.7): axis i is downsampled (lossy: about 1 boundary in 5 moves by one
    # voxel, so the object is long on i), j and k are upsampled (exact round trip).
    data, label = _image(shape=(60, 20, 12), centre=(29.5, 9.5, 5.5), radii=(26.0, 8.0, 5.0))
    stored, stored_label, affine = _lps_anisotropic(data, label, spacing)
    cfg = _config(shape=(56, 32, 24))
    prepared = prepare_volume(stored, affine, cfg)
    p = prepared.placement
    assert p.resampled_spacing_mm == pytest.approx((1.0, 1.0, 1.0), abs=0.06)
    grid_label = labels_to_grid(stored_label, p)
    # a "perfect model": the object is where the interpolated image is above half its contrast
    half_contrast = (52.5 - prepared.stats.offset[0]) / prepared.stats.scale[0]
    model_output = (prepared.padded[0] > half_contrast).astype(np.uint8)
    assert _dice(model_output, grid_label) >= 0.95
    back = labels_to_input(grid_label, p)
    assert back.shape == stored_label.shape and back.dtype == np.uint8
    assert _dice(back, stored_label) >= 0.99
    if min(spacing) >= 1.0:
        np.testing.assert_array_equal(back, stored_label)
    assert _dice(labels_to_input(model_output, p), stored_label) >= 0.95


def test_storage_order_does_not_change_the_grid_or_world_space_output() -> None:
    data, label = _image()
    cfg = _config()
    ras = prepare_volume(data, np.diag([1.0, 1.0, 1.0, 1.0]), cfg)
    stored, _, affine = _lps_anisotropic(data, label, (1.0, 1.0, 1.0))
    lps = prepare_volume(stored, affine, cfg)
    permuted = np.ascontiguousarray(np.transpose(data, (0, 3, 1, 2)))
    perm_affine = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    perm = prepare_volume(permuted, perm_affine, cfg)
    np.testing.assert_array_equal(lps.padded, ras.padded)
    np.testing.assert_array_equal(perm.padded, ras.padded)
    np.testing.assert_array_equal(lps.global_volume, ras.global_volume)
    # a grid segmentation maps back onto each input's own grid; in world space they agree
    grid_seg = labels_to_grid(label, ras.placement)
    out_ras = labels_to_input(grid_seg, ras.placement)
    out_lps = labels_to_input(grid_seg, lps.placement)
    out_perm = labels_to_input(grid_seg, perm.placement)
    world = {
        "ras": (out_ras, np.eye(4)),
        "lps": (out_lps, affine),
        "perm": (out_perm, perm_affine),
    }
    points = {}
    for name, (seg, aff) in world.items():
        vox = np.argwhere(seg > 0)
        xyz = vox @ aff[:3, :3].T + aff[:3, 3]
        points[name] = set(map(tuple, np.round(xyz, 6)))
    assert points["ras"] == points["lps"] == points["perm"]
    np.testing.assert_array_equal(out_ras, label)


def test_prepared_patches_at_the_region_border_see_padding() -> None:
    data, _ = _image()
    prepared = prepare_volume(data, np.eye(4), _config())
    idx = np.array([[0, 0, 0]], dtype=np.int64)
    patch = extract_patches(prepared.padded, prepared.pad_values, idx, large=False)
    for c in range(2):
        assert np.all(patch[0, c] == prepared.pad_values[c])
