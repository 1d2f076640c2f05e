"""Training memory per query of OSS-Net's per-query part (patch encoder + decoder), forward + backward.

What is measured: one training step ``loss = BCE-with-logits(decode(coords, patches, latent))``
followed by ``loss.backward()`` for ``N`` queries of one volume, with the model in training mode
(batch statistics, the lean backward active). The encoder runs once per volume whatever N is, so it
is replaced by a fixed latent leaf tensor that requires grad (its gradient path into the decoder is
still exercised). Bytes per query are the *slope* between two query counts,
``(peak(N2) - peak(N1)) / (N2 - N1)``: weights, gradient buffers, allocator and library overheads
do not grow with N and cancel. Everything that does grow is counted: inputs (coordinates, patches,
targets), activations kept for backward, gradients of activations and temporaries alive at the peak.

Two independent measures, each run in a fresh child process per (mode, N), alternated:

* ``rss``: the peak resident set (``VmHWM`` of ``/proc/self/status``, reset by writing ``5`` to
  ``/proc/self/clear_refs`` just before the step) minus the resident set before it, as
  docs/design.md#measuring prescribes. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536``:
  every tensor buffer is then its own ``mmap`` returned to the kernel when freed, so the
  resident set follows the live tensors instead of glibc's free lists (whose reuse would hide
  part of the peak).
* ``allocator``: torch's CPU allocator events recorded by ``torch.profiler`` (``profile_memory``):
  the running sum of allocated minus freed bytes during the step; its maximum is the exact peak of
  live tensor memory (no page rounding, no non-torch memory).

Modes: ``lean`` (default: :class:`~ossnet_train.pau.PAUFunction` and the decoder's fused CBN+PAU
function keep only their inputs) and ``naive`` (``lean_backward(False)``: the same arithmetic
composed from tensor ops, autograd keeps every intermediate).

The step times recorded beside the bytes are not a speed benchmark: forcing ``mmap`` makes every
allocation fault in fresh pages, which penalises the lean path's per-slice temporaries.

Usage (repository root, package installed or ``PYTHONPATH=.``):
``python benchmarks/bench_train_memory.py [--variant c] [--preset brats] [--queries 4096 8192]
[--repeats 2]``; writes ``benchmarks/results/train_memory.json``.
CPU only; about a minute on two cores for the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train_memory.json"
TARGET_BYTES_PER_QUERY = 64_000


def _child(variant: str, preset: str, mode: str, queries: int, seed: int) -> dict[str, float]:
    """Measure one (mode, N) in this process; returns byte counts."""
    import torch
    import torch.nn.functional as F

    from ossnet_deploy.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
    from ossnet_train.pau import lean_backward
    from ossnet_train.registry import create_model

    torch.manual_seed(seed)
    model = create_model(variant, preset).train()
    cfg = model.config
    coords = torch.rand(queries, 3) * 2 - 1
    patches = torch.randn(queries, cfg.patch_channels, 7, 7, 7) if cfg.uses_patches else None
    targets = (torch.rand(queries, 1) > 0.5).float()
    latent = torch.randn(1, cfg.latent_channels, cfg.latent_size, requires_grad=True)

    def step() -> None:
        logits = model.decode(coords, patches, latent)
        F.binary_cross_entropy_with_logits(logits, targets).backward()

    with lean_backward(mode == "lean"):
        step()  # warm-up: lazy library state and the parameter gradient buffers
        model.zero_grad(set_to_none=False)
        latent.grad = None

        before = current_rss_bytes()
        reset_peak_rss()
        started = time.perf_counter()
        step()
        seconds = time.perf_counter() - started
        peak = peak_rss_bytes()
        model.zero_grad(set_to_none=False)
        latent.grad = None

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    return {
        "rss_bytes": float(peak - before) if peak is not None and before is not None else float("nan"),
        "allocator_bytes": _allocator_peak(prof),
        "step_seconds": seconds,
    }


def _allocator_peak(prof: object) -> float:
    """Peak of live CPU tensor bytes during a profiled step, from the raw allocator events.

    Every allocation and free is a ``[memory]`` event with a signed byte count; ``prof.events()``
    folds those inside an operator into the operator, so the raw kineto events are read instead
    (an internal but long-standing attribute; NaN if a torch version lacks it).
    """
    try:
        raw = prof.profiler.kineto_results.events()  # type: ignore[attr-defined]
        memory = sorted(((e.start_ns(), e.nbytes()) for e in raw if e.name() == "[memory]"), key=lambda t: t[0])
    except AttributeError:
        return float("nan")
    live = high = 0
    for _, nbytes in memory:
        live += nbytes
        high = max(high, live)
    return float(high)


def _run_child(variant: str, preset: str, mode: str, queries: int, seed: int) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="2")
    # The child imports exactly what this process imports.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cmd = [sys.executable, __file__, "--child", variant, preset, mode, str(queries), str(seed)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {cmd[3:]} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="c")
    parser.add_argument("--preset", default="brats")
    parser.add_argument("--queries", type=int, nargs=2, default=(4096, 8192), metavar=("N1", "N2"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, preset, mode, queries, seed = args.child
        print(json.dumps(_child(variant, preset, mode, int(queries), int(seed))))
        return

    n1, n2 = args.queries
    samples: dict[str, dict[int, list[dict[str, float]]]] = {"lean": {n1: [], n2: []}, "naive": {n1: [], n2: []}}
    for repeat in range(args.repeats):
        for mode in ("lean", "naive"):  # alternated, so drift on a shared machine hits both alike
            for queries in (n1, n2):
                result = _run_child(args.variant, args.preset, mode, queries, seed=repeat)
                samples[mode][queries].append(result)
                print(f"{mode:5s} N={queries:6d} rss={result['rss_bytes'] / 2**20:8.1f} MiB "
                      f"allocator={result['allocator_bytes'] / 2**20:8.1f} MiB step={result['step_seconds']:.2f} s",
                      flush=True)

    def per_query(mode: str, key: str) -> float:
        slopes = [(b[key] - a[key]) / (n2 - n1) for a, b in zip(samples[mode][n1], samples[mode][n2], strict=True)]
        return statistics.median(slopes)

    import torch

    summary = {
        mode: {
            "rss_bytes_per_query": per_query(mode, "rss_bytes"),
            "allocator_bytes_per_query": per_query(mode, "allocator_bytes"),
        }
        for mode in ("lean", "naive")
    }
    report = {
        "benchmark": "train_memory",
        "what": f"{args.variant} {args.preset}: patch encoder + decoder, forward + backward, bytes per query (slope)",
        "queries": [n1, n2],
        "repeats": args.repeats,
        "target_bytes_per_query": TARGET_BYTES_PER_QUERY,
        "results": summary,
        "gain_naive_over_lean": summary["naive"]["allocator_bytes_per_query"]
        / summary["lean"]["allocator_bytes_per_query"],
        "samples": {mode: {str(q): v for q, v in by_q.items()} for mode, by_q in samples.items()},
        "note": "step_seconds is the wall time of the measured step with glibc forced to mmap every "
        "buffer (page faults on every allocation); it is not a speed measurement",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for mode in ("lean", "naive"):
        r = summary[mode]
        print(f"{mode:5s}: {r['allocator_bytes_per_query'] / 1000:7.1f} kB/query (allocator), "
              f"{r['rss_bytes_per_query'] / 1000:7.1f} kB/query (VmHWM)")
    print(f"target <= {TARGET_BYTES_PER_QUERY / 1000:.0f} kB/query; wrote {args.out}")


if __name__ == "__main__":
    main()
