"""Benchmark the runtime: queries, time per stage, peak memory, agreement with dense.

Every measurement runs in its own Python process, so ``VmHWM`` (the kernel's peak resident
memory, docs/design.md#measuring) belongs to that run alone; configurations that are compared
run alternately (A B C A B C ...) and the tables report medians over the repeats.

Studies (``--study``):

* ``volumes`` (default): per input volume and scheduler mode: decoder queries per stage, time
  per stage (read, prepare, encode, each scheduler stage, restore), peak memory, and Dice
  against ``dense``. ``dense`` runs once per volume, outside every timing median (it only
  provides the reference labels; its own time is listed as a single run).
* ``arena``: ONNX Runtime's CPU memory arena and memory patterns on/off, over one sequence of
  decoder calls with varying query counts (as the scheduler makes them): peak and final RSS,
  time. Chooses ``OrtBackend``'s defaults.
* ``chunks``: decode throughput (patch cutting + coordinates + decoder) and peak memory per
  chunk size ``max_queries``: the speed/memory knee that sets ``DEFAULT_MAX_QUERIES``.
* ``memory``: peak memory of whole ``segment`` calls against the input's voxel count (crops of
  the input): the intercept is the fixed cost (sessions, model grid, one chunk), the slope the
  bytes per input voxel.

Results go to ``benchmarks/results/segmenter_<study>[_<tag>].json`` and ``.md``. Examples::

    python benchmarks/bench_segmenter.py -m MODEL_DIR -i volume.nii.gz --repeats 3
    python benchmarks/bench_segmenter.py --study arena -m MODEL_DIR
    python benchmarks/bench_segmenter.py --study chunks -m MODEL_DIR -i volume.nii.gz
    python benchmarks/bench_segmenter.py --study memory -m MODEL_DIR -i volume.nii.gz

Without ``-m`` the bundled default model is used (once it exists).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 2**20


# ------------------------------------------------------------------------------------ workers
# Each worker runs in a fresh interpreter and prints one JSON object on its last stdout line.


def _worker_segment(spec: dict[str, Any]) -> dict[str, Any]:
    from ossnet_deploy.memory import current_rss_bytes
    from ossnet_deploy.segmenter import Segmenter

    seg = Segmenter.from_dir(spec["model"], device=spec["device"], max_queries=spec["max_queries"],
                             threads=spec["threads"], mode=spec["mode"])
    after_load = current_rss_bytes()
    for _ in range(spec["warmup"]):
        seg.segment_with_stats(spec["input"])
    baseline = current_rss_bytes()
    image, stats = seg.segment_with_stats(spec["input"])
    if spec.get("labels_out"):
        np.save(spec["labels_out"], np.asarray(image.dataobj, dtype=np.uint8))
    return {
        "stage_seconds": [list(x) for x in stats.stage_seconds],
        "stage_queries": [list(x) for x in stats.stage_queries],
        "total_queries": stats.total_queries,
        "dense_queries": stats.dense_queries,
        "total_seconds": stats.total_seconds,
        "peak_rss_bytes": stats.peak_rss_bytes,
        "baseline_rss_bytes": baseline,
        "rss_after_load_bytes": after_load,
        "input_shape": list(stats.input_shape),
        "device": stats.device,
        "max_queries": stats.max_queries,
    }


def _worker_arena(spec: dict[str, Any]) -> dict[str, Any]:
    from ossnet_deploy.backends.ort import OrtBackend
    from ossnet_deploy.memory import current_rss_bytes, peak_rss_bytes

    backend = OrtBackend(Path(spec["model"]) / "decoder.onnx", device="cpu", threads=spec["threads"],
                         cpu_arena=spec["arena"], mem_pattern=spec["pattern"])
    rng = np.random.default_rng(0)
    fixed = {name: rng.standard_normal([int(d) for d in s.shape]).astype(np.float32)
             for name, s in backend.inputs.items() if all(isinstance(d, int) for d in s.shape)}
    start_rss = current_rss_bytes()
    started = time.perf_counter()
    rss_trace = []
    for n in spec["sizes"]:
        feed = dict(fixed)
        for name, s in backend.inputs.items():
            if name not in fixed:
                feed[name] = rng.uniform(-1, 1, [n if not isinstance(d, int) else d for d in s.shape]).astype(np.float32)
        backend.run(feed)
        rss_trace.append(current_rss_bytes())
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes(),
            "final_rss_bytes": current_rss_bytes(), "start_rss_bytes": start_rss,
            "rss_after_half": rss_trace[len(rss_trace) // 2]}


def _worker_chunk(spec: dict[str, Any]) -> dict[str, Any]:
    from ossnet_deploy.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
    from ossnet_deploy.segmenter import Segmenter

    n = spec["n"]
    seg = Segmenter.from_dir(spec["model"], device=spec["device"], max_queries=n, threads=spec["threads"])
    state = seg.encode(spec["input"])
    region = state.prepared.region
    rng = np.random.default_rng(0)
    lo = np.array([s.start for s in region])
    hi = np.array([s.stop for s in region])
    idx = rng.integers(lo, hi, size=(n * spec["calls"], 3)).astype(np.int64)
    # Baseline: model loaded, volume prepared and encoded, no decode yet; the peak above it is
    # what chunks of n queries add (patch buffer, decoder activations, allocator slack).
    baseline = current_rss_bytes()
    reset_peak_rss()
    seg.query(state, idx[:n])  # warm-up: first-call allocations and kernel selection
    times = []
    for c in range(spec["calls"]):
        t = time.perf_counter()
        seg.query(state, idx[c * n:(c + 1) * n])
        times.append(time.perf_counter() - t)
    peak = peak_rss_bytes()
    return {"seconds_per_call": statistics.median(times), "queries_per_second": n / statistics.median(times),
            "peak_rss_bytes": peak, "baseline_rss_bytes": baseline}


_WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "segment": _worker_segment, "arena": _worker_arena, "chunk": _worker_chunk,
}


def _spawn(kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; returns its JSON result."""
    command = [sys.executable, os.path.abspath(__file__), "_worker", kind, json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker {kind} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ helpers


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MiB:.0f}"


