"""Geometry shared by training and the runtime: orientation, resampling and grid placement.

Conventions (docs/design.md#geometry):

* Array axis order is ``(C, i, j, k)``; every function here treats the **last three** axes as
  spatial, so it accepts ``(X, Y, Z)`` label volumes and ``(C, X, Y, Z)`` images alike.
* The canonical frame is what ``nibabel.as_closest_canonical`` gives (RAS+): a pure axis
  permutation and flip of the stored array (obliquity is kept, never resampled). The orientation
  transform is nibabel's ``(3, 2)`` "ornt" array of ``io_orientation(affine)``.
* Resampling uses the voxel-centre convention of ``align_corners=False``: output voxel ``o`` on an
  axis of ``n_out`` voxels reads input position ``(o + 0.5) * n_in / n_out - 0.5``, so the outer
  edges of the two grids coincide. Linear resampling clamps positions to ``[0, n_in - 1]``
  (torch ``F.interpolate(mode="trilinear", align_corners=False)``); nearest resampling reads
  input voxel ``floor((o + 0.5) * n_in / n_out)`` (torch ``mode="nearest-exact"``).
* A :class:`Placement` records how the canonical (possibly resampled) volume sits in the model's
  fixed grid: resampled voxel ``v`` lands on grid voxel ``v + offset``.

This module is numpy + nibabel only (never torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.morphology import face_dilate

__all__ = [
    "TISSUE_BLOCK",
    "Placement",
    "affine_text",
    "block_means",
    "canonical_orientation",
    "canonical_voxel_sizes",
    "centred_offset",
    "foreground_bbox",
    "foreground_mask",
    "from_canonical",
    "labels_to_grid",
    "labels_to_input",
    "otsu_threshold",
    "region_labels_to_input",
    "resample_linear",
    "resample_nearest",
    "spacing_resampled_shape",
    "tissue_mask",
    "to_canonical",
    "validate_affine",
]

Shape3 = tuple[int, int, int]

# Elements per slab of the per-axis resampling passes: bounds the temporaries to ~16 MiB
# float32 each, whatever the volume size (512^3 outputs included).
_SLAB_ELEMENTS = 1 << 22

#: Block side (voxels) of the block means :func:`tissue_mask` thresholds (4 mm at 1 mm spacing).
TISSUE_BLOCK = 4

_IDENTITY_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------------


def affine_text(affine: np.ndarray) -> str:
    """The top three rows of an affine on one line, for messages."""
    return "affine " + np.array2string(np.asarray(affine)[:3], precision=4, suppress_small=True,
                                       separator=",").replace("\n", "")


def validate_affine(affine: np.ndarray, *, source: str | None = None) -> np.ndarray:
    """Check a voxel-to-world affine and return it as a ``(4, 4)`` float64 array.

    The project's one affine rule, applied where an input is read (``nifti_io.check_spatial``)
    and by ``prepare_volume`` for arrays handed in directly.

    Raises :class:`InputError` (naming ``source``) when the affine is not ``(4, 4)``, holds
    non-finite values, or its 3x3 part is singular: ``|det| <= 1e-6 * prod(column norms)``, a
    relative test, so a grid of 0.1 mm voxels (det 1e-3) passes while collinear axes or a zero
    voxel size do not.
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise InputError(
            describe(source, "affine has the wrong shape", expected="a (4, 4) voxel-to-world matrix",
                     found=f"shape {aff.shape}", fix="pass the image's 4x4 affine (img.affine)")
        )
    if not np.isfinite(aff).all():
        raise InputError(
            describe(source, "affine has non-finite entries", expected="a finite voxel-to-world matrix",
                     found=affine_text(aff), fix="repair the header (qform/sform), e.g. with fslorient or nibabel")
        )
    linear = aff[:3, :3]
    scale = float(np.prod(np.linalg.norm(linear, axis=0)))
    if scale == 0.0 or abs(float(np.linalg.det(linear))) <= 1e-6 * scale:
        raise InputError(
            describe(source, "affine is singular (voxel axes do not span 3D space)",
                     expected="an invertible voxel-to-world matrix", found=affine_text(aff),
                     fix="repair the header (qform/sform; zero pixdim?), e.g. with fslorient or nibabel")
        )
    return aff


