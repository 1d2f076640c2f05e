"""OSS-Net against the tools users run today: whole processes, alternated, medians of per-repeat ratios.

Programs (each run is one fresh process: read the input, segment, labels in memory; no warm-up,
as a user's command line would do it):

* ``ossnet-ort``: :class:`ossnet_deploy.Segmenter`, adaptive scheduler, ONNX Runtime (the product).
* ``ossnet-auto``: the same with ``device="auto"``, what a default install runs: on a CPU the
  decoder in OpenVINO where openvino is installed (a core dependency there), else ONNX Runtime;
  the device it resolved to is recorded per run.
* ``ossnet-ov``: the same with ``device="openvino"`` (the decoder in OpenVINO, or an error).
* ``ossnet-ort-reference``: the same with the paper's ``reference`` scheduler.
* ``ossnet-torch``: the same model as trained (PyTorch eager, its checkpoint), the same adaptive
  scheduler through :func:`ossnet_deploy.scheduler.run_scheduler` with a torch ``decode`` callable
  (as ``ossnet_train/validate.py`` does): the "export pays off" comparison.
* ``unet3d``: our 3D residual U-Net (``ossnet_train.unet``, random weights) through
  ``ossnet_train.sliding_window`` (roi 128^3, overlap 0.25, batch 1): dense inference.
* ``monai``: MONAI's ``UNet`` (channels 16-32-64-128-256, strides 2, num_res_units=2, random
  weights) through ``monai.inferers.sliding_window_inference`` (roi 128^3, sw_batch_size 1,
  overlap 0.25). MONAI is never a dependency: it is imported from ``--monai-path``
  (``pip install --target .bench-deps --no-deps monai``; docs/benchmarks.md).

The dense programs read the input with ``ossnet_deploy.inputs.resolve_volume`` and normalise it
with the workload preset's intensity rule, so only the network and its sliding window differ.
``dense`` (Segmenter, every voxel) runs once per volume, outside every median, as the
correctness reference of the OSS-Net programs (Dice over foreground, docs/design.md#measuring).

Studies (``--study``):

* ``peers`` (default): per workload of the manifest (``benchmarks/workloads.py``): every program,
  alternated A B C ... A B C ..., ``--repeats`` times; scheduler table (queries, time per stage,
  Dice against dense for dense / reference / adaptive), program table (time, process time, peak
  memory), ratios (medians of per-repeat ratios) and the issue's targets with measured values.
* ``scaling``: peak memory against input voxels (the manifest's scaling inputs, 128^3 .. 512^3,
  one preset per size) for ``ossnet-ort``, ``unet3d`` and ``monai``; table and line plot.

Results: ``benchmarks/results/peers[_TAG].{json,md}``, ``peers_time[_TAG].png``,
``peers_memory[_TAG].png``; ``peers_scaling[_TAG].{json,md,png}``. Examples::

    python benchmarks/bench_peers.py --repeats 3
    python benchmarks/bench_peers.py --workloads b --programs ossnet-ort,monai --repeats 5
    python benchmarks/bench_peers.py --study scaling --repeats 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    GB,
    REPO,
    RESULTS,
    PeakMeter,
    environment,
    environment_markdown,
    fmt_gb,
    median,
    median_ratio,
    spawn,
    table,
    worker_main,
    write_results,
)
from workloads import DEFAULT_ROOT, MANIFEST, Workload, load_manifest

PROGRAMS = ("ossnet-ort", "ossnet-auto", "ossnet-ov", "ossnet-ort-reference", "ossnet-torch", "unet3d", "monai")
SCALING_PROGRAMS = ("ossnet-ort", "ossnet-ov", "unet3d", "monai")
#: the Segmenter programs and their device strings
OSSNET_DEVICES = {"ossnet-ort": "cpu", "ossnet-auto": "auto", "ossnet-ov": "openvino", "ossnet-ort-reference": "cpu"}
#: the product, the denominator of every ratio
BASELINE = "ossnet-ort"
DEFAULT_MONAI_PATH = REPO / ".bench-deps"
#: MONAI's numbers measured once for orientation (2 threads), from the benchmark issue: seconds, GB.
MONAI_ORIENTATION = {"a": (8.7, 0.98), "b": (9.8, 1.05), "c": (62.6, 2.4)}
UNET_CHANNELS = (16, 32, 64, 128, 256)


# ------------------------------------------------------------------------------------ workers
# Each runs in a fresh interpreter (harness.spawn); times are time.perf_counter() seconds.


def _since(start: float) -> float:
    return time.perf_counter() - start


def _save_labels(labels: np.ndarray, path: str | None) -> None:
    if path:
        np.save(path, np.asarray(labels, dtype=np.uint8))


def _worker_ossnet(spec: dict[str, Any]) -> dict[str, Any]:
    """Segmenter on ``spec["device"]`` (cpu: ONNX Runtime; openvino: its decoder in OpenVINO; auto:
    what a default install picks, recorded as ``device``) in ``spec["mode"]``: stage times,
    queries, peaks."""
    started = time.perf_counter()
    from ossnet_deploy.segmenter import Segmenter

    imported = _since(started)
    seg = Segmenter.from_dir(spec["model_dir"], device=spec.get("device", "cpu"), threads=spec["threads"], mode=spec["mode"],
                             max_queries=spec["max_queries"])
    loaded = _since(started)
    meter = PeakMeter()
    image, stats = seg.segment_with_stats(spec["input"])
    peaks = meter.finish()
    _save_labels(np.asarray(image.dataobj), spec.get("labels_out"))
    return {"seconds": stats.total_seconds, "stage_seconds": [list(s) for s in stats.stage_seconds],
            "stage_queries": [list(s) for s in stats.stage_queries], "queries": stats.total_queries,
            "dense_queries": stats.dense_queries, "max_queries": stats.max_queries, "import_seconds": imported,
            "interpolated": sum(s.interpolated for s in stats.scheduler.stages) if stats.scheduler else 0,
            "load_seconds": loaded - imported, "input_shape": list(stats.input_shape), "device": seg.device,
            **peaks}


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def _worker_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint in PyTorch eager mode with the same scheduler (adaptive) as the Segmenter."""
    started = time.perf_counter()
    import torch

    from ossnet_deploy.inputs import resolve_volume
    from ossnet_deploy.pipeline import segment_prepared
    from ossnet_deploy.preprocess import PreprocessConfig, prepare_volume
    from ossnet_deploy.scheduler import SchedulerConfig
    from ossnet_train.checkpoint import load_model
    from ossnet_train.devices import evaluation_mode
    from ossnet_train.torch_pair import TorchPair

    _torch_threads(spec["threads"])
    imported = _since(started)
    model, ckpt = load_model(spec["checkpoint"])
    config = PreprocessConfig.from_dict(ckpt.preprocess)
    loaded = _since(started)
    meter = PeakMeter()
    t0 = time.perf_counter()
    volume = resolve_volume(spec["input"], config.channels, min_side=config.patch_size)
    t_read = time.perf_counter()
    prepared = prepare_volume(volume.data, volume.affine, config, source=volume.source, finite_checked=True)
    del volume
    t_prepare = time.perf_counter()
    # The runtime's own pipeline with the PyTorch model as its pair: only the model differs.
    with evaluation_mode(model):
        result = segment_prepared(prepared, config, TorchPair(model), SchedulerConfig(mode=spec["mode"],
                                  max_queries=spec["max_queries"]))
    t_done = time.perf_counter()
    peaks = meter.finish()
    _save_labels(result.labels, spec.get("labels_out"))
    stages = [["read", t_read - t0], ["prepare", t_prepare - t_read], *([n, s] for n, s in result.stage_seconds)]
    return {"seconds": t_done - t0, "stage_seconds": stages,
            "stage_queries": [[s.name, s.queries] for s in result.stats.stages],
            "queries": result.stats.total_queries, "import_seconds": imported, "load_seconds": loaded - imported,
            "torch": torch.__version__, **peaks}


