"""Patch cutting: ``extract_patches`` (window view, border windows redone) against the flat-index gather.

Both routes fill the same ``(N, C, 7, 7, 7)`` float32 array for the same queries; the script first
checks that they agree exactly, then times them alternately (A B A B ...) in one process and
prints medians and the median of per-repeat ratios. Queries: ``N`` voxels drawn uniformly from
the grid (so some windows cross its border) and sorted in raster order, as the scheduler asks.

Usage (repository root, package installed or ``PYTHONPATH=.``)::

    python benchmarks/bench_patches.py [--grid 224 256 192] [--channels 1] [--queries 4096]
        [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ossnet_deploy.patches import _BLOCK_QUERIES, _fill_windows, extract_patches, patch_windows


def flat_gather(padded: np.ndarray, pads: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """The flat-index route alone (what ``extract_patches`` used for every small window before)."""
    offsets = patch_windows(7, large=False)
    for start in range(0, idx.shape[0], _BLOCK_QUERIES):
        block = slice(start, start + _BLOCK_QUERIES)
        _fill_windows(padded, pads, idx[block], offsets, out[block], pool=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, nargs=3, default=(224, 256, 192), help="grid sides (demo preset)")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--queries", type=int, default=4096, help="queries per call (the runtime's chunk)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    padded = rng.standard_normal((args.channels, *args.grid)).astype(np.float32)
    pads = rng.standard_normal(args.channels).astype(np.float32)
    idx = np.stack([rng.integers(0, side, args.queries) for side in args.grid], axis=1)
    idx = idx[np.lexsort((idx[:, 2], idx[:, 1], idx[:, 0]))]
    view_out = np.empty((args.queries, args.channels, 7, 7, 7), dtype=np.float32)
    flat_out = np.empty_like(view_out)

    extract_patches(padded, pads, idx, large=False, out=view_out)
    flat_gather(padded, pads, idx, flat_out)
    if not np.array_equal(view_out, flat_out):
        raise SystemExit("the two routes disagree")

    view_s, flat_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        extract_patches(padded, pads, idx, large=False, out=view_out)
        t1 = time.perf_counter()
        flat_gather(padded, pads, idx, flat_out)
        t2 = time.perf_counter()
        view_s.append(t1 - t0)
        flat_s.append(t2 - t1)
    per_query = 1e6 / args.queries
    print(f"grid {tuple(args.grid)} x {args.channels} channel(s), {args.queries} queries, {args.repeats} repeats")
    print(f"extract_patches (window view): median {statistics.median(view_s) * per_query:.2f} us/query")
    print(f"flat-index gather:             median {statistics.median(flat_s) * per_query:.2f} us/query")
    ratio = statistics.median(f / v for f, v in zip(flat_s, view_s, strict=True))
    print(f"speed-up (median of per-repeat ratios): {ratio:.2f}x")


if __name__ == "__main__":
    main()
