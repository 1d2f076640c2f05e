"""Query coordinates and local patches (docs/design.md#queries-and-patches): the only patch code in ossnet.

A query is an integer voxel ``(i, j, k)`` of the padded grid (int64 ``(N, 3)``). Training and
the runtime both call these functions, so what the decoder sees cannot drift between them.
numpy only (never torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["extract_patches", "normalise_coords", "patch_windows"]


def normalise_coords(idx: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Decoder coordinates of grid voxels: ``(2 * idx + 1) / shape - 1`` per axis.

    ``idx``: ``(N, 3)`` integer voxel indices ``(i, j, k)``; ``shape``: the grid's 3 sides.
    Returns ``(N, 3)`` float32 in ``(-1, 1)``: voxel centres, index 0 -> ``-1 + 1/shape``, index
    ``shape - 1`` -> ``1 - 1/shape`` (the "voxel_centre_minus1_plus1" convention). Computed in
    float64 and rounded once, so every caller gets bit-identical values.
    """
    arr = np.asarray(idx)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.dtype.kind not in "iu":
        raise ValueError(f"idx must be an (N, 3) integer array, got {arr.dtype} {arr.shape}")
    sides = np.asarray(shape, dtype=np.float64)
    if sides.shape != (3,) or np.any(sides < 1):
        raise ValueError(f"shape must be three positive ints, got {tuple(shape)}")
    return ((2.0 * arr + 1.0) / sides - 1.0).astype(np.float32)


def patch_windows(patch_size: int, *, large: bool) -> np.ndarray:
    """Offsets (int64, relative to the query voxel) of one axis of a patch window.

    Small window: ``-(p // 2) .. p // 2`` (p values; ``-3..3`` for p = 7). Large window:
    ``-p .. p - 1`` (2p values; ``-7..6`` for p = 7), half a voxel off-centre as in the method,
    so that 2x2x2 mean pooling gives a ``p^3`` patch.
    """
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd int, got {patch_size}")
    if large:
        return np.arange(-patch_size, patch_size, dtype=np.int64)
    half = patch_size // 2
    return np.arange(-half, half + 1, dtype=np.int64)


# Queries per gather block: bounds the int64 flat index of a large (14^3) window block to ~22 MiB.
_BLOCK_QUERIES = 1024


def _fill_windows(
    padded: np.ndarray,
    pad_values: np.ndarray,
    idx: np.ndarray,
    offsets: np.ndarray,
    dst: np.ndarray,
    pool: bool,
) -> None:
    """Fill ``dst`` ``(N, C, p, p, p)`` with the windows ``idx + offsets`` of every channel.

    Per axis the window indices are an ``(N, w)`` array, clipped into the grid; one flat index
    ``(N, w, w, w)`` serves all channels (one ``take`` each); voxels whose unclipped index lies
    outside the grid are then overwritten with the channel's pad value. With ``pool`` the
    ``w = 2p`` windows are reduced by 2x2x2 mean pooling before they are written.
    """
    n, w = idx.shape[0], offsets.size
    sides = padded.shape[1:]
    clipped = []
    inside_axes = []
    for a in range(3):
        pos = idx[:, a, None] + offsets[None, :]  # (N, w)
        inside_axes.append((pos >= 0) & (pos < sides[a]))
        clipped.append(np.clip(pos, 0, sides[a] - 1))
    flat = (
        (clipped[0] * (sides[1] * sides[2]))[:, :, None, None]
        + (clipped[1] * sides[2])[:, None, :, None]
        + clipped[2][:, None, None, :]
    )
    outside = None
    if not all(bool(m.all()) for m in inside_axes):
        outside = ~(
            inside_axes[0][:, :, None, None] & inside_axes[1][:, None, :, None] & inside_axes[2][:, None, None, :]
        )
    window = np.empty((n, w, w, w), dtype=np.float32)
    for c in range(padded.shape[0]):
        channel = padded[c]
        # reshape(-1) is a view only for C-contiguous channels; otherwise index per axis.
        if channel.flags.c_contiguous:
            np.take(channel.reshape(-1), flat, out=window, mode="clip")
        else:
            window[...] = channel[clipped[0][:, :, None, None], clipped[1][:, None, :, None],
                                  clipped[2][:, None, None, :]]
        if outside is not None:
            np.copyto(window, pad_values[c], where=outside)
        if pool:
            # Pairwise sums along each axis in turn (8x faster than a 7-d reshape mean); the
            # factor 1/8 is a power of two, so scaling by it is exact.
            pairs_i = window[:, 0::2] + window[:, 1::2]
            pairs_ij = pairs_i[:, :, 0::2] + pairs_i[:, :, 1::2]
            target = dst[:, c]
            np.add(pairs_ij[..., 0::2], pairs_ij[..., 1::2], out=target)
            target *= np.float32(0.125)
        else:
            dst[:, c] = window