def _median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "machine": platform.machine(), "cpus_available": len(os.sched_getaffinity(0)),
            "threads": args.threads, "device": args.device, "model": str(args.model), "git": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write(study: str, payload: dict[str, Any], markdown: str, args: argparse.Namespace) -> None:
    out_dir: Path = args.out
    name = f"segmenter_{study}" + (f"_{args.tag}" if args.tag else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwritten: {out_dir / name}.json and .md")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    from ossnet_deploy.metrics import dice

    return dice(a, b)


# ------------------------------------------------------------------------------------ studies


def study_volumes(args: argparse.Namespace) -> None:
    modes = [m for m in args.modes.split(",") if m]
    results: list[dict[str, Any]] = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for volume in args.inputs:
            base = {"model": args.model, "input": volume, "device": args.device, "threads": args.threads,
                    "max_queries": args.max_queries, "warmup": 0}
            dense_file = os.path.join(tmp, "dense.npy")
            dense = _spawn("segment", {**base, "mode": "dense", "labels_out": dense_file}, args.timeout)
            dense_labels = np.load(dense_file)
            entry: dict[str, Any] = {"input": volume, "dense_single_run": dense, "modes": {}}
            rows.append([Path(volume).name, "dense (1 run)", f"{dense['total_queries']:,}", "100%",
                         f"{dense['total_seconds']:.2f}", _stage_text(dense), _mib(dense["peak_rss_bytes"]), "1.0000"])
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            dices: dict[str, float] = {}
            for repeat in range(args.repeats):
                for mode in modes:  # alternated: A B A B ...
                    labels_file = os.path.join(tmp, f"{mode}.npy") if repeat == 0 else None
                    run = _spawn("segment", {**base, "mode": mode, "warmup": args.warmup,
                                             "labels_out": labels_file}, args.timeout)
                    runs[mode].append(run)
                    if labels_file:
                        dices[mode] = _dice(np.load(labels_file), dense_labels)
            for mode in modes:
                summary = _summarise(runs[mode])
                summary["dice_vs_dense"] = dices[mode]
                entry["modes"][mode] = {"median": summary, "runs": runs[mode]}
                rows.append([Path(volume).name, mode, f"{summary['total_queries']:,}",
                             f"{summary['total_queries'] / summary['dense_queries']:.1%}",
                             f"{summary['total_seconds']:.2f}", _stage_text(summary), _mib(summary["peak_rss_bytes"]),
                             f"{dices[mode]:.4f}"])
            results.append(entry)
    markdown = (f"## Segmenter per volume and mode (median of {args.repeats} runs, each its own process)\n\n"
                + _table(["volume", "mode", "queries", "of dense", "seconds", "stages (s)", "peak MiB",
                          "Dice vs dense"], rows))
    _write("volumes", {"environment": _environment(args), "results": results}, markdown, args)


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in runs[0]["stage_seconds"]]
    stage_seconds = [[name, _median([dict(r["stage_seconds"]).get(name) for r in runs])] for name in names]
    return {"stage_seconds": stage_seconds, "stage_queries": runs[0]["stage_queries"],
            "total_queries": runs[0]["total_queries"], "dense_queries": runs[0]["dense_queries"],
            "total_seconds": _median([r["total_seconds"] for r in runs]),
            "peak_rss_bytes": _median([r["peak_rss_bytes"] for r in runs])}