def _read_normalised(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """The input as ``(C, X, Y, Z)`` float32 normalised in place with the preset's intensity rule.

    Returns ``(volume, pad values (C,), read seconds)``.
    """
    from ossnet_deploy.inputs import resolve_volume
    from ossnet_deploy.preprocess import (
        apply_intensity,
        foreground_of,
        intensity_stats,
        padding_values,
        preprocess_preset,
    )

    config = preprocess_preset(spec["preset"])
    t0 = time.perf_counter()
    volume = resolve_volume(spec["input"], config.channels, min_side=config.patch_size)
    read = time.perf_counter() - t0
    data = np.ascontiguousarray(volume.data, dtype=np.float32)
    mask = foreground_of(data, config) if config.intensity == "zscore_foreground" else None
    stats = intensity_stats(data, mask, config)
    del mask
    apply_intensity(data, stats)
    return data, padding_values(stats, config), read


def _dense_run(spec: dict[str, Any], infer: Callable[[np.ndarray, np.ndarray], Any]) -> dict[str, Any]:
    """Time and peak memory of one dense program: read + normalise, ``infer``, threshold at logit 0.

    ``infer(data, pads)`` gets the normalised ``(C, X, Y, Z)`` float32 volume and the per-channel
    padding values and returns the ``(X, Y, Z)`` logits as a torch tensor.
    """
    meter = PeakMeter()
    t0 = time.perf_counter()
    data, pads, read = _read_normalised(spec)
    t_norm = time.perf_counter()
    logits = infer(data, pads)
    del data
    t_infer = time.perf_counter()
    labels = (logits > 0).numpy().astype(np.uint8)
    del logits
    t_done = time.perf_counter()
    peaks = meter.finish()
    return {"seconds": t_done - t0, "stage_seconds": [["read", read], ["normalise", t_norm - t0 - read],
                                                      ["infer", t_infer - t_norm], ["threshold", t_done - t_infer]],
            "queries": int(labels.size), **peaks}


def _worker_unet(spec: dict[str, Any]) -> dict[str, Any]:
    """Our 3D residual U-Net (random weights) through ossnet_train.sliding_window."""
    started = time.perf_counter()
    import torch

    from ossnet_deploy.preprocess import preprocess_preset
    from ossnet_train.sliding_window import sliding_window_logits
    from ossnet_train.unet import UNetConfig, build_unet

    _torch_threads(spec["threads"])
    imported = _since(started)
    torch.manual_seed(0)
    channels = len(preprocess_preset(spec["preset"]).channels)
    model = build_unet(UNetConfig(in_channels=channels, channels=UNET_CHANNELS)).eval()
    loaded = _since(started)

    def infer(data: np.ndarray, pads: np.ndarray) -> Any:
        return sliding_window_logits(model, torch.from_numpy(data), roi=(spec["roi"],) * 3, overlap=spec["overlap"],
                                     batch=1, blend=spec["blend"], pad_value=[float(v) for v in pads])[0]

    return {**_dense_run(spec, infer), "import_seconds": imported, "load_seconds": loaded - imported,
            "torch": torch.__version__}


def _worker_monai(spec: dict[str, Any]) -> dict[str, Any]:
    """MONAI's UNet (random weights) through monai.inferers.sliding_window_inference."""
    started = time.perf_counter()
    import monai
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from ossnet_deploy.preprocess import preprocess_preset

    _torch_threads(spec["threads"])
    imported = _since(started)
    torch.manual_seed(0)
    channels = len(preprocess_preset(spec["preset"]).channels)
    net = UNet(spatial_dims=3, in_channels=channels, out_channels=1, channels=UNET_CHANNELS,
               strides=(2, 2, 2, 2), num_res_units=2).eval()
    loaded = _since(started)

    def infer(data: np.ndarray, pads: np.ndarray) -> Any:
        with torch.no_grad():
            logits = sliding_window_inference(torch.from_numpy(data)[None], roi_size=(spec["roi"],) * 3,
                                              sw_batch_size=1, predictor=net, overlap=spec["overlap"])
        return torch.as_tensor(logits)[0, 0]

    return {**_dense_run(spec, infer), "import_seconds": imported, "load_seconds": loaded - imported,
            "torch": torch.__version__, "monai": monai.__version__}


WORKERS = {"ossnet": _worker_ossnet, "torch": _worker_torch, "unet": _worker_unet, "monai": _worker_monai}


# ------------------------------------------------------------------------------------ running


def _program_spec(program: str, workload: Workload, args: argparse.Namespace) -> tuple[str, dict[str, Any]] | None:
    """(worker kind, spec) of ``program`` on ``workload``; None when its model files are missing."""
    base = {"input": str(workload.path("input")), "threads": args.threads, "preset": workload.preset}
    if program in OSSNET_DEVICES:
        if not (workload.path("model_dir") / "decoder.onnx").exists():
            return None
        mode = "reference" if program.endswith("reference") else "adaptive"
        return "ossnet", {**base, "model_dir": str(workload.path("model_dir")), "mode": mode,
                          "max_queries": args.max_queries, "device": OSSNET_DEVICES[program]}
    if program == "ossnet-torch":
        if not workload.path("checkpoint").exists():
            return None
        return "torch", {**base, "checkpoint": str(workload.path("checkpoint")), "mode": "adaptive",
                         "max_queries": args.max_queries}
    common = {**base, "roi": args.roi, "overlap": args.overlap}
    if program == "unet3d":
        return "unet", {**common, "blend": args.unet_blend}
    return "monai", common


def _run(kind: str, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    extra = [args.monai_path] if kind == "monai" else []
    return spawn(__file__, kind, spec, threads=args.threads, timeout=args.timeout, extra_path=extra)


def _dice_files(a: np.ndarray, b: np.ndarray) -> float:
    from ossnet_deploy.metrics import dice

    return float(dice(a > 0, b > 0))


def _truth(workload: Workload) -> np.ndarray | None:
    if not workload.label or not workload.path("label").exists():
        return None
    import nibabel as nib

    return np.asarray(nib.load(workload.path("label")).dataobj) > 0


def _dense_cache_paths(workload: Workload, args: argparse.Namespace) -> tuple[Path, Path] | None:
    """``(labels .npy, run .json)`` of this workload's dense pass in ``--dense-cache``, or None.

    Dense labels depend only on the graphs and the input (not on the scheduler or the runtime's
    threading), so the key hashes both graph files and the input files' names, sizes and mtimes.
    """
    if args.dense_cache is None:
        return None
    digest = hashlib.sha256()
    model = Path(workload.path("model_dir"))
    for name in ("encoder.onnx", "decoder.onnx"):
        digest.update((model / name).read_bytes())
    source = Path(workload.path("input"))
    for f in sorted(source.rglob("*")) if source.is_dir() else [source]:
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    stem = args.dense_cache / f"{workload.name}-{digest.hexdigest()[:16]}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _wants_dense(workload: Workload, args: argparse.Namespace) -> bool:
    if args.dense == "never":
        return False
    return args.dense == "always" or workload.voxels <= args.dense_max_voxels


def measure_workload(workload: Workload, programs: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Dense once, then every program ``args.repeats`` times alternated; raw runs and Dice values."""
    specs = {p: _program_spec(p, workload, args) for p in programs}
    skipped = sorted(p for p, s in specs.items() if s is None)
    active = [p for p in programs if specs[p] is not None]
    for p in skipped:
        print(f"[{workload.name}] {p}: model files missing, skipped", flush=True)
    entry: dict[str, Any] = {"workload": workload.__dict__, "skipped": skipped, "runs": {p: [] for p in active},
                             "dice_vs_dense": {}, "dice_vs_truth": {}, "dense": None, "errors": []}
    truth = _truth(workload)
    with tempfile.TemporaryDirectory() as tmp:
        dense_labels = None
        dense_spec = _program_spec("ossnet-ort", workload, args)
        if dense_spec is not None and _wants_dense(workload, args):
            cached = _dense_cache_paths(workload, args)
            if cached is not None and cached[0].exists() and cached[1].exists():
                print(f"[{workload.name}] dense reference from {cached[0]}", flush=True)
                entry["dense"] = {**json.loads(cached[1].read_text()), "cached": str(cached[0])}
                dense_labels = np.load(cached[0])
            else:
                path = os.path.join(tmp, "dense.npy")
                print(f"[{workload.name}] dense reference (one run)", flush=True)
                entry["dense"] = _run("ossnet", {**dense_spec[1], "mode": "dense", "labels_out": path}, args)
                dense_labels = np.load(path)
                if cached is not None:
                    cached[0].parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached[0], dense_labels)
                    cached[1].write_text(json.dumps({**entry["dense"], "measured": time.strftime("%Y-%m-%d %H:%M:%S %z")}))
            if truth is not None:
                entry["dice_vs_truth"]["dense"] = _dice_files(dense_labels, truth)
        for repeat in range(args.repeats):
            for program in active:  # alternated: A B C ... A B C ...
                kind, spec = specs[program]  # type: ignore[misc]
                labels_out = os.path.join(tmp, f"{program}.npy") if repeat == 0 and kind in ("ossnet", "torch") else None
                print(f"[{workload.name}] repeat {repeat + 1}/{args.repeats}: {program}", flush=True)
                try:
                    run = _run(kind, {**spec, "labels_out": labels_out}, args)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    # One failed process (e.g. out of memory) must not lose the rest of a long run.
                    print(f"[{workload.name}] {program} failed: {str(exc)[-600:]}", file=sys.stderr, flush=True)
                    entry["errors"].append({"program": program, "repeat": repeat, "error": str(exc)[-4000:]})
                    continue
                run["repeat"] = repeat
                entry["runs"][program].append(run)
                if labels_out:
                    labels = np.load(labels_out)
                    if dense_labels is not None:
                        entry["dice_vs_dense"][program] = _dice_files(labels, dense_labels)
                    if truth is not None:
                        entry["dice_vs_truth"][program] = _dice_files(labels, truth)
    entry["failed"] = [p for p, runs in entry["runs"].items() if not runs]
    for program in entry["failed"]:
        del entry["runs"][program]
    return entry


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in runs[0]["stage_seconds"]]
    return {
        "seconds": median([r["seconds"] for r in runs]),
        "process_seconds": median([r["process_seconds"] for r in runs]),
        "process_peak_bytes": median([r["process_peak_bytes"] for r in runs]),
        "call_peak_bytes": median([r["call_peak_bytes"] for r in runs]),
        "stage_seconds": [[n, median([dict(r["stage_seconds"]).get(n) for r in runs])] for n in names],
        "queries": runs[0].get("queries"),
        "repeats": len(runs),
    }


def _ratios(entry: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per program against the baseline: medians of per-repeat ratios (time: other / ossnet-ort,
    so > 1 means ossnet-ort is faster; memory: ossnet-ort / other, so < 1 means it uses less)."""
    runs = entry["runs"]
    if BASELINE not in runs:
        return {}
    base = runs[BASELINE]
    out = {}
    for program, other in runs.items():
        if program == BASELINE:
            continue
        out[program] = {
            "time_other_over_ossnet": median_ratio(other, base, "seconds"),
            "process_time_other_over_ossnet": median_ratio(other, base, "process_seconds"),
            "peak_ossnet_over_other": median_ratio(base, other, "process_peak_bytes"),
        }
    return out


# ------------------------------------------------------------------------------------ reports


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _stage_text(stages: list[list[Any]]) -> str:
    return ", ".join(f"{n} {_fmt(s)}" for n, s in stages if s is not None)


def _scheduler_rows(entry: dict[str, Any]) -> list[list[object]]:
    name = entry["workload"]["name"]
    rows: list[list[object]] = []
    dense = entry["dense"]
    dense_queries = None
    if dense is not None:
        dense_queries = dense["queries"]
        label = f"dense (1 run of {dense['measured'][:10]}, cached)" if dense.get("cached") else "dense (1 run)"
        rows.append([name, label, f"{dense['queries']:,}", "100%", _fmt(dense["seconds"]),
                     _stage_text(dense["stage_seconds"]), "1.0000", _fmt(entry["dice_vs_truth"].get("dense"), ".4f")])
    for program, mode in (("ossnet-ort-reference", "reference"), ("ossnet-ort", "adaptive")):
        runs = entry["runs"].get(program)
        if not runs:
            continue
        s = _summary(runs)
        share = f"{s['queries'] / dense_queries:.1%}" if dense_queries else "n/a"
        rows.append([name, mode, f"{s['queries']:,}", share, _fmt(s["seconds"]), _stage_text(s["stage_seconds"]),
                     _fmt(entry["dice_vs_dense"].get(program), ".4f"),
                     _fmt(entry["dice_vs_truth"].get(program), ".4f")])
    return rows


def _targets(entries: dict[str, dict[str, Any]]) -> list[list[object]]:
    """The issue's targets that this study measures, each with its measured value."""
    rows: list[list[object]] = []

    def summary(name: str, program: str) -> dict[str, Any] | None:
        runs = entries.get(name, {}).get("runs", {}).get(program)
        return _summary(runs) if runs else None

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")

    b = entries.get("b")
    if b:
        ada, ref = summary("b", "ossnet-ort"), summary("b", "ossnet-ort-reference")
        dice = b["dice_vs_dense"].get("ossnet-ort")
        ok = None if dice is None or not (ada and ref) else (dice >= 0.999 and ada["queries"] * 3 <= ref["queries"])
        measured = (f"Dice {_fmt(dice, '.4f')}, queries {ada['queries']:,} = "
                    f"{ada['queries'] / ref['queries']:.3f} of reference's" if ada and ref else "n/a")
        rows.append(["(b) adaptive: Dice(adaptive, dense) >= 0.999 with <= 1/3 of reference's queries", measured,
                     verdict(ok)])
    a = entries.get("a")
    if a:
        ada, ref = summary("a", "ossnet-ort"), summary("a", "ossnet-ort-reference")
        d_ada, d_ref = a["dice_vs_dense"].get("ossnet-ort"), a["dice_vs_dense"].get("ossnet-ort-reference")
        ok = None if None in (d_ada, d_ref) or not (ada and ref) else (d_ada >= d_ref and ada["queries"] <= ref["queries"])
        measured = (f"Dice {_fmt(d_ada, '.4f')} vs {_fmt(d_ref, '.4f')}; queries {ada['queries']:,} vs "
                    f"{ref['queries']:,}" if ada and ref else "n/a")
        rows.append(["(a) adaptive: Dice(adaptive, dense) >= Dice(reference, dense), queries <= reference's",
                     measured, verdict(ok)])
    for name, entry in entries.items():
        if "ossnet-torch" not in entry["ratios"]:
            continue
        ratio = entry["ratios"]["ossnet-torch"]["time_other_over_ossnet"]
        rows.append([f"({name}) ORT >= 1.3x faster than PyTorch eager, same scheduler",
                     f"{_fmt(ratio)}x (median of per-repeat eager/ORT)", verdict(None if ratio is None else ratio >= 1.3)])
    for name, entry in entries.items():
        runs = entry["runs"]
        if "monai" not in runs:
            continue
        for program, how in ((BASELINE, "ONNX Runtime"), ("ossnet-auto", "default install (device auto)"),
                             ("ossnet-ov", "OpenVINO decoder")):
            if program not in runs:
                continue
            # Per-repeat ratios against this program (the ratio table is against ossnet-ort only).
            speed = median_ratio(runs["monai"], runs[program], "seconds")
            process = median_ratio(runs["monai"], runs[program], "process_seconds")
            memory = median_ratio(runs[program], runs["monai"], "process_peak_bytes")
            ours = summary(name, program)
            peak = ours["process_peak_bytes"] if ours else None
            timing = f"MONAI/{program} time {_fmt(speed)}x (process: {_fmt(process)}x)"
            label = f"({name}) {how} vs MONAI"
            if name in ("a", "b"):
                rows.append([f"{label}: no slower", timing, verdict(None if speed is None else speed >= 1.0)])
            if name == "a":
                rows.append([f"{label}: <= 1/2 its peak memory", f"peak {fmt_gb(peak)} GB, ratio {_fmt(memory)}",
                             verdict(None if memory is None else memory <= 0.5)])
            elif name == "b":
                ok = None if None in (memory, peak) else (peak <= 1.0 * GB and memory <= 0.75)
                rows.append([f"{label}: peak <= 1.0 GB and <= 0.75x MONAI's",
                             f"peak {fmt_gb(peak)} GB, ratio {_fmt(memory)}", verdict(ok)])
            else:
                rows.append([f"{label}: report", f"{timing}; peak {fmt_gb(peak)} GB, ratio {_fmt(memory)}",
                             "report"])
    return rows


def _peers_markdown(entries: dict[str, dict[str, Any]], env: dict[str, Any]) -> str:
    parts = ["# OSS-Net against the tools users run today", "", environment_markdown(env), "",
             f"Each program is its own process per run (read the input, segment, labels in memory; no warm-up); "
             f"programs alternate A B C ... {env.get('repeats')} times per workload; tables give medians, ratios are "
             f"medians of per-repeat ratios. Peak memory is the process's VmHWM (start, load and the call); GB = "
             f"10^9 bytes. U-Net and MONAI use random weights (time and memory only).", "", "## Workloads", ""]
    rows = []
    for name, entry in entries.items():
        w = entry["workload"]
        facts = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in w["facts"].items())
        rows.append([name, w["input"], f"{w['voxels']:,}", w["preset"], w["model_dir"], w["notes"], facts])
    parts += [table(["workload", "input", "voxels", "preset", "model", "what", "facts"], rows), ""]
    parts += ["## Scheduler: queries, time per stage, Dice against dense (ONNX Runtime)", "",
              table(["workload", "mode", "queries", "of dense", "seconds", "stages (s)", "Dice vs dense",
                     "Dice vs truth"], [r for e in entries.values() for r in _scheduler_rows(e)]), ""]
    rows = []
    for name, entry in entries.items():
        for program, runs in entry["runs"].items():
            s = _summary(runs)
            rows.append([name, program, _fmt(s["seconds"]), _fmt(s["process_seconds"]),
                         fmt_gb(s["process_peak_bytes"]), fmt_gb(s["call_peak_bytes"]),
                         f"{s['queries']:,}" if s["queries"] else "n/a",
                         _fmt(entry["dice_vs_dense"].get(program), ".4f"), _stage_text(s["stage_seconds"])])
        for program in entry["skipped"]:
            rows.append([name, program, "skipped: model files missing", "", "", "", "", "", ""])
        for program in entry.get("failed", []):
            rows.append([name, program, "failed: see Failed runs", "", "", "", "", "", ""])
    parts += ["## Programs (medians)", "",
              "seconds: read to labels in memory; process: interpreter start to exit (imports, model load).", "",
              table(["workload", "program", "seconds", "process s", "peak GB", "call peak GB", "queries / voxels",
                     "Dice vs dense", "stages (s)"], rows), ""]
    errors = [[name, e["program"], e["repeat"] + 1, e["error"].strip().splitlines()[-1][:200]]
              for name, entry in entries.items() for e in entry.get("errors", [])]
    if errors:
        parts += ["## Failed runs (left out of the medians)", "",
                  table(["workload", "program", "repeat", "error (last line)"], errors), ""]
    rows = []
    for name, entry in entries.items():
        for program, r in entry["ratios"].items():
            rows.append([name, program, _fmt(r["time_other_over_ossnet"]), _fmt(r["process_time_other_over_ossnet"]),
                         _fmt(r["peak_ossnet_over_other"])])
    parts += ["## Ratios against ossnet-ort (medians of per-repeat ratios)", "",
              "time: program / ossnet-ort (> 1: ossnet-ort is faster); peak: ossnet-ort / program (< 1: it uses "
              "less).", "",
              table(["workload", "program", "time ratio", "process time ratio", "peak ratio"], rows), ""]
    orientation = [[k, f"{t} s", f"{m} GB"] for k, (t, m) in MONAI_ORIENTATION.items() if k in entries]
    if orientation:
        parts += ["MONAI measured once for orientation in the issue (2 threads):", "",
                  table(["workload", "time", "peak RSS"], orientation), ""]
    parts += ["## Targets", "", table(["target", "measured", "verdict"], _targets(entries)), ""]
    return "\n".join(parts)


def _plots(entries: dict[str, dict[str, Any]], name: str, out: Path) -> list[str]:
    from pngplot import bar_chart

    programs = [p for p in PROGRAMS if any(p in e["runs"] for e in entries.values())]
    groups = [f"({n}) {e['workload']['preset']}" for n, e in entries.items()]
    summaries = {n: {p: _summary(r) for p, r in e["runs"].items()} for n, e in entries.items()}
    written = []
    for key, label, scale, suffix in (("seconds", "seconds (read to labels)", 1.0, "time"),
                                      ("process_peak_bytes", "peak RSS (GB)", 1.0 / GB, "memory")):
        series = [(p, [None if p not in summaries[n] or summaries[n][p][key] is None
                       else summaries[n][p][key] * scale for n in entries]) for p in programs]
        path = out / f"{name}_{suffix}.png"
        bar_chart(path, groups, series, title=f"{label}, median per program", y_label=label)
        written.append(path.name)
    return written


def _measure_all(args: argparse.Namespace, workloads: list[Workload], stem: str,
                 **overrides: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Environment and per-workload entries; after each workload the raw entries so far are saved to
    ``<out>/<stem>.partial.json`` (a long run that fails later keeps what it measured)."""
    programs = [p for p in args.programs.split(",") if p]
    per_workload = dict(args.programs_for)
    everyone = set(programs) | {p for ps in per_workload.values() for p in ps}
    env = environment(args.threads, {"repeats": args.repeats, "max_queries": args.max_queries, "roi": args.roi,
                                     "overlap": args.overlap, "unet_blend": args.unet_blend,
                                     "dense": args.dense, "manifest": str(args.manifest),
                                     "programs": programs, "programs_for": per_workload},
                      monai_path=[str(args.monai_path)] if "monai" in everyone else None)
    run_args = argparse.Namespace(**{**vars(args), **overrides})
    entries: dict[str, dict[str, Any]] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / f"{stem}.partial.json"
    for workload in workloads:
        entry = measure_workload(workload, per_workload.get(workload.name, programs), run_args)
        entry["ratios"] = _ratios(entry)
        entries[workload.name] = entry
        partial.write_text(json.dumps({"environment": env, "results": entries}, indent=2, default=str) + "\n")
    partial.unlink()
    return env, entries


def report_peers(env: dict[str, Any], entries: dict[str, dict[str, Any]], stem: str, out: Path) -> None:
    """Markdown, plots and JSON of a peers study (also used by ``--render``)."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = _peers_markdown(entries, env)
    pngs = _plots(entries, stem, out)
    markdown += "\n" + "\n".join(f"![{p}]({p})" for p in pngs) + "\n"
    write_results(stem, {"environment": env, "targets": _targets(entries), "results": entries}, markdown, out)


def study_peers(args: argparse.Namespace, workloads: list[Workload]) -> None:
    stem = "peers" + (f"_{args.tag}" if args.tag else "")
    env, entries = _measure_all(args, workloads, stem)
    report_peers(env, entries, stem, args.out)


def study_scaling(args: argparse.Namespace, inputs: list[Workload]) -> None:
    stem = "peers_scaling" + (f"_{args.tag}" if args.tag else "")
    env, entries = _measure_all(args, inputs, stem, dense="never")
    report_scaling(env, entries, stem, args.out)


def report_scaling(env: dict[str, Any], entries: dict[str, dict[str, Any]], stem: str, out: Path) -> None:
    """Markdown, plot and JSON of a scaling study (also used by ``--render``)."""
    from pngplot import Series, line_chart

    programs = [p for p in PROGRAMS if any(p in e["runs"] or p in e["skipped"] for e in entries.values())]
    rows, series = [], {p: ([], []) for p in programs}
    for name, entry in entries.items():
        w = entry["workload"]
        for program in programs:
            runs = entry["runs"].get(program)
            s = _summary(runs) if runs else None
            if s is not None:
                series[program][0].append(w["voxels"] / 1e6)
                series[program][1].append(s["process_peak_bytes"] / GB if s["process_peak_bytes"] else None)
            rows.append([name, f"{w['voxels']:,}", w["preset"], program,
                         fmt_gb(s["process_peak_bytes"]) if s else "skipped",
                         fmt_gb(s["call_peak_bytes"]) if s else "", _fmt(s["seconds"]) if s else ""])
    out.mkdir(parents=True, exist_ok=True)
    line_chart(out / f"{stem}.png", [Series(p, xs, ys) for p, (xs, ys) in series.items() if xs],
               title="Peak memory against input size", x_label="input voxels (millions)",
               y_label="peak RSS of the process (GB)")
    markdown = "\n".join([
        "# Peak memory against input size", "", environment_markdown(env), "",
        f"Median of {env.get('repeats')} alternated runs per program and size, each its own process; peak = "
        "VmHWM (GB = 10^9 bytes). Segmenter preset per size: the one whose grid holds the input (demo: "
        "224x256x192; lits resamples any input to its 512^3 grid); the U-Nets run on the input as it is.", "",
        table(["input", "voxels", "preset", "program", "peak GB", "call peak GB", "seconds"], rows), "",
        f"![{stem}.png]({stem}.png)", ""])
    write_results(stem, {"environment": env, "results": entries}, markdown, out)


def render(path: Path) -> None:
    """Re-write the markdown and plots of a results JSON (after editing the report code)."""
    data = json.loads(path.read_text())
    stem = path.name.removesuffix(".json").removesuffix(".partial")
    if stem.startswith("peers_scaling"):
        report_scaling(data["environment"], data["results"], stem, path.parent)
    else:
        for entry in data["results"].values():
            entry.setdefault("ratios", _ratios(entry))
        report_peers(data["environment"], data["results"], stem, path.parent)


# ---------------------------------------------------------------------------------------- CLI


def _programs_for(value: str) -> tuple[str, list[str]]:
    """``W=P1,P2`` of ``--programs-for`` -> ``(W, [P1, P2])``; unknown programs are refused."""
    name, sep, listed = value.partition("=")
    programs = [p for p in listed.split(",") if p]
    if not sep or not name or not programs:
        raise argparse.ArgumentTypeError(f"expected WORKLOAD=PROGRAM[,PROGRAM...], got {value!r}")
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown programs {unknown} in {value!r}; known: {', '.join(PROGRAMS)}")
    return name, programs


def _check_monai(args: argparse.Namespace) -> None:
    wanted = set(args.programs.split(",")) | {p for _, ps in args.programs_for for p in ps}
    if "monai" not in wanted:
        return
    if not (Path(args.monai_path) / "monai" / "__init__.py").exists():
        sys.exit(f"MONAI not found under {args.monai_path}. Install it for the benchmark only:\n"
                 f"  pip install --target {args.monai_path} --no-deps monai\n"
                 "or leave it out with --programs (docs/benchmarks.md).")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if worker_main(WORKERS, argv):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=("peers", "scaling"), default="peers")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_ROOT / MANIFEST,
                        help="written by benchmarks/workloads.py")
    parser.add_argument("--workloads", default="", help="comma list of names (default: all of the study)")
    parser.add_argument("--programs", default=None,
                        help=f"comma list (default peers: {','.join(PROGRAMS)}; scaling: {','.join(SCALING_PROGRAMS)})")
    parser.add_argument("--programs-for", type=_programs_for, action="append", default=[], metavar="W=LIST",
                        help="programs of workload W, replacing --programs for it; repeatable. The full suite "
                             "uses c=ossnet-ort,unet3d,monai: the programs (c)'s target names (PyTorch eager and "
                             "the reference scheduler take 8+ minutes per run there)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of every program")
    parser.add_argument("--max-queries", type=int, default=4096, help="decoder queries per call (both OSS-Net paths)")
    parser.add_argument("--roi", type=int, default=128, help="sliding-window side (U-Net, MONAI)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--unet-blend", default="gaussian", choices=("gaussian", "constant"),
                        help="blend of our sliding window (MONAI runs its default, constant)")
    parser.add_argument("--dense", choices=("auto", "always", "never"), default="auto",
                        help="dense reference pass: auto = only for inputs of at most --dense-max-voxels")
    parser.add_argument("--dense-cache", type=Path, default=None, metavar="DIR",
                        help="keep each workload's dense labels here and reuse them while the graphs and input "
                             "are unchanged (the dense row then reports the cached run)")
    parser.add_argument("--dense-max-voxels", type=int, default=2**24,
                        help="auto: larger inputs get no dense pass (512^3 dense takes hours on a CPU)")
    parser.add_argument("--monai-path", type=Path, default=DEFAULT_MONAI_PATH,
                        help="folder holding the monai package (put on the MONAI worker's PYTHONPATH only)")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per process")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result names")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only re-write the markdown and plots of this results JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        render(args.render)
        return
    if args.programs is None:
        args.programs = ",".join(PROGRAMS if args.study == "peers" else SCALING_PROGRAMS)
    unknown = set(args.programs.split(",")) - set(PROGRAMS)
    if unknown:
        parser.error(f"--programs: unknown {sorted(unknown)}; known: {', '.join(PROGRAMS)}")
    _check_monai(args)
    if not args.manifest.exists():
        parser.error(f"{args.manifest} not found: run python benchmarks/workloads.py first (docs/benchmarks.md)")
    manifest = load_manifest(args.manifest)
    pool = manifest["workloads" if args.study == "peers" else "scaling"]
    wanted = [w for w in args.workloads.split(",") if w]
    selected = [w for w in pool if not wanted or w.name in wanted]
    missing = [w.name for w in selected if not w.path("input").exists()]
    if missing:
        print(f"inputs missing, skipped: {', '.join(missing)}", file=sys.stderr)
    selected = [w for w in selected if w.path("input").exists()]
    if not selected:
        parser.error("no workload with an existing input selected")
    (study_peers if args.study == "peers" else study_scaling)(args, selected)


if __name__ == "__main__":
    main()
