"""Augmentation: flips move image and label together; gamma, brightness and noise touch only the image."""

from __future__ import annotations

import numpy as np
import pytest

from ossnet_train.augment import AugmentConfig, augment_volume

ONLY_FLIP = AugmentConfig(flip_axes=(0, 1), flip_p=1.0, brightness_p=0.0, noise_p=0.0, gamma_p=0.0)


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    padded = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[0:2, 1:3, 0] = 1  # asymmetric, so every flip moves it
    padded[:, label == 1] = 10.0  # the image marks the object the label describes
    return padded, label, np.array([-1.0, -2.0], dtype=np.float32)


def test_flip_moves_label_and_image_together() -> None:
    padded, label, pad = _volume()
    seen: set[tuple[int, ...]] = set()
    for seed in range(30):
        out = augment_volume(padded, label, pad, ONLY_FLIP, np.random.default_rng(seed))
        assert out.flipped, "flip_p=1 flips a non-empty subset of the flip axes"
        seen.add(out.flipped)
        expected_label = np.flip(label, axis=out.flipped)
        np.testing.assert_array_equal(out.label, expected_label)
        np.testing.assert_array_equal(out.padded, np.flip(padded, axis=tuple(a + 1 for a in out.flipped)))
        # The object is still where the image is bright, in every channel.
        np.testing.assert_array_equal(out.padded[:, out.label == 1], 10.0)
        np.testing.assert_array_equal(out.pad_values, pad)
    assert seen == {(0,), (1,), (0, 1)}


def test_flip_respects_the_dataset_flip_axes() -> None:
    padded, label, pad = _volume()
    config = AugmentConfig(flip_axes=(0,), flip_p=1.0, brightness_p=0.0, noise_p=0.0, gamma_p=0.0)
    for seed in range(10):
        out = augment_volume(padded, label, pad, config, np.random.default_rng(seed))
        assert out.flipped == (0,)


def test_brightness_shifts_each_channel_by_a_fraction_of_its_max() -> None:
    padded, label, pad = _volume()
    config = AugmentConfig(flip_p=0.0, brightness_p=1.0, noise_p=0.0, gamma_p=0.0, brightness=0.15)
    channel_max = padded.reshape(2, -1).max(axis=1)
    shifts = []
    for seed in range(20):
        out = augment_volume(padded, label, pad, config, np.random.default_rng(seed))
        delta = out.padded - padded
        for c in range(2):
            assert np.allclose(delta[c], delta[c].flat[0], atol=1e-5), "one additive shift per channel"
            assert abs(delta[c].flat[0]) <= 0.15 * channel_max[c] + 1e-5
        np.testing.assert_allclose(out.pad_values, pad + out.brightness, atol=1e-6)
        np.testing.assert_array_equal(out.label, label)
        shifts.append(out.brightness[0])
    assert np.ptp(shifts) > 0.1 * channel_max[0], "shifts are random, not constant"


def test_noise_has_the_stated_sigma_and_leaves_the_label_alone() -> None:
    padded = np.zeros((1, 40, 40, 40), dtype=np.float32)
    label = np.zeros((40, 40, 40), dtype=np.uint8)
    label[10:20] = 1
    config = AugmentConfig(flip_p=0.0, brightness_p=0.0, noise_p=1.0, gamma_p=0.0, noise_sigma=0.15)
    out = augment_volume(padded, label, np.zeros(1, np.float32), config, np.random.default_rng(3))
    assert out.noise
    assert float(out.padded.std()) == pytest.approx(0.15, rel=0.02)
    assert abs(float(out.padded.mean())) < 0.01
    np.testing.assert_array_equal(out.label, label)


def test_inputs_are_not_modified_and_probabilities_hold() -> None:
    padded, label, pad = _volume()
    before = padded.copy(), label.copy(), pad.copy()
    fired = {"flip": 0, "noise": 0, "brightness": 0, "gamma": 0}
    n = 400
    for seed in range(n):
        out = augment_volume(padded, label, pad, AugmentConfig(), np.random.default_rng(seed))
        fired["flip"] += bool(out.flipped)
        fired["noise"] += out.noise
        fired["brightness"] += bool(np.any(out.brightness != 0))
        fired["gamma"] += out.gamma != 1.0
    for name, count in fired.items():
        assert 0.4 < count / n < 0.6, f"{name} fired {count}/{n} times, expected about half"
    np.testing.assert_array_equal(padded, before[0])
    np.testing.assert_array_equal(label, before[1])
    np.testing.assert_array_equal(pad, before[2])


def _background_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A normalised one-channel volume: raw background 0 (normalised -1.2, the pad value) around
    a foreground of positive raw intensities, as prepare_volume makes from a zero-background image."""
    rng = np.random.default_rng(4)
    raw = np.zeros((24, 20, 16), dtype=np.float32)
    raw[4:20, 3:17, 2:14] = rng.gamma(4.0, 25.0, size=(16, 14, 12)).astype(np.float32) + 1.0
    inside = raw > 0
    mean, std = raw[inside].mean(), raw[inside].std()
    padded = ((raw - mean) / std)[None].astype(np.float32)
    label = (raw > np.median(raw[inside])).astype(np.uint8)
    return padded, label, np.array([(0.0 - mean) / std], dtype=np.float32)


def test_gamma_bends_intensities_and_keeps_background_pads_and_moments() -> None:
    padded, label, pad = _background_volume()
    background = padded[0] == pad[0]
    config = AugmentConfig(flip_p=0.0, brightness_p=0.0, noise_p=0.0, gamma_p=1.0, gamma=0.3)
    gammas = []
    for seed in range(6):
        out = augment_volume(padded, label, pad, config, np.random.default_rng(seed))
        assert np.exp(-0.3) <= out.gamma <= np.exp(0.3) and out.gamma != 1.0
        gammas.append(out.gamma)
        image = out.padded[0]
        # The background and the padding stay one level, bit for bit.
        assert np.all(image[background] == out.pad_values[0])
        # Intensity above the background follows a power law of exponent gamma.
        above_old = (padded[0] - pad[0])[~background].astype(np.float64)
        above_new = (image - out.pad_values[0])[~background].astype(np.float64)
        slope = np.polyfit(np.log(above_old), np.log(above_new), 1)[0]
        assert slope == pytest.approx(out.gamma, abs=2e-3)
        # The foreground keeps the mean and spread the z-scoring gave it.
        assert float(image[~background].mean()) == pytest.approx(float(padded[0][~background].mean()), abs=1e-4)
        assert float(image[~background].std()) == pytest.approx(float(padded[0][~background].std()), rel=1e-4)
        np.testing.assert_array_equal(out.label, label)
    assert min(gammas) < 1.0 < max(gammas)


def test_same_seed_same_volume() -> None:
    padded, label, pad = _volume()
    a = augment_volume(padded, label, pad, AugmentConfig(), np.random.default_rng(7))
    b = augment_volume(padded, label, pad, AugmentConfig(), np.random.default_rng(7))
    np.testing.assert_array_equal(a.padded, b.padded)
    np.testing.assert_array_equal(a.label, b.label)


def test_shape_mismatch_is_refused() -> None:
    padded, label, pad = _volume()
    with pytest.raises(ValueError, match="expected padded"):
        augment_volume(padded, label[:-1], pad, AugmentConfig(), np.random.default_rng(0))
