"""File-level input conditions for the robustness benchmark (``bench_robustness.py``): numpy + nibabel only.

Each condition turns one subject (a NIfTI image, its label and its brain mask) into what a user
might hand the runtime instead: another background, field of view, voxel size, storage type or
bias field. Image, label and brain mask always stay on one grid, and the affine follows every
change of the grid, so a voxel keeps its world position (mm). The functions are written for the
benchmark on purpose and share no code with the training augmentation (``ossnet_train.augment``)
or the runtime's preprocessing: a benchmark that borrowed the code under test could not catch
its mistakes.

Conditions (:data:`CONDITIONS`):

* ``as_generated``: the file exactly as the demo cohort generator wrote it (int16 + scl_slope,
  Rician noise in the background).
* ``zero_background``: every voxel outside the brain mask set to exactly 0 (stored value 0,
  intercept 0), the brain untouched (the stored integers are kept).
* ``cropped``: cut to the brain mask's bounding box plus :data:`CROP_MARGIN_MM` per side (clipped
  to the grid), noisy background kept; the affine's origin moves to the new first voxel.
* ``cropped_zero``: ``zero_background``, then ``cropped``.
* ``spacing_1p5mm`` / ``spacing_1x1x3mm``: the same field of view resampled along the array axes
  to 1.5 mm isotropic / 1 x 1 x 3 mm (the third array axis, inferior-superior on the demo grid):
  the image trilinear, label and brain mask nearest neighbour; stored int16 + slope as generated.
* ``uint8``: the real values mapped linearly from [min, max] to 0..255, stored uint8 with no
  scaling in the header.
* ``int16_slope``: the real values stored int16 over the full range with a header slope *and*
  a non-zero intercept (``value = stored * slope + inter``).
* ``float32``: the real values stored float32, no scaling.
* ``strong_bias``: the image times an extra smooth field ``exp(b)``: ``b`` a sum of
  :data:`BIAS_WAVES` plane waves with wavelengths of 120-300 mm in random directions, shifted to
  mean 0 and scaled to rms :data:`BIAS_RMS` over the brain (seeded by the subject's seed);
  stored int16 + slope.

The brain mask (:func:`brain_mask`) is derived from the generated image itself: the demo
generator does not expose its warped template mask. The image is smoothed (Gaussian, 2 mm),
thresholded at 10 % of the way from the background level (median of the grid's 3-voxel outer
shell) to the 99th percentile, reduced to its largest 6-connected component and its holes
(ventricles) filled. It is computed once per subject on the generated image and carried through
every condition like the label (cropped with it, resampled nearest neighbour).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "BIAS_RMS",
    "BIAS_WAVES",
    "CONDITIONS",
    "CROP_MARGIN_MM",
    "TRANSFORMS",
    "Case",
    "bias_field",
    "bounding_box",
    "brain_mask",
    "crop",
    "fill_holes",
    "gaussian_smooth",
    "largest_component",
    "load_case",
    "resample_to_spacing",
    "store_float32",
    "store_int16_slope",
    "store_uint8",
    "strong_bias",
    "transform",
    "voxel_sizes",
    "write_brain",
    "write_case",
    "zero_background",
]

CROP_MARGIN_MM = 5.0
BIAS_RMS = 0.3
BIAS_WAVES = 8
BIAS_WAVELENGTH_MM = (120.0, 300.0)
#: The generator's 12-bit storage: int16 with slope = max / 4095.
INT16_LEVELS = 4095


@dataclass(frozen=True, eq=False)
class Case:
    """One subject in one condition.

    Attributes:
        image: the NIfTI image as it is written (stored dtype, scaling and affine).
        label: ``uint8`` {0, 1} on the image's grid.
        brain: ``bool`` brain mask on the image's grid.
        seed: the subject's seed (seeds the random bias field).
    """

    image: nib.Nifti1Image
    label: np.ndarray
    brain: np.ndarray
    seed: int

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.image.affine, dtype=np.float64)

    def values(self) -> np.ndarray:
        """Real intensities (stored values with the header's scaling applied), float32.

        Also for an image made in memory, whose ``get_fdata`` would return the stored values
        unscaled (nibabel applies the header's scaling only to images read from a file).
        """
        raw, slope, inter = _raw(self.image)
        if (slope, inter) == (1.0, 0.0):
            return np.asarray(raw, dtype=np.float32)
        return (np.asarray(raw, dtype=np.float64) * slope + inter).astype(np.float32)


# ----------------------------------------------------------------------------------- storage


def _raw(image: nib.Nifti1Image) -> tuple[np.ndarray, float, float]:
    """Stored values and the scaling ``(slope, inter)`` (1, 0 when the header has none)."""
    proxy = image.dataobj
    if isinstance(proxy, np.ndarray):  # made in memory: the scaling is the header's
        raw, (slope, inter) = proxy, image.header.get_slope_inter()
    else:  # read from a file: nibabel moved the scaling into the proxy
        raw, slope, inter = np.asanyarray(proxy.get_unscaled()), proxy.slope, proxy.inter
    slope = float(slope) if slope is not None and math.isfinite(slope) and slope != 0 else 1.0
    inter = float(inter) if inter is not None and math.isfinite(inter) else 0.0
    return raw, slope, inter


def _image(stored: np.ndarray, affine: np.ndarray, slope: float | None, inter: float | None,
           template: nib.Nifti1Image | None = None) -> nib.Nifti1Image:
    """A NIfTI image holding exactly ``stored`` with header scaling ``(slope, inter)`` (None: none)."""
    header = template.header.copy() if template is not None else None
    img = nib.Nifti1Image(stored, affine, header=header)
    img.header.set_data_dtype(stored.dtype)
    if slope is None:
        img.header.set_slope_inter(np.nan, np.nan)
    else:
        img.header.set_slope_inter(slope, 0.0 if inter is None else inter)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


def store_int16_slope(values: np.ndarray, affine: np.ndarray, *, full_range: bool = False) -> nib.Nifti1Image:
    """int16 with a header slope.

    ``full_range=False``: the generator's convention, ``slope = max / 4095``, intercept 0.
    ``full_range=True``: [min, max] onto [-32000, 32000], slope and a non-zero intercept
    ``(max + min) / 2``.
    """
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if full_range:
        inter = (hi + lo) / 2.0
        slope = (hi - lo) / 64000.0 if hi > lo else 1.0
    else:
        inter = 0.0
        slope = hi / INT16_LEVELS if hi > 0 else 1.0
    # The header keeps float32; quantise with the values it will hold so stored * slope + inter is exact.
    slope, inter = float(np.float32(slope)), float(np.float32(inter))
    stored = np.clip(np.rint((values - inter) / slope), -32768, 32767).astype(np.int16)
    return _image(stored, affine, slope, inter)


def store_uint8(values: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """[min, max] mapped linearly onto 0..255, uint8, no header scaling."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    stored = np.clip(np.rint((values - lo) * scale), 0, 255).astype(np.uint8)
    return _image(stored, affine, None, None)


def store_float32(values: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """float32, no header scaling."""
    return _image(np.asarray(values, dtype=np.float32), affine, None, None)


def load_case(image_path: str | os.PathLike[str], label_path: str | os.PathLike[str], seed: int,
              brain: np.ndarray | None = None) -> Case:
    """Read a generated subject; the brain mask is computed from the image unless given."""
    image = nib.load(os.fspath(image_path))
    label = (np.asanyarray(nib.load(os.fspath(label_path)).dataobj) > 0).astype(np.uint8)
    if label.shape != image.shape:
        raise ValueError(f"label {label.shape} and image {image.shape} are not on one grid")
    if brain is None:
        brain = brain_mask(image.get_fdata(dtype=np.float32), image.affine)
    return Case(image, label, np.asarray(brain, dtype=bool), int(seed))


def write_case(case: Case, image_path: Path, label_path: Path, brain_path: Path | None = None) -> None:
    """Write image, label (uint8) and optionally the brain mask (uint8), all with the image's affine."""
    affine = case.affine
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(case.image, image_path)
    nib.save(_image(case.label.astype(np.uint8), affine, None, None), label_path)
    if brain_path is not None:
        write_brain(case, brain_path)


def write_brain(case: Case, path: Path) -> None:
    """The brain mask as uint8 {0, 1} with the image's affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(_image(case.brain.astype(np.uint8), case.affine, None, None), path)


# ------------------------------------------------------------------------------ brain mask


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the norms of the affine's first three columns."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def gaussian_smooth(volume: np.ndarray, sigma_vox: Sequence[float]) -> np.ndarray:
    """Separable Gaussian smoothing (sigma per axis in voxels), edges replicated; float32."""
    out = np.asarray(volume, dtype=np.float32)
    for axis, sigma in enumerate(sigma_vox):
        if sigma < 0.05:
            continue
        radius = max(1, math.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps = (taps / taps.sum()).astype(np.float32)
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for t, w in enumerate(taps):
            acc += w * np.take(padded, np.arange(t, t + n), axis=axis)
        out = acc
    return out


def _spread_along(mask: np.ndarray, reached: np.ndarray, axis: int) -> np.ndarray:
    """Every run of ``mask`` along ``axis`` that holds a reached voxel becomes reached."""
    m = np.ascontiguousarray(np.moveaxis(mask, axis, -1))
    r = np.ascontiguousarray(np.moveaxis(reached, axis, -1))
    start = m.copy()
    start[..., 1:] &= ~m[..., :-1]
    run = np.cumsum(start.ravel(), dtype=np.int64)
    flat_m, flat_r = m.ravel(), r.ravel()
    hit = np.zeros(int(run[-1]) + 1 if run.size else 1, dtype=bool)
    hit[run[flat_r & flat_m]] = True
    out = (flat_m & hit[run]).reshape(m.shape)
    return np.moveaxis(out, -1, axis)


def _reconstruct(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` 6-connected to a seed inside it (sweeps along the axes until stable)."""
    reached = np.asarray(seeds, dtype=bool) & mask
    count = int(reached.sum())
    while True:
        for axis in range(mask.ndim):
            reached = _spread_along(mask, reached, axis)
        new = int(reached.sum())
        if new == count:
            return reached
        count = new


def largest_component(mask: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (empty mask: empty).

    Components are grown from the remaining voxel of highest ``priority`` (default: the first)
    until the largest found holds at least as many voxels as are left, so the brain usually
    takes one growth.
    """
    mask = np.asarray(mask, dtype=bool)
    remaining = mask.copy()
    best = np.zeros_like(mask)
    best_n = 0
    left = int(remaining.sum())
    while left > best_n:
        flat = np.flatnonzero(remaining)
        pick = flat[int(np.argmax(priority.ravel()[flat]))] if priority is not None else flat[0]
        seed = np.zeros_like(mask)
        seed.flat[pick] = True
        component = _reconstruct(remaining, seed)
        n = int(component.sum())
        if n > best_n:
            best, best_n = component, n
        remaining &= ~component
        left -= n
    return best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every background region not 6-connected to the grid's faces."""
    mask = np.asarray(mask, dtype=bool)
    outside = ~mask
    border = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for end in (0, -1):
            index = [slice(None)] * mask.ndim
            index[axis] = end
            border[tuple(index)] = True
    return ~_reconstruct(outside, border)


def brain_mask(values: np.ndarray, affine: np.ndarray, *, smooth_mm: float = 2.0, fraction: float = 0.1,
               shell: int = 3) -> np.ndarray:
    """The brain of a skull-stripped T1 with a noisy (or zero) background, from the image alone.

    Smooth (Gaussian, ``smooth_mm``), threshold at ``background + fraction * (p99 - background)``
    with ``background`` the median of the grid's outer ``shell`` voxels, keep the largest
    6-connected component, fill its holes.
    """
    smooth = gaussian_smooth(values, tuple(smooth_mm / voxel_sizes(affine)))
    inner = tuple(slice(shell, max(shell, n - shell)) for n in smooth.shape)
    outer = np.ones(smooth.shape, dtype=bool)
    outer[inner] = False
    background = float(np.median(smooth[outer])) if outer.any() else float(smooth.min())
    high = float(np.percentile(smooth, 99.0))
    threshold = background + fraction * (high - background)
    return fill_holes(largest_component(smooth > threshold, smooth))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(lo, hi)`` voxel indices (hi exclusive) of the set voxels, None when there are none."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return tuple(lo), tuple(hi)


# ------------------------------------------------------------------------------ transforms


def zero_background(case: Case) -> Case:
    """Stored values outside the brain set to 0 (and the intercept to 0), the brain's kept."""
    raw, slope, inter = _raw(case.image)
    if inter == 0.0:
        stored = np.where(case.brain, raw, np.zeros((), dtype=raw.dtype)).astype(raw.dtype)
        image = _image(stored, case.affine, slope if (slope, inter) != (1.0, 0.0) else None,
                       inter if (slope, inter) != (1.0, 0.0) else None, case.image)
    else:  # a stored 0 would not read as 0: store the real values instead
        image = store_float32(np.where(case.brain, case.values(), np.float32(0.0)), case.affine)
    return replace(case, image=image)


def crop(case: Case, margin_mm: float = CROP_MARGIN_MM) -> Case:
    """Cut to the brain's bounding box plus ``margin_mm`` per side (clipped to the grid)."""
    box = bounding_box(case.brain)
    if box is None:
        raise ValueError("the brain mask is empty; nothing to crop to")
    margin = np.ceil(margin_mm / voxel_sizes(case.affine) - 1e-9).astype(int)
    lo = np.maximum(np.asarray(box[0]) - margin, 0)
    hi = np.minimum(np.asarray(box[1]) + margin, case.label.shape)
    index = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ lo + case.affine[:3, 3]
    raw, slope, inter = _raw(case.image)
    scaled = (slope, inter) != (1.0, 0.0)
    image = _image(np.ascontiguousarray(raw[index]), affine, slope if scaled else None, inter if scaled else None,
                   case.image)
    return replace(case, image=image, label=np.ascontiguousarray(case.label[index]),
                   brain=np.ascontiguousarray(case.brain[index]))


def _sample_positions(n_in: int, ratio: float) -> tuple[int, np.ndarray]:
    """Output size and input positions (voxel units) of an axis resampled by ``ratio`` = out/in spacing.

    The field of view (voxel edges) is kept: ``n_out = round(n_in / ratio)`` and output voxel
    ``j`` sits at input position ``(j + 0.5) * ratio - 0.5``.
    """
    n_out = max(1, round(n_in / ratio))
    return n_out, (np.arange(n_out) + 0.5) * ratio - 0.5


def resample_to_spacing(volume: np.ndarray, affine: np.ndarray, spacing_mm: Sequence[float], *,
                        order: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample along the array axes to ``spacing_mm`` (per array axis), keeping the field of view.

    ``order=1``: trilinear (float32, positions outside the outermost voxel centres take the
    edge value); ``order=0``: nearest neighbour (keeps the dtype). Returns the volume and its
    affine ``affine @ [[r, 0, 0, o], ...]`` with ``r`` the spacing ratio and ``o = r / 2 - 1/2``,
    so every output voxel's world position is the input's at the sampled position.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ratios = np.asarray(spacing_mm, dtype=np.float64) / voxel_sizes(affine)
    out = np.asarray(volume) if order == 0 else np.asarray(volume, dtype=np.float32)
    scale = np.eye(4)
    for axis, ratio in enumerate(ratios):
        n_in = out.shape[axis]
        n_out, pos = _sample_positions(n_in, float(ratio))
        scale[axis, axis] = ratio
        scale[axis, 3] = pos[0]
        pos = np.clip(pos, 0.0, n_in - 1.0)
        if order == 0:
            out = np.take(out, np.floor(pos + 0.5).astype(np.int64), axis=axis)
            continue
        i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        shape = [1] * out.ndim
        shape[axis] = n_out
        frac = (pos - i0).astype(np.float32).reshape(shape)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i1, axis=axis)
        out = a + (b - a) * frac
    return out, affine @ scale


def _resample_case(case: Case, spacing_mm: Sequence[float]) -> Case:
    values, affine = resample_to_spacing(case.values(), case.affine, spacing_mm, order=1)
    label, _ = resample_to_spacing(case.label, case.affine, spacing_mm, order=0)
    brain, _ = resample_to_spacing(case.brain, case.affine, spacing_mm, order=0)
    return replace(case, image=store_int16_slope(values, affine), label=label, brain=brain)


def bias_field(shape: Sequence[int], affine: np.ndarray, brain: np.ndarray, seed: int, *,
               rms: float = BIAS_RMS, waves: int = BIAS_WAVES) -> np.ndarray:
    """``exp(b)`` float32: ``b`` a sum of plane waves (wavelengths 120-300 mm, random directions and
    phases) in world coordinates, mean 0 and rms ``rms`` over ``brain``; seeded by ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB1A5]))
    affine = np.asarray(affine, dtype=np.float64)
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    field = np.zeros(tuple(shape), dtype=np.float64)
    for _ in range(waves):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        k = 2.0 * np.pi / rng.uniform(*BIAS_WAVELENGTH_MM) * direction  # rad / mm, world axes
        phase = rng.uniform(0.0, 2.0 * np.pi)
        # k . (A ijk + t): separable in i, j, k.
        kv = k @ affine[:3, :3]
        arg = (kv[0] * axes[0])[:, None, None] + (kv[1] * axes[1])[None, :, None] + (kv[2] * axes[2])[None, None, :]
        field += rng.uniform(0.5, 1.0) * np.cos(arg + (k @ affine[:3, 3]) + phase)
    inside = field[brain] if brain.any() else field.ravel()
    field -= inside.mean()
    spread = float(np.sqrt(np.mean((field[brain] if brain.any() else field) ** 2)))
    field *= rms / spread if spread > 0 else 0.0
    return np.exp(field).astype(np.float32)


def strong_bias(case: Case) -> Case:
    """The image times :func:`bias_field` (noise included, as a receive coil's sensitivity would)."""
    values = case.values() * bias_field(case.label.shape, case.affine, case.brain, case.seed)
    return replace(case, image=store_int16_slope(values, case.affine))


TRANSFORMS: dict[str, Callable[[Case], Case]] = {
    "as_generated": lambda case: case,
    "zero_background": zero_background,
    "cropped": crop,
    "cropped_zero": lambda case: crop(zero_background(case)),
    "spacing_1p5mm": lambda case: _resample_case(case, (1.5, 1.5, 1.5)),
    "spacing_1x1x3mm": lambda case: _resample_case(case, (1.0, 1.0, 3.0)),
    "uint8": lambda case: replace(case, image=store_uint8(case.values(), case.affine)),
    "int16_slope": lambda case: replace(case, image=store_int16_slope(case.values(), case.affine, full_range=True)),
    "float32": lambda case: replace(case, image=store_float32(case.values(), case.affine)),
    "strong_bias": strong_bias,
}
CONDITIONS: tuple[str, ...] = tuple(TRANSFORMS)


def transform(case: Case, condition: str) -> Case:
    """``case`` in ``condition`` (one of :data:`CONDITIONS`)."""
    if condition not in TRANSFORMS:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    return TRANSFORMS[condition](case)
