"""Query-point sampling for training (numpy only).

A query is an integer voxel ``(i, j, k)`` of the padded grid (docs/design.md#queries-and-patches); every
function here returns ``(N, 3)`` int64 arrays in that axis order.

Two strategies, as in OSS-Net (docs/training.md#the-recipe):

* ``uniform``: every voxel of the grid equally likely. Unlike the reference code, the last
  index of every axis is reachable (``rng.integers(0, dim)``).
* ``border``: a fraction ``balance`` (default one half) drawn without replacement from a band
  around the label surface, the rest uniform.

The band is the label *boundary* dilated by a ``window``^3 (default 13^3) max filter, i.e.
about +-6 voxels around the surface. The boundary is defined as the voxels whose 3x3x3
neighbourhood (clipped to the grid) holds both label values. This is a superset of the
voxels with a nonzero Sobel gradient magnitude of the binary label (the reference's
definition): the two differ only where the Sobel differences cancel, e.g. at the centre of
a one-voxel-thick sheet or of an isolated voxel, and after the 13^3 dilation the bands agree
except next to such sub-voxel-thin structures. The grid border is not a boundary (no zero
padding), so a label touching the edge of the grid does not get a band along the edge.

For volumes sampled every step, compute the band once (``border_band``), keep its flat
indices (``band_indices``) and pass those to ``border_points`` / ``sample_points``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.morphology import max_filter

__all__ = [
    "band_indices",
    "border_band",
    "border_points",
    "label_boundary",
    "sample_points",
    "uniform_points",
]

Strategy = Literal["uniform", "border"]


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


def border_band(label: np.ndarray, window: int = 13) -> np.ndarray:
    """The sampling band: the label boundary dilated by a ``window``^3 max filter.

    Args:
        label: ``(I, J, K)`` binary label (nonzero = foreground).
        window: odd side of the dilation cube in voxels (13: about +-6 voxels around the surface).

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
) -> np.ndarray:
    """Draw ``round(n * balance)`` points from the band (without replacement), the rest uniformly.

    If the band holds fewer voxels than asked for, all of them are taken once and the
    remainder is drawn uniformly. The result is shuffled, so any prefix is a fair sample.

    Args:
        band: either the ``(I, J, K)`` bool band, or its flat indices from ``band_indices``
            (``(M,)`` int64; pass these when sampling the same volume repeatedly).
        grid_shape: ``(I, J, K)`` sizes of the grid.
        n: total number of points.
        rng: the random generator.
        balance: fraction of points taken from the band, in [0, 1].

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
    points = np.concatenate([from_band, uniform_points(dims, n - n_band, rng)], axis=0)
    return points[rng.permutation(n)]


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
