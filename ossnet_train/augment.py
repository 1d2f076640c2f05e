"""Training-time augmentation of a prepared volume and its grid label (numpy).

OSS-Net's recipe (docs/training.md#the-recipe) plus a gamma: each augmentation is applied independently
with probability 0.5, after normalisation, on the padded full-resolution grid:

* flip over a random non-empty subset of the dataset's flip axes (``PreprocessConfig.flip_axes``;
  left-right only for brains, where the other axes are not symmetric), image and label together;
* gamma: each channel's intensity above its background level (the pad value, i.e. the normalised
  raw background) is raised to ``exp(U(-0.3, 0.3))`` (0.74-1.35) relative to its maximum, then
  scaled and shifted back to the mean and standard deviation it had over its non-background
  voxels (what the runtime's z-scoring would restore); the pad values move with the background;
* brightness: each channel gets ``max(channel) * U(-0.15, 0.15)`` added;
* Gaussian noise of sigma 0.1 on the image channels (never on the label): about the demo cohort's
  own noise, which is 0.05-0.19 in z units (median 0.15 over the brain, 0.115 over every voxel
  above 0; scripts/measure_demo_noise.py, docs/training.md#the-recipe). The paper's 0.15 tripled
  the quietest subject's noise.

The random placement shift (docs/design.md#geometry) is not done here: it is ``shift=`` of
``prepare_volume``. After augmenting, the global volume is recomputed from the augmented padded
volume by the preprocess module's own 2x2x2 mean pooling, so encoder and patches see the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AugmentConfig", "Augmented", "augment_volume"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and sizes of the augmentations (the paper's values by default).

    ``flip_axes``: spatial axes (0, 1, 2 = i, j, k of the padded grid) that may be flipped.
    ``brightness``: half-width of the additive shift as a fraction of each channel's maximum.
    ``noise_sigma``: standard deviation of the additive Gaussian noise, in normalised units.
    ``gamma``: half-width of the log-gamma (gamma = ``exp(U(-gamma, gamma))``).
    """

    flip_axes: tuple[int, ...] = (0,)
    flip_p: float = 0.5
    brightness: float = 0.15
    brightness_p: float = 0.5
    noise_sigma: float = 0.1
    noise_p: float = 0.5
    gamma: float = 0.3
    gamma_p: float = 0.5


@dataclass(frozen=True)
class Augmented:
    """An augmented training volume.

    ``padded``: (C, X, Y, Z) float32; ``label``: (X, Y, Z) uint8; ``pad_values``: (C,) float32,
    the value outside the grid (shifted with the brightness so that the outside continues the
    padded background); ``flipped``: the axes flipped; ``brightness``: (C,) additive shifts;
    ``gamma``: the exponent applied (1.0: none; the pad values follow its background shift too).
    """

    padded: np.ndarray
    label: np.ndarray
    pad_values: np.ndarray
    flipped: tuple[int, ...]
    brightness: np.ndarray
    noise: bool
    gamma: float = 1.0


def augment_volume(
    padded: np.ndarray,
    label: np.ndarray,
    pad_values: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> Augmented:
    """Apply flips, gamma, brightness and noise (each with its probability) to one volume.

    Args:
        padded: (C, X, Y, Z) float32 normalised padded volume; not modified.
        label: (X, Y, Z) uint8 label on the same grid; not modified.
        pad_values: (C,) float32 padding value per channel.
        config: what to apply.
        rng: the only source of randomness (a fixed draw order, so a seed reproduces a volume).

    Returns:
        :class:`Augmented` with fresh arrays (the inputs may be shared cached arrays).
    """
    if padded.ndim != 4 or label.shape != padded.shape[1:]:
        raise ValueError(f"expected padded (C, X, Y, Z) and label (X, Y, Z), got {padded.shape} and {label.shape}")
    channels = padded.shape[0]
    # Every draw happens whether or not the augmentation fires, so the random stream (and with it
    # the points sampled afterwards) does not depend on which augmentations fired.
    do_flip = rng.random() < config.flip_p
    flip_mask = rng.random(len(config.flip_axes)) < 0.5
    if not flip_mask.any() and len(config.flip_axes) > 0:
        flip_mask[rng.integers(len(config.flip_axes))] = True
    do_brightness = rng.random() < config.brightness_p
    shifts = rng.uniform(-config.brightness, config.brightness, size=channels)
    do_noise = rng.random() < config.noise_p
    noise_seed = int(rng.integers(2**63 - 1))
    do_gamma = rng.random() < config.gamma_p
    gamma = float(np.exp(rng.uniform(-config.gamma, config.gamma)))

    flipped = tuple(a for a, m in zip(config.flip_axes, flip_mask, strict=True) if m) if do_flip else ()
    image = padded
    out_label = label
    if flipped:
        image = np.flip(image, axis=tuple(a + 1 for a in flipped))
        out_label = np.flip(out_label, axis=flipped)
    image = np.array(image, dtype=np.float32, copy=True, order="C")
    out_label = np.ascontiguousarray(out_label, dtype=np.uint8)
    out_pad = np.asarray(pad_values, dtype=np.float32).copy()

    if do_gamma:
        for c in range(channels):
            out_pad[c] = _gamma_channel(image[c], out_pad[c], gamma)
    brightness = np.zeros(channels, dtype=np.float32)
    if do_brightness:
        channel_max = image.reshape(channels, -1).max(axis=1)
        brightness = (channel_max * shifts).astype(np.float32)
        image += brightness[:, None, None, None]
        out_pad += brightness
    if do_noise:
        noise_rng = np.random.default_rng(noise_seed)
        for c in range(channels):
            image[c] += noise_rng.standard_normal(image.shape[1:], dtype=np.float32) * np.float32(config.noise_sigma)
    return Augmented(padded=image, label=out_label, pad_values=out_pad, flipped=flipped,
                     brightness=brightness, noise=bool(do_noise), gamma=gamma if do_gamma else 1.0)


def _gamma_channel(channel: np.ndarray, pad: np.float32, gamma: float) -> np.float32:
    """Gamma on one normalised channel, in place; returns its new background (pad) level.

    ``y = x - pad`` is the intensity above the raw background (``y = 0`` there and in the
    padding). ``y`` becomes ``sign(y) |y| ** gamma`` relative to ``max |y|``, then the affine map
    that restores the mean and standard deviation ``y`` had over its nonzero voxels (the image's
    own statistics, as the runtime's z-scoring would restore them). ``y = 0`` maps to the returned
    level exactly, so that the padding continues the background bit for bit.
    """
    pad = np.float32(pad)
    np.subtract(channel, pad, out=channel)
    inside = channel != 0
    if not inside.any():
        np.add(channel, pad, out=channel)
        return pad
    values = channel[inside]
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    peak = float(np.abs(values).max())
    del values
    curved = np.abs(channel)
    np.divide(curved, np.float32(peak), out=curved)
    np.power(curved, np.float32(gamma), out=curved)
    np.multiply(curved, np.sign(channel), out=curved)
    new_values = curved[inside]
    new_mean, new_std = float(new_values.mean(dtype=np.float64)), float(new_values.std(dtype=np.float64))
    scale = std / new_std if new_std > 0 else 0.0
    new_pad = np.float32(pad + np.float32(mean - scale * new_mean))
    np.multiply(curved, np.float32(scale), out=curved)
    np.add(curved, new_pad, out=channel)
    return new_pad
