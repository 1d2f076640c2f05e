"""Augmentation: flips move image and label together, brightness and noise touch only the image."""

from __future__ import annotations

import numpy as np
import pytest

from ossnet_train.augment import AugmentConfig, augment_volume

ONLY_FLIP = AugmentConfig(flip_axes=(0, 1), flip_p=1.0, brightness_p=0.0, noise_p=0.0)


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
    config = AugmentConfig(flip_axes=(0,), flip_p=1.0, brightness_p=0.0, noise_p=0.0)
    for seed in range(10):
        out = augment_volume(padded, label, pad, config, np.random.default_rng(seed))
        assert out.flipped == (0,)


def test_brightness_shifts_each_channel_by_a_fraction_of_its_max() -> None:
    padded, label, pad = _volume()
    config = AugmentConfig(flip_p=0.0, brightness_p=1.0, noise_p=0.0, brightness=0.15)
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
    config = AugmentConfig(flip_p=0.0, brightness_p=0.0, noise_p=1.0, noise_sigma=0.15)
    out = augment_volume(padded, label, np.zeros(1, np.float32), config, np.random.default_rng(3))
    assert out.noise
    assert float(out.padded.std()) == pytest.approx(0.15, rel=0.02)
    assert abs(float(out.padded.mean())) < 0.01
    np.testing.assert_array_equal(out.label, label)


def test_inputs_are_not_modified_and_probabilities_hold() -> None:
    padded, label, pad = _volume()
    before = padded.copy(), label.copy(), pad.copy()
    fired = {"flip": 0, "noise": 0, "brightness": 0}
    n = 400
    for seed in range(n):
        out = augment_volume(padded, label, pad, AugmentConfig(), np.random.default_rng(seed))
        fired["flip"] += bool(out.flipped)
        fired["noise"] += out.noise
        fired["brightness"] += bool(np.any(out.brightness != 0))
    for name, count in fired.items():
        assert 0.4 < count / n < 0.6, f"{name} fired {count}/{n} times, expected about half"
    np.testing.assert_array_equal(padded, before[0])
    np.testing.assert_array_equal(label, before[1])
    np.testing.assert_array_equal(pad, before[2])


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
