"""Query-point sampling for training (numpy only).

A query is an integer voxel ``(i, j, k)`` of the padded grid (docs/design.md#queries-and-patches); every
function here returns ``(N, 3)`` int64 arrays in that axis order.

Two strategies, as in OSS-Net (docs/training.md#the-recipe):

* ``uniform``: every voxel of the grid equally likely. Unlike the reference code, the last
  index of every axis is reachable (``rng.integers(0, dim)``).
* ``border``: a fraction ``balance`` (default one half) drawn without replacement from a band
  around the label surface, the rest from ``fill`` (default: uniform over the grid; training
  draws them mostly from the input's foreground, :func:`frame_points`).

The band is the label *boundary* dilated by a ``window``^3 max filter. The boundary is defined
as the voxels whose 3x3x3 neighbourhood (clipped to the grid) holds both label values. This is
a superset of the voxels with a nonzero Sobel gradient magnitude of the binary label (the
reference's definition): the two differ only where the Sobel differences cancel, e.g. at the
centre of a one-voxel-thick sheet or of an isolated voxel, and after a dilation the bands agree
except next to such sub-voxel-thin structures. The grid border is not a boundary (no zero
padding), so a label touching the edge of the grid does not get a band along the edge.

Band width: the reference dilates by 13^3 (about +-6 voxels). On the demo cohort's white matter,
a convoluted surface, that band held 1.18 times as many voxels as the whole imaged brain (it is
the brain), so "border" points were hardly nearer the surface than uniform ones; we use
:data:`BAND_WINDOW` = 5 (the boundary voxels +-2, about +-2.5 voxels from the surface).

For volumes sampled every step, compute the band once (``border_band``), keep its flat
indices (``band_indices``) and pass those to ``border_points`` / ``sample_points``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.morphology import max_filter

__all__ = [
    "BAND_WINDOW",
    "band_indices",
    "border_band",
    "border_points",
    "frame_points",
    "label_boundary",
    "sample_points",
    "uniform_points",
]

Strategy = Literal["uniform", "border"]

#: odd side of the band's dilation cube: the boundary voxels +-2 (module docstring).
BAND_WINDOW = 5


def _grid_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(
            describe(None, "invalid sampling grid", expected="three positive sizes (i, j, k)", found=str(dims))
        )
    return dims  # type: ignore[return-value]


def _count(n: int) -> int:
    if int(n) != n or n < 0:
        raise InputError(describe(None, "invalid number of points", expected="an integer >= 0", found=repr(n)))
    return int(n)


def uniform_points(grid_shape: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` voxels uniformly (with replacement) from a 3D grid.

    Args:
        grid_shape: ``(I, J, K)`` sizes of the grid in voxels.
        n: number of points.
        rng: the random generator (the only source of randomness).

    Returns:
        ``(n, 3)`` int64 voxel indices ``(i, j, k)``; every index ``0 .. dim - 1`` of every
        axis, the last included, has probability ``1 / dim``.
    """
    dims = _grid_shape(grid_shape)
    n = _count(n)
    return rng.integers(0, np.asarray(dims, dtype=np.int64), size=(n, 3), dtype=np.int64)


def label_boundary(label: np.ndarray) -> np.ndarray:
    """Voxels whose 3x3x3 neighbourhood, clipped to the grid, holds both label values.

    Args:
        label: ``(I, J, K)`` binary label (bool or any dtype; nonzero = foreground).

    Returns:
        ``(I, J, K)`` bool; both sides of the surface are marked (the foreground voxel and its
        background neighbour). See the module docstring for how this relates to Sobel.
    """
    fg = _binary_grid(label)
    return max_filter(fg, 3) & max_filter(~fg, 3)


def border_band(label: np.ndarray, window: int = BAND_WINDOW) -> np.ndarray:
    """The sampling band: the label boundary dilated by a ``window``^3 max filter.

    Args:
        label: ``(I, J, K)`` binary label (nonzero = foreground).
        window: odd side of the dilation cube in voxels (5: the boundary +-2 voxels; the
            reference's 13: about +-6 voxels around the surface).

    Returns:
        ``(I, J, K)`` bool. Empty when the label is all background or all foreground.
    """
    return max_filter(label_boundary(label), window)


def band_indices(band: np.ndarray) -> np.ndarray:
    """Flat (C-order) indices of the band's voxels, to compute once per volume and reuse.

    Args:
        band: ``(I, J, K)`` bool.

    Returns:
        ``(M,)`` int64, sorted.
    """
    return np.flatnonzero(np.asarray(band, dtype=bool).ravel()).astype(np.int64, copy=False)


def border_points(
    band: np.ndarray,
    grid_shape: Sequence[int],
    n: int,
    rng: np.random.Generator,
    balance: float = 0.5,
    fill: Callable[[int, np.random.Generator], np.ndarray] | None = None,
) -> np.ndarray:
    """Draw ``round(n * balance)`` points from the band (without replacement), the rest from ``fill``.

    If the band holds fewer voxels than asked for, all of them are taken once and the
    remainder comes from ``fill``. The result is shuffled, so any prefix is a fair sample.

    Args:
        band: either the ``(I, J, K)`` bool band, or its flat indices from ``band_indices``
            (``(M,)`` int64; pass these when sampling the same volume repeatedly).
        grid_shape: ``(I, J, K)`` sizes of the grid.
        n: total number of points.
        rng: the random generator.
        balance: fraction of points taken from the band, in [0, 1].
        fill: ``fill(m, rng) -> (m, 3)`` int64 grid voxels for the points not taken from the band;
            default uniform over the grid (:func:`uniform_points`).

    Returns:
        ``(n, 3)`` int64 voxel indices ``(i, j, k)``.
    """
    dims = _grid_shape(grid_shape)
    n = _count(n)
    if not 0.0 <= balance <= 1.0:
        raise InputError(describe(None, "invalid border balance", expected="a fraction in [0, 1]", found=str(balance)))
    flat = _as_band_indices(band, dims)
    n_band = min(round(n * balance), flat.size)
    chosen = flat[rng.choice(flat.size, size=n_band, replace=False)] if n_band else flat[:0]
    from_band = np.stack(np.unravel_index(chosen, dims), axis=1).astype(np.int64, copy=False)
    rest = uniform_points(dims, n - n_band, rng) if fill is None else fill(n - n_band, rng)
    points = np.concatenate([from_band, rest], axis=0)
    return points[rng.permutation(n)]