def _fill_small_windows(
    views: list[np.ndarray],
    padded: np.ndarray,
    pad_values: np.ndarray,
    idx: np.ndarray,
    offsets: np.ndarray,
    dst: np.ndarray,
    half: int,
) -> None:
    """:func:`_fill_windows` without pooling, through the per-channel window views ``views``.

    Each query's window is read from the view at its centre clipped to ``half .. side - 1 -
    half`` (a window wholly inside the grid); the few queries whose window crosses the border
    (centre moved by the clip) are then redone by :func:`_fill_windows`, which pads them.
    """
    sides = np.asarray(padded.shape[1:])
    corner = np.clip(idx, half, sides - 1 - half) - half
    for c, view in enumerate(views):
        dst[:, c] = view[corner[:, 0], corner[:, 1], corner[:, 2]]
    border = np.flatnonzero(np.any(corner + half != idx, axis=1))
    if border.size:
        redo = np.empty((border.size, *dst.shape[1:]), dtype=np.float32)
        _fill_windows(padded, pad_values, idx[border], offsets, redo, pool=False)
        dst[border] = redo


def extract_patches(
    padded: np.ndarray,
    pad_values: np.ndarray,
    idx: np.ndarray,
    *,
    large: bool,
    patch_size: int = 7,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Local patches of the normalised padded grid around each query voxel.

    Args:
        padded: ``(C, D, H, W)`` float32, the normalised padded grid (``PreparedVolume.padded``;
            C-contiguous for the fast path; never copied).
        pad_values: ``(C,)`` float32, each channel's value outside the grid.
        idx: ``(N, 3)`` integer query voxels ``(i, j, k)`` of the grid.
        large: also cut the large patch (variants B, D).
        patch_size: side ``p`` of the patches (7).
        out: optional ``(N, C_p, p, p, p)`` float32 array to fill.

    Returns:
        ``(N, C_p, p, p, p)`` float32 with ``C_p = C`` (small only) or ``2C`` (small, then large).
        Small patch: window ``idx - p//2 .. idx + p//2``. Large patch: window ``idx - p ..
        idx + p - 1`` reduced by 2x2x2 mean pooling. Voxels outside the grid take the channel's
        pad value (before pooling). Vectorised gathers in blocks of 1024 queries (no per-query
        Python loop); besides ``out``, temporaries stay below ~40 MiB whatever N is.
    """
    if padded.ndim != 4:
        raise ValueError(f"padded must be (C, D, H, W), got shape {padded.shape}")
    n_channels = padded.shape[0]
    pads = np.asarray(pad_values, dtype=np.float32)
    if pads.shape != (n_channels,):
        raise ValueError(f"pad_values must have shape ({n_channels},), got {pads.shape}")
    query = np.asarray(idx)
    if query.ndim != 2 or query.shape[1] != 3 or query.dtype.kind not in "iu":
        raise ValueError(f"idx must be an (N, 3) integer array, got {query.dtype} {query.shape}")
    query = query.astype(np.int64, copy=False)
    n = query.shape[0]
    p = patch_size
    n_out_channels = 2 * n_channels if large else n_channels
    expected = (n, n_out_channels, p, p, p)
    if out is None:
        out = np.empty(expected, dtype=np.float32)
    elif out.shape != expected or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {expected}, got {out.dtype} {out.shape}")
    if n == 0:
        return out
    small_offsets = patch_windows(p, large=False)
    large_offsets = patch_windows(p, large=True)
    sides = padded.shape[1:]
    half = p // 2
    # Every (p, p, p) window of the grid as a strided view (no copy): indexing it with the
    # windows' corners copies whole contiguous rows of p values instead of gathering every voxel
    # through a flat index (benchmarks/bench_patches.py).
    views = [sliding_window_view(padded[c], (p, p, p)) for c in range(n_channels)] if min(sides) >= p else None
    for start in range(0, n, _BLOCK_QUERIES):
        block = slice(start, min(start + _BLOCK_QUERIES, n))
        if views is None:
            _fill_windows(padded, pads, query[block], small_offsets, out[block, :n_channels], pool=False)
        else:
            _fill_small_windows(views, padded, pads, query[block], small_offsets, out[block, :n_channels], half)
        if large:
            _fill_windows(padded, pads, query[block], large_offsets, out[block, n_channels:], pool=True)
    return out
