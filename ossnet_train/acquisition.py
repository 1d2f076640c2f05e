"""How a demo subject is "acquired": background, field of view, voxel spacing, storage, contrast, noise.

``make-demo-data --variety acquisition`` gives every demo subject its own acquisition, drawn from
its seed (:func:`draw_acquisition`), so that a static training cohort varies the way real inputs
do, at no cost per training step (docs/data.md#acquisition-variety). ``--variety none`` (the
default) keeps the version-1 cohort: every subject on the template's grid, Rician noise
everywhere, int16 with one slope.

The functions below are the steps ``ossnet_train.demo_cohort.make_demo_subject`` applies after
warping the template (each moves image, label, brain mask and affine together; each is tested on
tiny volumes in tests/train/test_acquisition.py):

1. :func:`fov_window`: the field of view in template voxels (the whole template field of view
   shifted about the head, or the brain's bounding box plus a margin per side);
   :func:`take_window` / :func:`shift_affine` cut it (outside the template: 0).
2. :func:`resample_spacing`: the image trilinear, label and mask nearest, onto a coarser grid
   (1.5 mm, or 3 mm along one axis) with the affine that places every new voxel exactly.
3. Rician noise on the final grid, then :func:`zero_background` (exactly 0 outside the mask).
4. :func:`zero_pad`: zero-filled margins around the acquired field of view.
5. :func:`store`: uint8 (0-255), int16 with a header slope, int16 without one, or float32 times an
   arbitrary gain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "ACQUISITION_VERSION",
    "STORAGES",
    "VARIETIES",
    "Acquisition",
    "AcquisitionRanges",
    "contrast_curve",
    "draw_acquisition",
    "fov_window",
    "resample_spacing",
    "shift_affine",
    "slice_profile_sigma",
    "store",
    "take_window",
    "zero_background",
    "zero_pad",
]

#: Bumped whenever the same seed would give a different acquisition or different voxels under it.
ACQUISITION_VERSION = 1
#: ``make-demo-data --variety``: ``none`` (version-1 cohort) or ``acquisition``.
VARIETIES = ("none", "acquisition")
#: How the image is stored on disk.
STORAGES = ("uint8", "int16_slope", "int16", "float32")


@dataclass(frozen=True)
class AcquisitionRanges:
    """The ranges :func:`draw_acquisition` draws from (docs/data.md#acquisition-variety).

    Probabilities are of one subject; ``*_mm`` ranges are uniform, ``gamma_range`` and
    ``gain_range`` log-uniform. ``spacings``: ``(spacing_mm, probability)``; a spacing with one
    axis coarser than the others is a thick-slice acquisition whose thick axis is drawn uniformly.
    """

    zero_background_p: float = 0.6
    mask_dilation_mm: tuple[int, int] = (0, 3)
    crop_p: float = 0.4
    crop_margin_mm: tuple[float, float] = (0.0, 15.0)
    max_placement_mm: float = 20.0
    zero_pad_p: float = 0.3
    zero_pad_mm: tuple[float, float] = (0.0, 24.0)
    spacings: tuple[tuple[tuple[float, float, float], float], ...] = (
        ((1.0, 1.0, 1.0), 0.5),
        ((1.5, 1.5, 1.5), 0.25),
        ((1.0, 1.0, 3.0), 0.25),
    )
    storages: tuple[tuple[str, float], ...] = (("uint8", 0.25), ("int16_slope", 0.25), ("int16", 0.25),
                                               ("float32", 0.25))
    gain_range: tuple[float, float] = (0.01, 1000.0)
    int16_max_range: tuple[float, float] = (500.0, 30000.0)
    int16_slope_levels: tuple[int, ...] = (4095, 32767)
    gamma_range: tuple[float, float] = (0.6, 1.6)
    contrast_jitter: float = 0.08
    bias_log_rms_range: tuple[float, float] = (0.0, 0.35)
    noise_range: tuple[float, float] = (0.005, 0.07)


@dataclass(frozen=True)
class Acquisition:
    """One subject's acquisition (all values concrete; JSON-ready through :meth:`to_dict`).

    background: ``"zero"`` (exactly 0 outside the brain mask dilated by ``mask_dilation_vox``
        template voxels) or ``"noise"`` (Rician noise over the whole acquired field of view).
    fov: ``"full"`` (the template's field of view, shifted about the head by a fraction
        ``placement`` of the room the head leaves, at most ``max_placement_mm`` per axis) or
        ``"crop"`` (the brain mask's bounding box plus ``crop_margin_mm`` per side: low x, y, z,
        then high x, y, z).
    zero_pad_mm: zero-filled margin around the acquired field of view, per side (as crop).
    spacing_mm: voxel size of the stored grid.
    storage: one of :data:`STORAGES`; ``gain`` scales float32 and int16-with-slope data;
        ``int16_max`` is the largest stored value of plain int16; ``int16_levels`` the stored
        range of int16 with a slope.
    gamma, contrast_knots: the intensity curve (:func:`contrast_curve`, then ``** gamma``).
    bias_log_rms: rms of the log bias field; noise_fraction: Rician sigma over the nominal full scale.
    """

    background: str = "noise"
    mask_dilation_vox: int = 0
    fov: str = "full"
    placement: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_placement_mm: float = 0.0
    crop_margin_mm: tuple[float, ...] = (0.0,) * 6
    zero_pad_mm: tuple[float, ...] = (0.0,) * 6
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    storage: str = "int16_slope"
    gain: float = 1.0
    int16_max: float = 4095.0
    int16_levels: int = 4095
    gamma: float = 1.0
    contrast_knots: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)
    bias_log_rms: float = 0.15
    noise_fraction: float = 0.03

    def __post_init__(self) -> None:
        if self.background not in ("zero", "noise"):
            raise ValueError(f"background must be 'zero' or 'noise', got {self.background!r}")
        if self.fov not in ("full", "crop"):
            raise ValueError(f"fov must be 'full' or 'crop', got {self.fov!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if len(self.crop_margin_mm) != 6 or len(self.zero_pad_mm) != 6 or len(self.spacing_mm) != 3:
            raise ValueError("crop_margin_mm and zero_pad_mm need 6 values, spacing_mm 3")
        if min(self.spacing_mm) < 1.0:
            raise ValueError(f"spacing_mm must be >= 1 mm (the template's), got {self.spacing_mm}")
        k1, k2 = self.contrast_knots
        if not 0.0 < k1 < k2 < 1.0:
            raise ValueError(f"contrast_knots must satisfy 0 < k1 < k2 < 1 (a monotone curve), got {self.contrast_knots}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _choice(rng: np.random.Generator, options: tuple[tuple[Any, float], ...]) -> Any:
    weights = np.array([w for _, w in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def draw_acquisition(seed: int, ranges: AcquisitionRanges | None = None) -> Acquisition:
    """The acquisition of demo subject ``seed`` (deterministic; its own stream, so the anatomy,
    drawn from the other streams of ``SeedSequence(seed)``, is the same as without variety).

    Every value is drawn whether or not it is used, so one choice never shifts the others.
    """
    r = ranges or AcquisitionRanges()
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(7)[6])
    background = "zero" if rng.random() < r.zero_background_p else "noise"
    dilation = int(rng.integers(r.mask_dilation_mm[0], r.mask_dilation_mm[1] + 1))
    fov = "crop" if rng.random() < r.crop_p else "full"
    placement = tuple(float(u) for u in rng.random(3))
    margins = tuple(float(m) for m in rng.uniform(*r.crop_margin_mm, size=6))
    pad = rng.random() < r.zero_pad_p
    pads = tuple(float(m) if pad else 0.0 for m in rng.uniform(*r.zero_pad_mm, size=6))
    spacing = _choice(rng, r.spacings)
    thick_axis = int(rng.integers(3))
    if len(set(spacing)) > 1:  # a thick-slice spacing: its coarse axis is drawn
        coarse = max(spacing)
        fine = min(spacing)
        spacing = tuple(coarse if a == thick_axis else fine for a in range(3))
    storage = _choice(rng, r.storages)
    gain = _log_uniform(rng, r.gain_range)
    int16_max = _log_uniform(rng, r.int16_max_range)
    levels = int(r.int16_slope_levels[int(rng.integers(len(r.int16_slope_levels)))])
    gamma = _log_uniform(rng, r.gamma_range)
    knots = (1.0 / 3.0 + float(rng.uniform(-r.contrast_jitter, r.contrast_jitter)),
             2.0 / 3.0 + float(rng.uniform(-r.contrast_jitter, r.contrast_jitter)))
    bias = float(rng.uniform(*r.bias_log_rms_range))
    noise = float(rng.uniform(*r.noise_range))
    return Acquisition(
        background=background, mask_dilation_vox=dilation, fov=fov, placement=placement,  # type: ignore[arg-type]
        max_placement_mm=r.max_placement_mm, crop_margin_mm=margins, zero_pad_mm=pads,
        spacing_mm=tuple(float(s) for s in spacing), storage=storage, gain=gain,  # type: ignore[arg-type]
        int16_max=int16_max, int16_levels=levels, gamma=gamma, contrast_knots=knots, bias_log_rms=bias,
        noise_fraction=noise,
    )


# --------------------------------------------------------------------------- intensity


def contrast_curve(t: np.ndarray, knots: tuple[float, float]) -> np.ndarray:
    """Monotone piecewise-linear curve through (0, 0), (1/3, k1), (2/3, k2), (1, 1), extended linearly.

    It changes the relative contrast of dark, middle and bright tissue (a sequence's tissue
    contrast) without reordering intensities. float32 in, float32 out.
    """
    xs = np.array([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0], dtype=np.float32)
    ys = np.array([0.0, knots[0], knots[1], 1.0], dtype=np.float32)
    out = np.interp(t, xs, ys).astype(np.float32)
    above = t > 1.0  # trilinear sampling of uint8 / 255 never exceeds 1; kept linear for safety
    if np.any(above):
        slope = (ys[3] - ys[2]) / (xs[3] - xs[2])
        out[above] = 1.0 + (t[above] - 1.0) * slope
    return out


def slice_profile_sigma(factor: float) -> float:
    """Gaussian sigma (fine voxels) that widens a 1-voxel profile to ``factor`` voxels: a box of
    width ``factor`` has variance ``factor^2 / 12``, the fine voxel ``1 / 12`` of it already."""
    return math.sqrt(max(factor * factor - 1.0, 0.0) / 12.0)


# --------------------------------------------------------------------------- geometry


def fov_window(mask: np.ndarray, acq: Acquisition) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The acquired field of view ``[lo, hi)`` in voxels of ``mask``'s grid (may reach outside it).

    ``full``: the grid's own extent, shifted per axis by ``round(a + placement * (b - a))`` where
    ``[a, b]`` is the range of shifts that keeps the mask's bounding box inside, limited to
    +-``max_placement_mm`` (mask voxels of 1 mm). ``crop``: the bounding box plus the rounded
    margins. An empty mask keeps the grid.
    """
    dims = mask.shape
    idx = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(i.size == 0 for i in idx):
        return (0, 0, 0), tuple(dims)  # type: ignore[return-value]
    box_lo = [int(i[0]) for i in idx]
    box_hi = [int(i[-1]) + 1 for i in idx]
    lo: list[int] = []
    hi: list[int] = []
    for a in range(3):
        if acq.fov == "crop":
            lo.append(box_lo[a] - round(acq.crop_margin_mm[a]))
            hi.append(box_hi[a] + round(acq.crop_margin_mm[3 + a]))
            continue
        limit = math.floor(acq.max_placement_mm)
        first = max(box_hi[a] - dims[a], -limit)
        last = min(box_lo[a], limit)
        if first > last:  # the head does not fit the shifted field of view: keep it unshifted
            first = last = 0
        start = round(first + acq.placement[a] * (last - first))
        lo.append(start)
        hi.append(start + dims[a])
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def take_window(volume: np.ndarray, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    """``volume[lo:hi]`` with voxels outside ``volume`` set to 0 (a new array)."""
    out = np.zeros(tuple(h - low for low, h in zip(lo, hi, strict=True)), dtype=volume.dtype)
    src = tuple(slice(max(low, 0), min(h, n)) for low, h, n in zip(lo, hi, volume.shape, strict=True))
    dst = tuple(slice(s.start - low, s.stop - low) for s, low in zip(src, lo, strict=True))
    if all(s.stop > s.start for s in src):
        out[dst] = volume[src]
    return out


def shift_affine(affine: np.ndarray, lo: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """The affine of a window whose voxel 0 is voxel ``lo`` of ``affine``'s grid."""
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] = affine[:3, :3] @ np.asarray(lo, dtype=np.float64) + affine[:3, 3]
    return out


def _linear_axis(volume: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation along ``axis`` at fractional ``positions`` (inside ``[0, n - 1]``)."""
    n = volume.shape[axis]
    i0 = np.clip(np.floor(positions).astype(np.int64), 0, max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w = (positions - i0).astype(np.float32)
    shape = [1] * volume.ndim
    shape[axis] = positions.size
    w = w.reshape(shape)
    a = np.take(volume, i0, axis=axis)
    b = np.take(volume, i1, axis=axis)
    return a + (b - a) * w


def resample_spacing(
    image: np.ndarray, labels: list[np.ndarray], affine: np.ndarray, spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Resample onto a grid of ``spacing_mm`` voxels whose voxel 0 is the input's voxel 0.

    New voxel ``i`` along an axis lies at input position ``i * f`` (``f`` = new / input voxel
    size), for ``i = 0 .. floor((n - 1) / f)``. ``image`` (float32) is interpolated trilinearly
    (separably), each of ``labels`` takes the nearest input voxel (``floor(i * f + 0.5)``). The
    returned affine is ``affine`` with its columns scaled by ``f``, so every new voxel's world
    position is the world position of the input point it was sampled at.
    """
    voxel = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    factors = np.asarray(spacing_mm, dtype=np.float64) / voxel
    out_image = image
    out_labels = list(labels)
    for a in range(3):
        f = float(factors[a])
        if abs(f - 1.0) < 1e-9:
            continue
        n = image.shape[a]
        positions = np.arange(math.floor((n - 1) / f + 1e-9) + 1, dtype=np.float64) * f
        out_image = _linear_axis(out_image, a, positions)
        nearest = np.minimum(np.floor(positions + 0.5).astype(np.int64), n - 1)
        out_labels = [np.take(lab, nearest, axis=a) for lab in out_labels]
    out_affine = np.array(affine, dtype=np.float64, copy=True)
    out_affine[:3, :3] = out_affine[:3, :3] * factors[None, :]
    return np.ascontiguousarray(out_image, dtype=np.float32), [np.ascontiguousarray(lab) for lab in out_labels], out_affine


def zero_background(image: np.ndarray, mask: np.ndarray) -> None:
    """Set every voxel outside ``mask`` to exactly 0 (in place)."""
    image[~mask.astype(bool)] = 0.0


def zero_pad(arrays: list[np.ndarray], affine: np.ndarray, pad_mm: tuple[float, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    """Zero-filled margins ``pad_mm`` (low x, y, z, then high x, y, z; rounded to voxels) around each array."""
    voxel = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    before = [round(pad_mm[a] / voxel[a]) for a in range(3)]
    after = [round(pad_mm[3 + a] / voxel[a]) for a in range(3)]
    out = [np.pad(arr, list(zip(before, after, strict=True))) for arr in arrays]
    return out, shift_affine(affine, tuple(-b for b in before))


# --------------------------------------------------------------------------- storage


def store(image: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, float]:
    """The stored array and its header slope (``image * scale == stored * slope`` up to rounding).

    ``uint8``: ``max -> 255``, slope 1. ``int16_slope``: ``image * gain`` over ``int16_levels``
    steps, slope ``max * gain / levels``. ``int16``: ``max -> int16_max``, slope 1. ``float32``:
    ``image * gain``, slope 1. Zero stays exactly zero in every storage.
    """
    peak = float(image.max())
    if peak <= 0.0:
        peak = 1.0
    if acq.storage == "float32":
        return (image * np.float32(acq.gain)).astype(np.float32), 1.0
    if acq.storage == "uint8":
        return np.rint(image * np.float32(255.0 / peak)).astype(np.uint8), 1.0
    if acq.storage == "int16":
        return np.rint(image * np.float32(acq.int16_max / peak)).astype(np.int16), 1.0
    slope = float(np.float32(peak * acq.gain / acq.int16_levels))
    return np.rint(image * np.float32(acq.gain) / np.float32(slope)).astype(np.int16), slope