def frame_points(
    n: int,
    rng: np.random.Generator,
    *,
    frame_shape: Sequence[int],
    offset: Sequence[int],
    grid_shape: Sequence[int],
    mask: np.ndarray | None = None,
    flipped: Sequence[int] = (),
) -> np.ndarray:
    """``n`` grid voxels drawn uniformly from a frame placed in the grid: the input's region, or its mask.

    The frame is an array of ``frame_shape`` whose voxel ``v`` sits on grid voxel ``v + offset``
    (the input's resampled volume: ``offset`` may be negative, and parts of the frame may fall
    outside the grid); ``flipped`` axes are then mirrored in the grid (``i -> I - 1 - i``), as the
    augmentation's flips are. Points are drawn uniformly among the frame voxels that land inside
    the grid and, when ``mask`` (bool, ``frame_shape``) is given, are True in it (rejection
    sampling, with replacement). If too few such voxels turn up (an empty mask, a frame outside
    the grid), the rest is uniform over the grid.

    Returns:
        ``(n, 3)`` int64 grid indices ``(i, j, k)``.
    """
    dims = np.asarray(_grid_shape(grid_shape), dtype=np.int64)
    frame = np.asarray(_grid_shape(frame_shape), dtype=np.int64)
    shift = np.asarray(offset, dtype=np.int64)
    n = _count(n)
    if mask is not None and tuple(np.shape(mask)) != tuple(frame):
        raise InputError(describe(None, "mask does not match the frame", expected=f"shape {tuple(frame)}",
                                  found=f"shape {np.shape(mask)}"))
    # Draw only inside the part of the frame that lands in the grid.
    lo = np.maximum(0, -shift)
    hi = np.minimum(frame, dims - shift)
    found: list[np.ndarray] = []
    have = 0
    if n and (hi > lo).all():
        for _ in range(32):
            want = n - have
            if want <= 0:
                break
            share = float(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].mean()) if mask is not None and not found else 1.0
            if share == 0.0:
                break
            candidates = rng.integers(lo, hi, size=(min(int(want / max(share, 0.05) * 1.2) + 16, 1 << 22), 3),
                                      dtype=np.int64)
            if mask is not None:
                candidates = candidates[mask[candidates[:, 0], candidates[:, 1], candidates[:, 2]]]
            found.append(candidates[:want])
            have += len(found[-1])
    points = np.concatenate([*found, np.empty((0, 3), np.int64)], axis=0) + shift
    for axis in flipped:
        points[:, axis] = dims[axis] - 1 - points[:, axis]
    if len(points) < n:
        points = np.concatenate([points, uniform_points(tuple(dims), n - len(points), rng)], axis=0)
    return points


def sample_points(
    label_grid: np.ndarray,
    n: int,
    rng: np.random.Generator,
    strategy: Strategy = "uniform",
    band: np.ndarray | None = None,
    balance: float = 0.5,
) -> np.ndarray:
    """Query points for one training volume.

    Args:
        label_grid: ``(I, J, K)`` label on the padded grid (nonzero = foreground); only its
            shape is used for ``uniform``, and for ``border`` when ``band`` is given.
        n: number of points.
        rng: the random generator.
        strategy: ``"uniform"`` or ``"border"``.
        band: for ``border``, the precomputed band (bool grid or ``band_indices``); computed
            from ``label_grid`` when omitted.
        balance: fraction of points from the band (``border`` only).

    Returns:
        ``(n, 3)`` int64 voxel indices ``(i, j, k)``.
    """
    dims = _grid_shape(np.shape(label_grid))
    if strategy == "uniform":
        return uniform_points(dims, n, rng)
    if strategy == "border":
        if band is None:
            band = band_indices(border_band(label_grid))
        return border_points(band, dims, n, rng, balance=balance)
    raise InputError(
        describe(None, "unknown sampling strategy", expected="'uniform' or 'border'", found=repr(strategy))
    )


def _binary_grid(label: np.ndarray) -> np.ndarray:
    arr = np.asarray(label)
    if arr.ndim != 3:
        raise InputError(describe(None, "label grid is not 3D", expected="(I, J, K)", found=f"shape {arr.shape}"))
    return arr.astype(bool, copy=False)


def _as_band_indices(band: np.ndarray, dims: tuple[int, int, int]) -> np.ndarray:
    arr = np.asarray(band)
    if arr.dtype == bool:
        if arr.shape != dims:
            raise InputError(
                describe(None, "band does not match the grid", expected=f"shape {dims}", found=f"shape {arr.shape}")
            )
        return band_indices(arr)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            describe(
                None,
                "invalid band",
                expected="a bool (I, J, K) grid or 1D int flat indices from band_indices",
                found=f"{arr.dtype} array of shape {arr.shape}",
            )
        )
    if arr.size and (arr.min() < 0 or arr.max() >= int(np.prod(dims))):
        raise InputError(
            describe(None, "band indices outside the grid", expected=f"flat indices of a {dims} grid", found=f"range {arr.min()}..{arr.max()}")
        )
    return arr.astype(np.int64, copy=False)