def canonical_orientation(affine: np.ndarray, *, source: str | None = None) -> np.ndarray:
    """Orientation transform from the stored array to RAS+, as ``nibabel.as_closest_canonical``.

    Returns nibabel's ``(3, 2)`` float array: row ``n`` = (canonical axis that stored axis ``n``
    becomes, ``+1``/``-1`` for kept/flipped). Raises :class:`InputError` for a bad affine.
    """
    aff = validate_affine(affine, source=source)
    ornt = io_orientation(aff)
    if np.isnan(ornt).any():
        raise InputError(
            describe(source, "the affine has no clear axis orientation", expected="three independent voxel axes",
                     found=np.array2string(aff[:3, :3], precision=4), fix="repair the image header")
        )
    return ornt


def _spatial_last(vol: np.ndarray) -> np.ndarray:
    """View with the three spatial axes moved first, as nibabel's orientation helpers expect."""
    if vol.ndim < 3:
        raise ValueError(f"expected an array whose last three axes are spatial, got shape {vol.shape}")
    return np.moveaxis(vol, (-3, -2, -1), (0, 1, 2))


def to_canonical(vol: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Reorient a stored array to RAS+ (spatial axes = the last three; any leading axes kept).

    ``vol`` is ``(..., X, Y, Z)`` as stored; the result is a **view** ``(..., I, J, K)`` equal to
    ``nibabel.as_closest_canonical`` applied to each leading index. No data are copied.
    """
    moved = apply_orientation(_spatial_last(vol), ornt)
    return np.moveaxis(moved, (0, 1, 2), (-3, -2, -1))


def from_canonical(vol: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`to_canonical` with the same ``ornt``: ``(..., I, J, K)`` -> stored.

    Returns a view; ``from_canonical(to_canonical(x, o), o)`` equals ``x`` element for element.
    """
    inverse = ornt_transform(_IDENTITY_ORNT, np.asarray(ornt, dtype=np.float64))
    moved = apply_orientation(_spatial_last(vol), inverse)
    return np.moveaxis(moved, (0, 1, 2), (-3, -2, -1))


def canonical_voxel_sizes(affine: np.ndarray, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes in mm (``nibabel.affines.voxel_sizes``) reordered to the canonical axes (i, j, k)."""
    stored = voxel_sizes(np.asarray(affine, dtype=np.float64))[:3]
    out = [0.0, 0.0, 0.0]
    for stored_axis, (canon_axis, _flip) in enumerate(np.asarray(ornt)):
        out[int(canon_axis)] = float(stored[stored_axis])
    return (out[0], out[1], out[2])


def spacing_resampled_shape(
    canonical_shape: Sequence[int],
    canonical_spacing_mm: Sequence[float],
    spacing_mm: Sequence[float],
    tolerance: float,
) -> Shape3:
    """Shape of the canonical volume once resampled to ``spacing_mm`` (the spacing check).

    If every axis' spacing is within ``tolerance`` (relative, e.g. 0.05 = 5 %) of ``spacing_mm``
    the canonical shape is returned unchanged (no resampling). Otherwise every axis gets
    ``max(1, round(n * spacing / spacing_mm))`` voxels, which keeps the physical extent to within
    half a voxel (the edges of the two grids coincide under the voxel-centre convention).
    """
    shape = tuple(int(n) for n in canonical_shape)
    have = np.asarray(canonical_spacing_mm, dtype=np.float64)
    want = np.asarray(spacing_mm, dtype=np.float64)
    if np.all(np.abs(have / want - 1.0) <= tolerance):
        return (shape[0], shape[1], shape[2])
    new = [max(1, round(n * h / w)) for n, h, w in zip(shape, have, want, strict=True)]
    return (new[0], new[1], new[2])


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _shape3(shape: Sequence[int], what: str) -> Shape3:
    dims = tuple(int(n) for n in shape)
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{what} must be three positive ints, got {tuple(shape)}")
    return (dims[0], dims[1], dims[2])


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper input index (int64, (n_out,)) and upper weight (float32) of each output voxel."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    """Input index (int64, (n_out,)) of each output voxel: ``floor((o + 0.5) * n_in / n_out)``.

    Integer arithmetic, so ties (an output centre exactly on an input voxel edge) are resolved
    exactly (upwards) rather than by float rounding.
    """
    o = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * o + 1) * n_in) // (2 * n_out), n_in - 1)


def _resample_axis(src: np.ndarray, axis: int, n_out: int, out: np.ndarray) -> None:
    """Linear resampling of a 3D float32 array along one axis into ``out``, slab by slab."""
    lo, hi, w_hi = _linear_taps(src.shape[axis], n_out)
    bshape = [1, 1, 1]
    bshape[axis] = n_out
    w_hi = w_hi.reshape(bshape)
    w_lo = (np.float32(1.0) - w_hi).astype(np.float32)
    slab_axis = 1 if axis == 0 else 0
    per_index = max(1, out.size // max(1, out.shape[slab_axis]))
    step = max(1, _SLAB_ELEMENTS // per_index)
    for start in range(0, out.shape[slab_axis], step):
        sel: list[slice] = [slice(None)] * 3
        sel[slab_axis] = slice(start, start + step)
        piece = src[tuple(sel)]
        dst = out[tuple(sel)]
        np.take(piece, lo, axis=axis, out=dst, mode="clip")
        dst *= w_lo
        upper = np.take(piece, hi, axis=axis, mode="clip")
        upper *= w_hi
        dst += upper


def resample_linear(vol: np.ndarray, out_shape: Sequence[int], *, out: np.ndarray | None = None) -> np.ndarray:
    """Trilinear resampling of ``(C, X, Y, Z)`` to ``(C, *out_shape)`` float32 (align_corners=False).

    Separable: one axis at a time, one channel at a time, in slabs, so the extra memory is two
    single-channel intermediates plus ~16 MiB slab temporaries even for 512^3 outputs. Equals
    ``torch.nn.functional.interpolate(vol[None], size=out_shape, mode="trilinear",
    align_corners=False)[0]`` to float32 rounding. Equal shapes return a float32 copy.

    ``out``: optional preallocated C-contiguous ``(C, *out_shape)`` float32 array to write into
    (e.g. the padded grid itself).
    """
    if vol.ndim != 4:
        raise ValueError(f"resample_linear expects (C, X, Y, Z), got shape {vol.shape}")
    target = _shape3(out_shape, "out_shape")
    n_channels = vol.shape[0]
    if out is None:
        out = np.empty((n_channels, *target), dtype=np.float32)
    elif out.shape != (n_channels, *target) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(n_channels, *target)}, got {out.dtype} {out.shape}")
    for c in range(n_channels):
        current = np.asarray(vol[c], dtype=np.float32)
        axes = [a for a in range(3) if current.shape[a] != target[a]]
        if not axes:
            out[c] = current
            continue
        for n, axis in enumerate(axes):
            new_shape = list(current.shape)
            new_shape[axis] = target[axis]
            dst = out[c] if n == len(axes) - 1 else np.empty(new_shape, dtype=np.float32)
            _resample_axis(current, axis, target[axis], dst)
            current = dst
    return out


def resample_nearest(labels: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes of ``labels`` to ``out_shape``.

    ``labels``: ``(..., X, Y, Z)`` of any dtype; returns ``(..., *out_shape)`` of the same dtype
    (a fresh C-contiguous array). Output voxel ``o`` reads input ``floor((o + 0.5) * n_in / n_out)``
    per axis (torch ``mode="nearest-exact"``). Upsampling by any factor >= 1 followed by the
    reverse resampling is the identity.
    """
    if labels.ndim < 3:
        raise ValueError(f"resample_nearest expects (..., X, Y, Z), got shape {labels.shape}")
    target = _shape3(out_shape, "out_shape")
    n_in = labels.shape[-3:]
    if tuple(n_in) == target:
        return np.ascontiguousarray(labels).copy()
    ii, jj, kk = (_nearest_taps(n, m) for n, m in zip(n_in, target, strict=True))
    return labels[..., ii[:, None, None], jj[None, :, None], kk[None, None, :]]


# --------------------------------------------------------------------------------------------
# Foreground and placement
# --------------------------------------------------------------------------------------------


def foreground_mask(vol: np.ndarray, threshold: float) -> np.ndarray:
    """``(X, Y, Z)`` bool: voxels where **any** channel of ``vol`` ``(C, X, Y, Z)`` exceeds ``threshold``."""
    mask = np.greater(vol[0], threshold)
    for c in range(1, vol.shape[0]):
        np.logical_or(mask, np.greater(vol[c], threshold), out=mask)
    return mask


def block_means(vol: np.ndarray, block: int) -> np.ndarray:
    """Means of ``block``^3 blocks of a 3D array (the last block per axis may be smaller), float64."""
    out = np.asarray(vol)
    counts = []
    for axis in range(3):
        starts = np.arange(0, out.shape[axis], block)
        # Accumulates in float64 without a float64 copy of the whole volume (the first pass
        # already shrinks it by ``block``).
        out = np.add.reduceat(out, starts, axis=axis, dtype=np.float64)
        counts.append(np.diff(np.append(starts, vol.shape[axis])))
    return out / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Two-class Otsu threshold of 1D ``values`` (a histogram of ``bins`` bins; the upper edge of
    the lower class). Returns the minimum when all values are equal."""
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mass = np.cumsum(hist * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = mass[:-1] / w0
        m1 = (mass[-1] - mass[:-1]) / w1
        between = w0 * w1 * (m0 - m1) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(edges[1 + int(np.argmax(between))])


def tissue_mask(vol: np.ndarray, fraction: float, *, block: int = TISSUE_BLOCK) -> np.ndarray:
    """``(X, Y, Z)`` bool: the imaged object ("tissue") of ``vol`` ``(C, X, Y, Z)``, from the
    image's own histogram, independent of how much background or field of view the volume has.

    Per channel: the volume's ``block``^3 block means (noise averages out, so a noisy background
    stays far below tissue); a two-class Otsu threshold on them separates background from tissue
    when there is background, or dark from bright tissue when the field of view holds little;
    the tissue level ``ref`` is the 90th percentile of the blocks above it, bright tissue either
    way; tissue is then every voxel above ``fraction * ref`` that lies in or next to a block whose
    mean is above it too (noise far from the object is not) and has a face neighbour above it (a
    lone noise voxel is not). A voxel is foreground when it is tissue
    in any channel (docs/design.md#intensities). Meant for MR magnitude images, whose background
    sits near zero; a channel that is constant or non-positive contributes nothing.
    """
    shape = vol.shape[1:]
    mask = np.zeros(shape, dtype=bool)
    for c in range(vol.shape[0]):
        means = block_means(vol[c], block)
        split = otsu_threshold(means.reshape(-1))
        above = means[means > split]
        if above.size == 0:
            continue
        ref = float(np.percentile(above, 90))
        if not ref > 0.0:
            continue
        threshold = fraction * ref
        # One block of margin, so that the object's rim is tissue wherever the block grid falls.
        blocks = face_dilate(means > threshold)
        grown = np.repeat(np.repeat(np.repeat(blocks, block, 0), block, 1), block, 2)[: shape[0], : shape[1], : shape[2]]
        voxels = grown & (vol[c] > threshold)
        # A lone voxel above the threshold is noise (a Rayleigh tail), not tissue.
        np.logical_or(mask, voxels & face_dilate(voxels, keep_centre=False), out=mask)
    return mask


def foreground_bbox(mask: np.ndarray) -> tuple[Shape3, Shape3] | None:
    """Bounding box ``(lo, hi)`` of a 3D bool mask (``lo`` inclusive, ``hi`` exclusive); None if empty."""
    lo: list[int] = []
    hi: list[int] = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            return None
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def centred_offset(
    lo: Sequence[int], hi: Sequence[int], grid_shape: Sequence[int], shift: Sequence[int]
) -> tuple[Shape3, Shape3]:
    """Integer offsets that put the box ``[lo, hi)`` at the grid centre, plus a training shift.

    Per axis the centred offset is ``(S - lo - hi) // 2``: the box centre ``(lo + hi) / 2`` lands
    on the grid centre ``S / 2`` exactly when ``S - lo - hi`` is even, otherwise half a voxel
    towards index 0. ``shift`` is then added, but clipped so that a box that fits stays wholly
    inside the grid (a shift must never crop the foreground). Returns ``(offset, applied_shift)``.
    """
    offsets: list[int] = []
    applied: list[int] = []
    for a in range(3):
        size = int(grid_shape[a])
        centred = (size - int(lo[a]) - int(hi[a])) // 2
        off = centred + int(shift[a])
        low_bound, high_bound = -int(lo[a]), size - int(hi[a])
        if low_bound <= high_bound:
            off = min(max(off, low_bound), high_bound)
        offsets.append(off)
        applied.append(off - centred)
    return (offsets[0], offsets[1], offsets[2]), (applied[0], applied[1], applied[2])


@dataclass(frozen=True)
class Placement:
    """How a stored volume maps onto the model grid (all shapes/offsets in voxels, order (i, j, k)).

    Chain: stored ``(X, Y, Z)`` --orientation ``ornt``--> canonical ``canonical_shape`` --resample
    (linear for images, nearest for labels)--> ``resampled_shape`` --offset--> grid ``grid_shape``.
    Resampled voxel ``v`` sits on grid voxel ``v + offset``; offsets may be negative (cropping).

    Attributes:
        stored_shape: spatial shape of the array as stored (the input NIfTI's axes).
        ornt: orientation transform stored -> RAS+, nibabel rows ``(canonical axis, +1/-1)``.
        canonical_shape: spatial shape after reorientation.
        canonical_spacing_mm: voxel sizes (mm) of the canonical axes.
        resampled_shape: shape after resampling (equals ``canonical_shape`` when not resampled;
            equals ``grid_shape`` for ``fixed_shape_resample``).
        offset: grid index of resampled voxel (0, 0, 0).
        shift: training shift actually applied (after clipping), included in ``offset``.
        grid_shape: the model grid (``PreprocessConfig.shape``).
    """

    stored_shape: Shape3
    ornt: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    canonical_shape: Shape3
    canonical_spacing_mm: tuple[float, float, float]
    resampled_shape: Shape3
    offset: Shape3
    shift: Shape3
    grid_shape: Shape3

    @property
    def ornt_array(self) -> np.ndarray:
        """The orientation as nibabel's ``(3, 2)`` float array."""
        return np.asarray(self.ornt, dtype=np.float64)

    @property
    def zoom(self) -> tuple[float, float, float]:
        """Resampling factors ``resampled_shape / canonical_shape`` per canonical axis (1.0 = none)."""
        z = [r / c for r, c in zip(self.resampled_shape, self.canonical_shape, strict=True)]
        return (z[0], z[1], z[2])

    @property
    def resampled_spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the resampled volume, i.e. of the grid, per canonical axis."""
        s = [sp / z for sp, z in zip(self.canonical_spacing_mm, self.zoom, strict=True)]
        return (s[0], s[1], s[2])

    @property
    def region(self) -> tuple[slice, slice, slice]:
        """The input's part of the grid: slices into the grid, clipped to it."""
        sl = [
            slice(min(max(o, 0), g), min(max(o + r, 0), g))
            for o, r, g in zip(self.offset, self.resampled_shape, self.grid_shape, strict=True)
        ]
        return (sl[0], sl[1], sl[2])

    @property
    def source_region(self) -> tuple[slice, slice, slice]:
        """The resampled volume's part that lands in the grid (same extent as :attr:`region`)."""
        sl = [slice(r.start - o, r.stop - o) for r, o in zip(self.region, self.offset, strict=True)]
        return (sl[0], sl[1], sl[2])


def _as_label_array(labels: np.ndarray, expected: Sequence[int], what: str, source: str | None) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != tuple(expected):
        raise InputError(
            describe(source, f"{what} has the wrong shape", expected=f"shape {tuple(expected)}",
                     found=f"shape {arr.shape}", fix="pass the label volume that belongs to this image")
        )
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "biuf":
        raise InputError(describe(source, f"{what} is not numeric", expected="integer labels 0..255",
                                  found=f"dtype {arr.dtype}", fix="store the labels as integers"))
    if arr.size and (arr.min() < 0 or arr.max() > 255 or (arr.dtype.kind == "f" and not np.all(arr == np.rint(arr)))):
        raise InputError(
            describe(source, f"{what} holds values that are not labels", expected="integers in 0..255",
                     found=f"values in [{arr.min()}, {arr.max()}]", fix="store integer class labels")
        )
    return arr.astype(np.uint8)


def labels_to_grid(label: np.ndarray, placement: Placement, *, source: str | None = None) -> np.ndarray:
    """Map a label volume on the stored grid onto the model grid (training targets).

    ``label``: ``(X, Y, Z)`` integer labels 0..255 on the stored grid (the image's own axes).
    Returns a C-contiguous uint8 array of ``placement.grid_shape``: reoriented to RAS+, resampled
    with nearest neighbour to ``resampled_shape``, placed at ``offset``; grid voxels outside the
    input are 0 and input voxels outside the grid are dropped.
    """
    arr = _as_label_array(label, placement.stored_shape, "the label volume", source)
    canon = to_canonical(arr, placement.ornt_array)
    resampled = resample_nearest(canon, placement.resampled_shape)
    grid = np.zeros(placement.grid_shape, dtype=np.uint8)
    grid[placement.region] = resampled[placement.source_region]
    return grid


def labels_to_input(grid_labels: np.ndarray, placement: Placement, *, source: str | None = None) -> np.ndarray:
    """Map a uint8 segmentation on the model grid back onto the stored input grid.

    ``grid_labels``: ``placement.grid_shape`` uint8 (any integer labels 0..255). Only its
    ``placement.region`` is read; see :func:`region_labels_to_input` for the result.
    """
    arr = _as_label_array(grid_labels, placement.grid_shape, "the grid segmentation", source)
    return region_labels_to_input(arr[placement.region], placement, source=source)


def region_labels_to_input(
    region_labels: np.ndarray, placement: Placement, *, source: str | None = None
) -> np.ndarray:
    """Map a segmentation of the input's region of the grid back onto the stored input grid.

    ``region_labels``: uint8 (any integer labels 0..255) of the shape of ``placement.region``
    (what the scheduler returns; no grid-sized array is needed). Returns a C-contiguous uint8
    ``placement.stored_shape`` array in the stored axis order: inverse placement (input voxels
    that fell outside the grid get 0), nearest resampling back to the canonical shape, inverse
    orientation. The result belongs with the input's own affine and header.
    """
    region_shape = tuple(s.stop - s.start for s in placement.region)
    arr = _as_label_array(region_labels, region_shape, "the region segmentation", source)
    if placement.resampled_shape == region_shape == placement.canonical_shape:
        # The whole input landed in the grid unresampled: the region is the canonical volume.
        canon = arr
    else:
        resampled = np.zeros(placement.resampled_shape, dtype=np.uint8)
        resampled[placement.source_region] = arr
        canon = resample_nearest(resampled, placement.canonical_shape)
    return np.ascontiguousarray(from_canonical(canon, placement.ornt_array))