def _stage_text(run: dict[str, Any]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in run["stage_seconds"])


def study_arena(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(1)
    # What the scheduler produces: full chunks and ragged tails of every size below them.
    sizes = [int(s) for s in rng.integers(500, args.max_queries_study + 1, size=args.calls)]
    configs = [(arena, pattern) for arena in (True, False) for pattern in (True, False)]
    runs: dict[tuple[bool, bool], list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for arena, pattern in configs:  # alternated
            runs[(arena, pattern)].append(_spawn("arena", {"model": args.model, "threads": args.threads,
                                                           "arena": arena, "pattern": pattern, "sizes": sizes},
                                                 args.timeout))
    rows = []
    payload = []
    for arena, pattern in configs:
        r = runs[(arena, pattern)]
        med = {k: _median([x[k] for x in r]) for k in ("seconds", "peak_rss_bytes", "final_rss_bytes",
                                                         "start_rss_bytes", "rss_after_half")}
        payload.append({"cpu_arena": arena, "mem_pattern": pattern, "median": med, "runs": r})
        rows.append([arena, pattern, _mib(med["start_rss_bytes"]), _mib(med["rss_after_half"]),
                     _mib(med["final_rss_bytes"]), _mib(med["peak_rss_bytes"]), f"{med['seconds']:.2f}"])
    markdown = (f"## ORT CPU arena / memory pattern over {args.calls} decoder calls, N uniform in "
                f"[500, {args.max_queries_study}] (median of {args.repeats}, alternated processes)\n\n"
                + _table(["cpu_arena", "mem_pattern", "RSS after load MiB", "RSS halfway MiB", "RSS at end MiB",
                          "peak MiB", "seconds"], rows))
    _write("arena", {"environment": _environment(args), "sizes": sizes, "results": payload}, markdown, args)


def study_chunks(args: argparse.Namespace) -> None:
    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in chunk_sizes}
    for _ in range(args.repeats):
        for n in chunk_sizes:
            calls = max(2, min(8, args.chunk_queries // n))
            runs[n].append(_spawn("chunk", {"model": args.model, "input": args.inputs[0], "device": args.device,
                                            "threads": args.threads, "n": n, "calls": calls}, args.timeout))
    rows = []
    payload = []
    for n in chunk_sizes:
        r = runs[n]
        qps = _median([x["queries_per_second"] for x in r])
        extra = _median([x["peak_rss_bytes"] - x["baseline_rss_bytes"] for x in r])
        payload.append({"max_queries": n, "queries_per_second": qps, "peak_minus_baseline_bytes": extra, "runs": r})
        rows.append([n, f"{qps:,.0f}", _mib(extra), f"{(extra or 0) / n / 1024:.1f}"])
    markdown = (f"## Decode throughput and memory per chunk size (median of {args.repeats})\n\n"
                + _table(["max_queries", "queries/s", "peak above baseline MiB", "KiB per query"], rows))
    _write("chunks", {"environment": _environment(args), "results": payload}, markdown, args)


def study_memory(args: argparse.Namespace) -> None:
    import nibabel as nib

    source = nib.load(args.inputs[0])
    data = np.asarray(source.dataobj, dtype=np.float32)
    fractions = [float(f) for f in args.fractions.split(",")]
    rows = []
    payload = []
    with tempfile.TemporaryDirectory() as tmp:
        crops = []
        for f in fractions:
            # A centred crop scaled by f per axis: the input's voxel count varies, the model's grid not.
            shape = [max(8, round(s * f)) for s in data.shape[:3]]
            start = [(s - c) // 2 for s, c in zip(data.shape[:3], shape, strict=True)]
            crop = data[tuple(slice(a, a + c) for a, c in zip(start, shape, strict=True))]
            path = os.path.join(tmp, f"crop_{f}.nii.gz")
            nib.save(nib.Nifti1Image(np.ascontiguousarray(crop), source.affine), path)
            crops.append((f, path, int(np.prod(shape))))
        runs: dict[float, list[dict[str, Any]]] = {f: [] for f, _, _ in crops}
        for _ in range(args.repeats):
            for f, path, _ in crops:
                # No warm-up: memory a warm-up call frees stays in the allocator's heap and would
                # hide part of the measured call's own working set.
                runs[f].append(_spawn("segment", {"model": args.model, "input": path, "device": args.device,
                                                  "threads": args.threads, "max_queries": args.max_queries,
                                                  "mode": args.modes.split(",")[0], "warmup": 0}, args.timeout))
    voxels, extras = [], []
    for f, _, n_vox in crops:
        r = runs[f]
        extra = _median([x["peak_rss_bytes"] - x["rss_after_load_bytes"] for x in r])
        peak = _median([x["peak_rss_bytes"] for x in r])
        voxels.append(n_vox)
        extras.append(extra)
        payload.append({"fraction": f, "input_voxels": n_vox, "peak_rss_bytes": peak,
                        "peak_minus_baseline_bytes": extra, "runs": r})
        rows.append([f, f"{n_vox:,}", _mib(peak), _mib(extra)])
    slope, intercept = np.polyfit(np.asarray(voxels, float), np.asarray(extras, float), 1)
    fit = {"bytes_per_input_voxel": float(slope), "intercept_bytes": float(intercept)}
    markdown = (f"## Peak memory of segment() against input size (median of {args.repeats}; mode "
                f"{args.modes.split(',')[0]})\n\n"
                + _table(["crop fraction", "input voxels", "peak MiB", "peak above loaded model MiB"], rows)
                + f"\n\nLinear fit of the per-call peak above the loaded model: {slope:.1f} bytes per input voxel "
                f"+ {intercept / MiB:.0f} MiB.")
    _write("memory", {"environment": _environment(args), "fit": fit, "results": payload}, markdown, args)


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        kind, spec = argv[1], json.loads(argv[2])
        print(json.dumps(_WORKERS[kind](spec)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=("volumes", "arena", "chunks", "memory"), default="volumes")
    parser.add_argument("-m", "--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("-i", "--input", dest="inputs", action="append", default=[], help="NIfTI volume (repeatable)")
    parser.add_argument("-d", "--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--modes", default="adaptive,reference", help="comma list; dense always runs once as reference")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="segment calls before the timed one (same process)")
    parser.add_argument("--calls", type=int, default=40, help="arena: decoder calls in the sequence")
    parser.add_argument("--max-queries-study", type=int, default=32768, help="arena: largest query count")
    parser.add_argument("--chunk-sizes", default="1024,2048,4096,8192,16384,32768,65536")
    parser.add_argument("--chunk-queries", type=int, default=131072, help="chunks: queries per measurement")
    parser.add_argument("--fractions", default="0.4,0.6,0.8,1.0", help="memory: crop fractions per axis")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker process")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result files: segmenter_<study>_<tag>.json")
    args = parser.parse_args(argv)
    if args.model is None:
        from ossnet_deploy.model import DEFAULT_MODEL_DIR

        args.model = str(DEFAULT_MODEL_DIR)
    if args.study in ("volumes", "chunks", "memory") and not args.inputs:
        parser.error(f"--study {args.study} needs at least one -i volume")
    {"volumes": study_volumes, "arena": study_arena, "chunks": study_chunks, "memory": study_memory}[args.study](args)


if __name__ == "__main__":
    main()
