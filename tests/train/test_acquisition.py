"""The demo cohort's acquisition steps on tiny volumes: each moves image, label and affine together."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ossnet_train.acquisition import (
    Acquisition,
    AcquisitionRanges,
    contrast_curve,
    draw_acquisition,
    fov_window,
    resample_spacing,
    shift_affine,
    slice_profile_sigma,
    store,
    take_window,
    zero_background,
    zero_pad,
)

# A non-trivial voxel-to-world map: x flipped, 1 mm, an arbitrary origin.
AFFINE = np.array([[-1.0, 0, 0, 40.0], [0, 1.0, 0, -20.0], [0, 0, 1.0, 7.0], [0, 0, 0, 1]])


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _grid(shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3).astype(float)


def test_draws_are_deterministic_and_cover_every_choice() -> None:
    assert draw_acquisition(11) == draw_acquisition(11)
    assert draw_acquisition(11) != draw_acquisition(12)
    r = AcquisitionRanges()
    draws = [draw_acquisition(s) for s in range(400)]
    zero = np.mean([d.background == "zero" for d in draws])
    assert 0.5 < zero < 0.7  # zero_background_p = 0.6
    assert {d.fov for d in draws} == {"full", "crop"}
    assert {d.storage for d in draws} == {"uint8", "int16_slope", "int16", "float32"}
    spacings = {d.spacing_mm for d in draws}
    assert spacings == {(1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (3.0, 1.0, 1.0), (1.0, 3.0, 1.0), (1.0, 1.0, 3.0)}
    assert 0.0 < np.mean([any(d.zero_pad_mm) for d in draws]) < 0.5
    gains = np.array([d.gain for d in draws])
    assert r.gain_range[0] <= gains.min() and gains.max() <= r.gain_range[1] and gains.max() / gains.min() > 1e4
    bias = np.array([d.bias_log_rms for d in draws])
    assert bias.min() < 0.02 and bias.max() > 0.3  # some near 0, some twice the version-1 cohort's 0.15
    gammas = np.array([d.gamma for d in draws])
    assert r.gamma_range[0] <= gammas.min() < 0.7 and 1.45 < gammas.max() <= r.gamma_range[1]
    noise = np.array([d.noise_fraction for d in draws])
    assert r.noise_range[0] <= noise.min() < 0.01 and 0.06 < noise.max() <= r.noise_range[1]
    margins = np.array([d.crop_margin_mm for d in draws])
    assert margins.min() >= 0.0 and margins.max() <= 15.0 and margins.std() > 3.0


def test_full_field_of_view_moves_about_the_head_and_keeps_it_inside() -> None:
    mask = np.zeros((40, 30, 20), dtype=bool)
    mask[10:25, 3:20, 0:12] = True  # touches the low z edge, like the template's brain stem
    starts = set()
    for u in (0.0, 0.3, 1.0):
        acq = Acquisition(fov="full", placement=(u, u, u), max_placement_mm=12.0)
        lo, hi = fov_window(mask, acq)
        assert tuple(h - low for low, h in zip(lo, hi, strict=True)) == mask.shape
        for a, (b0, b1) in enumerate(((10, 25), (3, 20), (0, 12))):
            assert lo[a] <= b0 and b1 <= hi[a], "the head stays inside the field of view"
            assert abs(lo[a]) <= 12
        starts.add(lo)
    # u = 0: the lowest start that keeps the head inside (at most 12 mm); u = 1: the highest.
    assert min(starts) == (-12, -10, -8) and max(starts) == (10, 3, 0)


def test_crop_is_the_bounding_box_plus_the_margins() -> None:
    mask = np.zeros((40, 30, 20), dtype=bool)
    mask[10:25, 3:20, 0:12] = True
    acq = Acquisition(fov="crop", crop_margin_mm=(2.4, 0.0, 5.0, 14.6, 1.0, 0.2))
    assert fov_window(mask, acq) == ((8, 3, -5), (40, 21, 12))


def test_window_and_its_affine_keep_every_voxel_at_its_world_position() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((9, 8, 7)).astype(np.float32) + 1.0
    lo, hi = (-2, 3, 1), (6, 11, 9)
    window = take_window(volume, lo, hi)
    affine = shift_affine(AFFINE, lo)
    assert window.shape == (8, 8, 8)
    for ijk in _grid(window.shape).astype(int):
        src = ijk + np.array(lo)
        np.testing.assert_allclose(_world(affine, ijk.astype(float)), _world(AFFINE, src.astype(float)))
        inside = all(0 <= s < n for s, n in zip(src, volume.shape, strict=True))
        assert window[tuple(ijk)] == (volume[tuple(src)] if inside else 0.0)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (1.0, 1.0, 3.0), (3.0, 1.0, 1.0)])
def test_resampling_moves_image_label_and_affine_together(spacing: tuple[float, float, float]) -> None:
    shape = (13, 10, 16)
    ijk = _grid(shape)
    # A linear function of the world position: trilinear interpolation reproduces it exactly.
    coef = np.array([0.3, -0.2, 0.5])
    image = (_world(AFFINE, ijk) @ coef + 50.0).reshape(shape).astype(np.float32)
    label = (np.random.default_rng(1).random(shape) < 0.3).astype(np.uint8)
    new_image, (new_label,), affine = resample_spacing(image, [label], AFFINE, spacing)
    expected_shape = tuple(math.floor((n - 1) / s) + 1 for n, s in zip(shape, spacing, strict=True))
    assert new_image.shape == new_label.shape == expected_shape
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), spacing)
    new_ijk = _grid(expected_shape)
    world = _world(affine, new_ijk)
    np.testing.assert_allclose(new_image.reshape(-1), world @ coef + 50.0, atol=1e-4)
    # The label is the input voxel nearest to each new voxel's world position (a tie, half-way
    # between two voxels at 1.5 mm, goes to the higher index).
    src = np.floor(_world(np.linalg.inv(AFFINE), world) + 0.5 + 1e-6).astype(int)
    assert np.all(np.abs(_world(AFFINE, src.astype(float)) - world) <= 0.5 + 1e-9)
    np.testing.assert_array_equal(new_label.reshape(-1), label[tuple(src.T)])


def test_zero_background_and_zero_pad() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((6, 5, 4)).astype(np.float32) + 0.5
    mask = np.zeros(image.shape, dtype=bool)
    mask[1:4, 1:4, 1:3] = True
    before = image.copy()
    zero_background(image, mask)
    assert np.all(image[~mask] == 0.0)
    np.testing.assert_array_equal(image[mask], before[mask])
    label = mask.astype(np.uint8)
    (padded, padded_label), affine = zero_pad([image, label], AFFINE, (2.0, 0.0, 1.4, 0.6, 3.0, 0.0))
    assert padded.shape == (6 + 3, 5 + 3, 4 + 1)
    offset = np.array([2, 0, 1])
    for ijk in _grid(image.shape).astype(int):
        np.testing.assert_allclose(_world(affine, (ijk + offset).astype(float)), _world(AFFINE, ijk.astype(float)))
    np.testing.assert_array_equal(padded[2:8, 0:5, 1:5], image)
    np.testing.assert_array_equal(padded_label[2:8, 0:5, 1:5], label)
    assert padded.sum() == image.sum() and padded_label.sum() == label.sum()


@pytest.mark.parametrize("storage", ["uint8", "int16_slope", "int16", "float32"])
def test_each_storage_keeps_zero_and_the_image_up_to_one_scale(storage: str) -> None:
    rng = np.random.default_rng(3)
    image = (rng.random((10, 10, 10)) * 0.9 + 0.1).astype(np.float32)
    image[:3] = 0.0
    acq = Acquisition(storage=storage, gain=0.02, int16_max=700.0, int16_levels=32767)
    stored, slope = store(image, acq)
    assert stored.dtype == {"uint8": np.uint8, "int16_slope": np.int16, "int16": np.int16,
                            "float32": np.float32}[storage]
    read = stored.astype(np.float64) * slope
    assert np.all(read[:3] == 0.0)
    scale = read.max() / float(image.max())
    step = {"uint8": 1.0, "int16_slope": slope, "int16": 1.0, "float32": 0.0}[storage]
    np.testing.assert_allclose(read, image * scale, atol=0.5 * step + 1e-6 * read.max())
    expected_max = {"uint8": 255, "int16_slope": 32767, "int16": 700, "float32": None}[storage]
    if expected_max is not None:
        assert int(stored.max()) == expected_max
    else:
        assert scale == pytest.approx(0.02, rel=1e-6)
    if storage == "int16_slope":
        assert scale == pytest.approx(0.02, rel=1e-4)


def test_contrast_curve_and_slice_profile() -> None:
    t = np.linspace(0.0, 1.0, 301, dtype=np.float32)
    out = contrast_curve(t, (0.28, 0.71))
    assert out[0] == 0.0 and out[-1] == pytest.approx(1.0)
    assert np.all(np.diff(out) > 0), "monotone: intensities keep their order"
    assert out[100] == pytest.approx(0.28, abs=1e-3) and out[200] == pytest.approx(0.71, abs=1e-3)
    assert slice_profile_sigma(1.0) == 0.0
    assert slice_profile_sigma(3.0) == pytest.approx(math.sqrt(8.0 / 12.0))
    with pytest.raises(ValueError, match="monotone"):
        dataclasses.replace(Acquisition(), contrast_knots=(0.7, 0.3))
