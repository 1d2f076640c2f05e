"""Closeness to the hardware: decoder queries per second, FLOPs per query, fraction of ORT's MatMul rate.

For each exported model (the manifest's workloads, or ``-m``):

* ``decoder``: the decoder graph alone in ONNX Runtime on chunks of ``--chunk`` queries (random
  coordinates and patches, the latent of the workload's volume when it is given, else random):
  seconds per call -> queries/s; and, with a volume, ``Segmenter.query`` on random voxels of the
  input's region (patch cutting + coordinates + decoder: what the scheduler pays per query).
* ``matmul``: ONNX Runtime's own fp32 MatMul ``(chunk x 512) @ (512 x 512)`` in a one-node graph,
  same session options and threads: its FLOP rate is the yardstick.
* FLOPs per query from the model's configuration (``flops.query_flops``; docs/design.md#measuring:
  the model as defined, patch convolutions over the valid region). The achieved fraction is
  ``queries/s x FLOPs per query / MatMul FLOP/s``, per repeat (decoder and MatMul runs alternate,
  each its own process), median over repeats. The same with the FLOPs the graph executes
  (dense patch matrices) is listed beside it.

A cross-check table counts the ``brats`` C model: as defined, as executed, torch's
``FlopCounterMode`` on ``OSSNet.decode`` (marginal per query), and the reference form that also
applies block 0's latent part per query, against the issue's 8.43 MFLOP.

Results: ``benchmarks/results/hardware[_TAG].{json,md}``. Examples::

    python benchmarks/bench_hardware.py --repeats 5
    python benchmarks/bench_hardware.py -m data/bench/models/brats-c -i data/bench/brats-test/BraTS20_Training_900
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flops import query_flops, torch_marginal_flops
from harness import (
    RESULTS,
    PeakMeter,
    environment,
    environment_markdown,
    median,
    spawn,
    table,
    worker_main,
    write_results,
)
from workloads import DEFAULT_ROOT, MANIFEST, load_manifest

MATMUL_WIDTH = 512
DEVICE_LABELS = {"cpu": "ONNX Runtime", "openvino": "OpenVINO"}
#: the issue's figure for brats C, MFLOP per query
ISSUE_BRATS_C_MFLOP = 8.43


# ------------------------------------------------------------------------------------ workers


def _median_call_seconds(run: Any, feeds: Sequence[Any], calls: int) -> float:
    run(feeds[0])  # warm-up: first-call allocations and kernel selection
    times = []
    for c in range(calls):
        t = time.perf_counter()
        run(feeds[c % len(feeds)])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _worker_decoder(spec: dict[str, Any]) -> dict[str, Any]:
    """Decoder graph alone (and Segmenter.query with a volume) on chunks of ``spec["chunk"]`` queries,
    on ``spec["device"]``: ``cpu`` (ONNX Runtime) or ``openvino``."""
    from ossnet_deploy.backends.openvino import OpenVinoBackend
    from ossnet_deploy.backends.ort import OrtBackend
    from ossnet_deploy.metadata import COORDS, LATENT, LOGITS, PATCHES
    from ossnet_deploy.segmenter import Segmenter

    n, calls, device = spec["chunk"], spec["calls"], spec.get("device", "cpu")
    rng = np.random.default_rng(0)
    path = Path(spec["model_dir"]) / "decoder.onnx"
    backend = (OpenVinoBackend(path, threads=spec["threads"]) if device == "openvino"
               else OrtBackend(path, device="cpu", threads=spec["threads"]))
    latent_shape = [int(d) for d in backend.inputs[LATENT].shape]
    latent = rng.standard_normal(latent_shape).astype(np.float32)
    seg = state = None
    if spec.get("input"):
        seg = Segmenter.from_dir(spec["model_dir"], device=device, threads=spec["threads"], max_queries=n)
        state = seg.encode(spec["input"])
        latent = np.ascontiguousarray(state.latent, dtype=np.float32)
    run = backend.bind({LATENT: latent})
    feeds = []
    for _ in range(min(calls, 4)):
        feed = {COORDS: rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)}
        if PATCHES in backend.inputs:
            shape = [n if not isinstance(d, int) else d for d in backend.inputs[PATCHES].shape]
            feed[PATCHES] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(feed)
    meter = PeakMeter()
    graph = _median_call_seconds(lambda f: run(f)[LOGITS], feeds, calls)
    result: dict[str, Any] = {"graph_seconds_per_call": graph, "graph_queries_per_second": n / graph}
    if seg is not None and state is not None:
        region = state.prepared.region
        lo = np.array([s.start for s in region])
        hi = np.array([s.stop for s in region])
        points = [rng.integers(lo, hi, size=(n, 3)).astype(np.int64) for _ in range(min(calls, 4))]
        query = _median_call_seconds(lambda idx: seg.query(state, idx), points, calls)
        result.update({"query_seconds_per_call": query, "query_queries_per_second": n / query})
    return {**result, **meter.finish()}


def _matmul_model(path: Path, width: int) -> None:
    """A one-node ONNX graph ``y = x @ W``: x (N, width) dynamic N, W (width, width) fp32 initializer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.random.default_rng(1).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        initializer=[numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _worker_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """ORT's fp32 MatMul (chunk x 512) @ (512 x 512) with OrtBackend's session options."""
    from ossnet_deploy.backends.ort import OrtBackend

    n, width = spec["chunk"], spec["width"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matmul.onnx"
        _matmul_model(path, width)
        backend = OrtBackend(path, device="cpu", threads=spec["threads"])
        rng = np.random.default_rng(0)
        feeds = [{"x": rng.standard_normal((n, width)).astype(np.float32)} for _ in range(2)]
        seconds = _median_call_seconds(backend.run, feeds, spec["calls"])
    flop = 2.0 * n * width * width
    return {"seconds_per_call": seconds, "flop_per_call": flop, "flops_per_second": flop / seconds}


WORKERS = {"decoder": _worker_decoder, "matmul": _worker_matmul}


# ------------------------------------------------------------------------------------ study


def _model_config(model_dir: Path) -> dict[str, Any]:
    from ossnet_deploy.onnx_metadata import read_graph_metadata

    return dict(read_graph_metadata(model_dir / "decoder.onnx").model_config)


def _cross_check() -> list[list[object]]:
    """The brats C count four ways (needs ossnet_train and torch)."""
    from ossnet_train.config import model_config

    config = model_config("c", "brats").to_dict()
    counted = query_flops(config)
    torch_count = torch_marginal_flops(config)
    reference = counted.patch_conv_dense + counted.decoder_linear + counted.latent_per_query
    return [
        ["as defined (valid-region patch convs, latent part once per volume): the headline",
         f"{counted.as_defined / 1e6:.2f}"],
        ["as the exported graph executes it (dense 343x343 patch matrices)", f"{counted.as_executed / 1e6:.2f}"],
        ["torch FlopCounterMode on OSSNet.decode, marginal per query", f"{torch_count / 1e6:.2f}"],
        ["dense patch matrices + block 0's latent part per query (reference form)", f"{reference / 1e6:.2f}"],
        ["the issue's figure", f"{ISSUE_BRATS_C_MFLOP:.2f}"],
    ]


def study(args: argparse.Namespace, models: list[tuple[str, Path, str | None]]) -> None:
    script = os.path.abspath(__file__)
    rows, payload = [], []
    for name, model_dir, volume in models:
        config = _model_config(model_dir)
        flops = query_flops(config)
        devices = [d for d in args.devices.split(",") if d]
        decoder_runs: dict[str, list[dict[str, Any]]] = {d: [] for d in devices}
        matmul_runs = []
        for repeat in range(args.repeats):  # alternated: decoder per device, matmul, decoder, ...
            print(f"[{name}] repeat {repeat + 1}/{args.repeats}", flush=True)
            for device in devices:
                decoder_runs[device].append(spawn(script, "decoder", {"model_dir": str(model_dir), "input": volume,
                                                                      "chunk": args.chunk, "calls": args.calls,
                                                                      "threads": args.threads, "device": device},
                                                  threads=args.threads, timeout=args.timeout))
            matmul_runs.append(spawn(script, "matmul", {"chunk": args.chunk, "width": MATMUL_WIDTH, "calls": args.calls,
                                                        "threads": args.threads},
                                     threads=args.threads, timeout=args.timeout))
        matmul = median([m["flops_per_second"] for m in matmul_runs])
        summaries = {}
        for device, runs in decoder_runs.items():
            defined = [d["graph_queries_per_second"] * flops.as_defined / m["flops_per_second"]
                       for d, m in zip(runs, matmul_runs, strict=True)]
            executed = [d["graph_queries_per_second"] * flops.as_executed / m["flops_per_second"]
                        for d, m in zip(runs, matmul_runs, strict=True)]
            qps = median([d["graph_queries_per_second"] for d in runs])
            query_qps = median([d.get("query_queries_per_second") for d in runs])
            summary = {"queries_per_second_graph": qps, "queries_per_second_with_patches": query_qps,
                       "matmul_flops_per_second": matmul, "fraction_as_defined": median(defined),
                       "fraction_as_executed": median(executed), "flops": flops.to_dict(),
                       "decoder_gflops_as_defined": None if qps is None else qps * flops.as_defined / 1e9}
            summaries[device] = summary
            fraction = summary["fraction_as_defined"]
            rows.append([name, f"{config.get('variant')} / {config.get('preset')}", DEVICE_LABELS.get(device, device),
                         f"{flops.as_defined / 1e6:.2f}", f"{flops.as_executed / 1e6:.2f}", f"{qps:,.0f}",
                         "n/a" if query_qps is None else f"{query_qps:,.0f}",
                         f"{summary['decoder_gflops_as_defined']:.1f}", f"{matmul / 1e9:.1f}", f"{fraction:.1%}",
                         f"{summary['fraction_as_executed']:.1%}",
                         "**pass**" if fraction >= 0.5 else "**FAIL**"])
        payload.append({"model": name, "model_dir": str(model_dir), "volume": volume, "model_config": config,
                        "summary": summaries, "decoder_runs": decoder_runs, "matmul_runs": matmul_runs})
    env = environment(args.threads, {"repeats": args.repeats, "chunk": args.chunk, "calls": args.calls,
                                     "devices": args.devices})
    parts = ["# Closeness to the hardware", "", environment_markdown(env), "",
             f"Decoder graph on chunks of {args.chunk} queries and ORT's fp32 MatMul ({args.chunk} x {MATMUL_WIDTH}) @ "
             f"({MATMUL_WIDTH} x {MATMUL_WIDTH}), each its own process, alternated {args.repeats} times; medians of "
             f"{args.calls} calls per process after one warm-up call. Fractions are per-repeat ratios, median. "
             "Target: decoder compute >= 50 % of the MatMul rate, with FLOPs as defined (docs/design.md#measuring).",
             "The decoder runs in ONNX Runtime's CPU provider (`device=\"cpu\"`) and, where openvino is installed, "
             "in OpenVINO (`device=\"openvino\"`: static query buckets, elementwise chains fused; what "
             "`device=\"auto\"`, the default, runs on a CPU where openvino is installed); the yardstick is ONNX "
             "Runtime's MatMul for both.",
             "", table(["model", "variant / preset", "decoder runs in", "MFLOP/query as defined", "as executed", "queries/s (graph)",
                        "queries/s (with patch cutting)", "decoder GFLOP/s (as defined)", "MatMul GFLOP/s",
                        "fraction (as defined)", "fraction (as executed)", "target >= 50 %"], rows), ""]
    cross: list[list[object]] = []
    if args.torch_check:
        cross = _cross_check()
        parts += ["## FLOPs per query of brats C, counted four ways (MFLOP)", "",
                  table(["count", "MFLOP"], cross), "",
                  f"The issue's {ISSUE_BRATS_C_MFLOP} matches the dense patch matrices plus the latent part per "
                  f"query; the model as defined (docs/design.md#measuring) counts {cross[0][1]}.", ""]
    write_results("hardware" + (f"_{args.tag}" if args.tag else ""),
                  {"environment": env, "results": payload, "cross_check_brats_c_mflop": cross}, "\n".join(parts),
                  args.out)


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if worker_main(WORKERS, argv):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", dest="models", action="append", default=[],
                        help="exported model folder (repeatable); default: the manifest's workloads")
    parser.add_argument("-i", "--input", dest="inputs", action="append", default=[],
                        help="a volume for each -m (its latent; enables the patch-cutting measure)")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_ROOT / MANIFEST)
    parser.add_argument("--workloads", default="", help="comma list of manifest workloads (default: all)")
    parser.add_argument("--chunk", type=int, default=4096, help="queries per decoder call (the runtime's default)")
    parser.add_argument("--devices", default=None,
                        help="comma list of decoder devices: cpu (ONNX Runtime), openvino (default: cpu, and openvino "
                             "when it is installed)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-torch-check", dest="torch_check", action="store_false",
                        help="skip the FLOP cross-check with torch's counter")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    if args.devices is None:
        import importlib.util

        args.devices = "cpu,openvino" if importlib.util.find_spec("openvino") else "cpu"
    models: list[tuple[str, Path, str | None]] = []
    if args.models:
        if args.inputs and len(args.inputs) != len(args.models):
            parser.error("give one -i per -m, or none")
        for n, model in enumerate(args.models):
            models.append((Path(model).name, Path(model), args.inputs[n] if args.inputs else None))
    else:
        if not args.manifest.exists():
            parser.error(f"{args.manifest} not found: pass -m, or run python benchmarks/workloads.py first")
        wanted = [w for w in args.workloads.split(",") if w]
        for w in load_manifest(args.manifest)["workloads"]:
            if (wanted and w.name not in wanted) or not (w.path("model_dir") / "decoder.onnx").exists():
                continue
            models.append((w.name, w.path("model_dir"), str(w.path("input")) if w.path("input").exists() else None))
    if not models:
        parser.error("no exported model found")
    study(args, models)


if __name__ == "__main__":
    main()
