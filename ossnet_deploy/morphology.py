"""Binary morphology and lattice-cell helpers (numpy only, no scipy).

All arrays are 3D with axes ``(i, j, k)`` of the padded grid (or a sub-lattice of it).
Masks are ``bool`` (``uint8`` 0/1 works too; the result keeps the input dtype).

* :func:`max_filter` is the binary dilation the reference inference uses
  (``torch.nn.functional.max_pool3d(kernel_size=k, stride=1, padding=k // 2)``), computed as a
  separable maximum over shifted views.
* :func:`cell_any` and :func:`cell_points` move between the points of a lattice and its cells:
  a lattice with ``2 m + 1`` points per axis holds ``m`` closed cells per axis, cell ``a`` being
  the points ``2 a, 2 a + 1, 2 a + 2`` (its two corners and the midpoint between them).
* :func:`face_dilate` grows a mask by its 6 face neighbours, :func:`erode` shrinks it by them
  (the tissue foreground and the input profile's rim, ``ossnet_deploy.geometry`` and
  ``ossnet_deploy.preprocess``).
* :func:`bounding_box` finds the smallest box holding every set voxel.
"""

from __future__ import annotations

import numpy as np

from ossnet_deploy.errors import InputError, describe

__all__ = ["bounding_box", "cell_any", "cell_points", "erode", "face_dilate", "max_filter"]


def _along(axis: int, sl: slice) -> tuple[slice, ...]:
    """Index tuple that applies ``sl`` to ``axis`` of a 3D array and keeps the other axes whole."""
    index = [slice(None)] * 3
    index[axis] = sl
    return tuple(index)


def _max_filter_axis(mask: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Maximum over a centred window of ``size`` (odd) voxels along ``axis``; outside counts as 0."""
    radius = size // 2
    length = mask.shape[axis]
    padded_shape = list(mask.shape)
    padded_shape[axis] = length + 2 * radius
    window = np.zeros(padded_shape, dtype=mask.dtype)
    window[_along(axis, slice(radius, radius + length))] = mask
    # Doubling: after each step `window[t]` is the maximum over [t, t + span) of the padded
    # input, so a window of `size` costs about log2(size) + 1 whole-array maxima, not size - 1.
    span = 1
    while 2 * span <= size:
        window = np.maximum(window[_along(axis, slice(None, -span))], window[_along(axis, slice(span, None))])
        span *= 2
    rest = size - span
    if rest:
        # [t, t + span) and [t + rest, t + rest + span) overlap (rest < span) and cover [t, t + size).
        window = np.maximum(window[_along(axis, slice(None, -rest))], window[_along(axis, slice(rest, None))])
    return window


def max_filter(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation of a 3D mask by a ``size``^3 cube (a max filter); voxels outside count as 0.

    Args:
        mask: ``(D, H, W)`` ``bool`` or ``uint8`` (0/1) array, axes ``(i, j, k)``.
        size: odd window edge in voxels (the reference uses 9 and 3).

    Returns:
        ``(D, H, W)`` array of the input's dtype: voxel ``v`` is set when any voxel within Chebyshev
        distance ``size // 2`` of ``v`` is set. Equal to
        ``max_pool3d(mask, kernel_size=size, stride=1, padding=size // 2)``.
    """
    if mask.ndim != 3:
        raise InputError(describe(None, "max_filter needs a 3D mask", expected="ndim 3", found=f"shape {mask.shape}",
                                  fix="pass one (D, H, W) volume"))
    if size < 1 or size % 2 == 0:
        raise InputError(describe(None, "max_filter needs an odd window", expected="odd size >= 1", found=f"{size}",
                                  fix="use a centred window such as 3 or 9"))
    out = mask
    for axis in range(3):
        out = _max_filter_axis(out, axis, size)
    return out


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` eroded ``steps`` times by its 6 face neighbours (voxels outside the array count as
    background), so the result is the part at least ``steps`` voxels inside."""
    outside = ~mask
    for _ in range(steps):
        outside = face_dilate(outside)
    inner = mask & ~outside
    # The array's own border is outside too.
    for axis in range(3):
        edge = [slice(None)] * 3
        edge[axis] = slice(0, min(steps, mask.shape[axis]))
        inner[tuple(edge)] = False
        edge[axis] = slice(max(mask.shape[axis] - steps, 0), None)
        inner[tuple(edge)] = False
    return inner


def face_dilate(mask: np.ndarray, *, keep_centre: bool = True) -> np.ndarray:
    """``mask`` dilated by its 6 face neighbours (``keep_centre=False``: the neighbours alone)."""
    out = mask.copy() if keep_centre else np.zeros_like(mask)
    for axis in range(3):
        lead = [slice(None)] * 3
        trail = [slice(None)] * 3
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        out[tuple(lead)] |= mask[tuple(trail)]
        out[tuple(trail)] |= mask[tuple(lead)]
    return out


def cell_any(points: np.ndarray) -> np.ndarray:
    """Per closed cell of a lattice, whether any of its ``3 x 3 x 3`` points is set.

    Args:
        points: ``(2 m0 + 1, 2 m1 + 1, 2 m2 + 1)`` ``bool``: values at the points of a lattice
            (corners at even indices, midpoints at odd indices).

    Returns:
        ``(m0, m1, m2)`` ``bool``: cell ``(a, b, c)`` covers points ``2a..2a+2, 2b..2b+2, 2c..2c+2``.
    """
    out = points
    for axis in range(3):
        out = (out[_along(axis, slice(0, -1, 2))] | out[_along(axis, slice(1, None, 2))]
               | out[_along(axis, slice(2, None, 2))])
    return out


def cell_points(cells: np.ndarray) -> np.ndarray:
    """The points covered by a set of closed cells (the inverse direction of :func:`cell_any`).

    Args:
        cells: ``(m0, m1, m2)`` ``bool`` cell mask.

    Returns:
        ``(2 m0 + 1, 2 m1 + 1, 2 m2 + 1)`` ``bool``: point ``p`` is set when any cell holding it is
        set (a corner plane belongs to the two cells either side of it).
    """
    out = cells
    for axis in range(3):
        cells_n = out.shape[axis]
        shape = list(out.shape)
        shape[axis] = 2 * cells_n + 1
        spread = np.zeros(shape, dtype=bool)
        spread[_along(axis, slice(1, None, 2))] = out
        spread[_along(axis, slice(0, -1, 2))] |= out
        spread[_along(axis, slice(2, None, 2))] |= out
        out = spread
    return out


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Smallest box holding every set voxel of a 3D mask.

    Returns:
        ``((lo0, hi0), (lo1, hi1), (lo2, hi2))`` with exclusive upper ends, or ``None`` when
        nothing is set.
    """
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)
