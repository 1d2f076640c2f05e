"""CPU training speed: step time and points per second of ``ossnet-train fit`` on the demo preset.

What is measured: whole training steps of OSS-Net C on the ``demo`` preset (``--sampling
border``, augmentation on, ``--device cpu``), as ``fit`` itself records them in
``metrics.jsonl``: ``step_seconds`` (the sample making included when ``--workers 0``, as by
default here), ``data_seconds`` and ``compute_seconds``. The first ``--skip`` steps of every run
are dropped (caches and allocator warming up); each run reports the median of the rest, and
``points/s = batch x points / step seconds``.

Configurations (``--configs NAME:BATCHxPOINTS,...``): by default ``old`` = 2 volumes x 8192 points
(the CPU recipe the previous demo model was trained with) and ``new`` = 2 x 32768 (the recommended
CPU recipe, docs/training.md): a step's encoder pass costs the same whatever the number of points,
so more points per volume buy points per second. Each is run with every ``--threads`` value.
Every measurement is its own fresh process (benchmarks/harness.py); the configurations alternate
(old new old new ...) within each thread count, and the reported speed-up is the median of the
per-repeat ratios (docs/design.md#measuring).

Data: a folder of the demo cohort (``--data``; ``ossnet-train make-demo-data OUT --subjects 2``),
or, without ``--data``, 2 subjects written into a temporary folder (needs nilearn).

Usage (repository root)::

    python benchmarks/bench_train_speed.py [--data DIR] [--threads 1 2] [--repeats 3] [--steps 6]
    python benchmarks/bench_train_speed.py --quick      # 1 repeat of 3 steps per configuration

Writes ``benchmarks/results/train_speed.json`` and ``.md`` (``--out`` and ``--name`` change the
folder and the name). About 9 minutes on two idle cores with the defaults, 3 with ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # the benchmarks folder is not a package
    RESULTS,
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

DEFAULT_CONFIGS = "old:2x8192,new:2x32768"


def _fit_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run in this (fresh) process; the medians of its steps after ``skip``."""
    import torch

    from ossnet_train.train import TrainConfig, fit

    with tempfile.TemporaryDirectory(prefix="bench-train-speed-") as tmp:
        run = Path(tmp) / "run"
        config = TrainConfig(data_kind="demo", data=spec["data"], out=str(run), variant="c", preset="demo",
                             steps=spec["steps"], points=spec["points"], batch=spec["batch"], sampling="border",
                             device="cpu", threads=spec["threads"], workers=spec["workers"], seed=spec["seed"],
                             progress=False, checkpoint_every=10**6)
        result = fit(config, log=lambda line: None)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "train"][spec["skip"]:]
    seconds = statistics.median(r["step_seconds"] for r in steps)
    units = spec["batch"] * spec["points"]
    return {
        "step_seconds": seconds, "points_per_s": units / seconds,
        "data_seconds": statistics.median(r["data_seconds"] for r in steps),
        "compute_seconds": statistics.median(r["compute_seconds"] for r in steps),
        "steps_measured": len(steps), "step_seconds_all": [r["step_seconds"] for r in steps],
        "peak_memory_bytes": result.peak_memory_bytes, "torch_threads": torch.get_num_threads(),
    }


def _configs(text: str) -> list[tuple[str, int, int]]:
    out = []
    for item in text.split(","):
        name, _, size = item.partition(":")
        batch, _, points = size.partition("x")
        out.append((name.strip(), int(batch), int(points)))
    return out


def _make_data(root: Path) -> Path:
    from ossnet_train.demo_cohort import make_demo_cohort

    make_demo_cohort(root, 2, 1000)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="demo cohort folder (default: 2 subjects in a temp dir)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="NAME:BATCHxPOINTS,... (first = the baseline)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads per run")
    parser.add_argument("--workers", type=int, default=0, help="fit's DataLoader workers (0: samples made in the step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps per run")
    parser.add_argument("--skip", type=int, default=2, help="first steps of a run left out")
    parser.add_argument("--quick", action="store_true", help="1 repeat of 3 steps (1 skipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="train_speed", help="result file name (NAME.json, NAME.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.skip = 1, 3, 1
    if args.skip >= args.steps:
        parser.error("--skip must be smaller than --steps")
    configs = _configs(args.configs)
    with tempfile.TemporaryDirectory(prefix="bench-train-data-") as tmp:
        data = args.data or _make_data(Path(tmp) / "demo")
        runs: list[dict[str, Any]] = []
        for threads in args.threads:
            for repeat in range(args.repeats):
                for name, batch, points in configs:  # alternated: old new old new ...
                    spec = {"data": str(data), "batch": batch, "points": points, "threads": threads,
                            "workers": args.workers, "steps": args.steps, "skip": args.skip, "seed": args.seed}
                    result = spawn(__file__, "fit", spec, threads=threads, timeout=args.timeout)
                    runs.append({"config": name, "batch": batch, "points": points, "threads": threads,
                                 "repeat": repeat, **result})
                    print(f"threads {threads} repeat {repeat} {name} ({batch} x {points}): "
                          f"{result['step_seconds']:.2f} s/step, {result['points_per_s']:.0f} points/s", flush=True)

    base = configs[0][0]
    rows = []
    for threads in args.threads:
        for name, batch, points in configs:
            mine = [r for r in runs if r["threads"] == threads and r["config"] == name]
            ref = [r for r in runs if r["threads"] == threads and r["config"] == base]
            ratio = median_ratio(mine, ref, "points_per_s")
            rows.append([name, f"{batch} x {points}", threads, f"{median([r['step_seconds'] for r in mine]):.2f}",
                         f"{median([r['data_seconds'] for r in mine]):.2f}",
                         f"{median([r['compute_seconds'] for r in mine]):.2f}",
                         f"{median([r['points_per_s'] for r in mine]):.0f}",
                         f"{ratio:.2f}" if ratio is not None else "n/a",
                         fmt_gb(median([r['peak_memory_bytes'] for r in mine])), len(mine)])
    env = environment(max(args.threads), {"workers": args.workers, "steps": args.steps, "skip": args.skip})
    markdown = "\n\n".join([
        "# CPU training speed (demo preset, OSS-Net C, border sampling)",
        environment_markdown(env),
        f"Medians over runs of the per-run median step (steps {args.skip + 1}-{args.steps} of each run; "
        f"--workers {args.workers}); speed-up = median over repeats of points/s divided by {base}'s in the "
        "same repeat.",
        table(["config", "volumes x points", "threads", "step s", "data s", "compute s", "points/s",
               f"x {base}", "peak GB", "runs"], rows),
    ])
    write_results(args.name, {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                                  "runs": runs}, markdown, args.out)
    return 0


if __name__ == "__main__":
    if not worker_main({"fit": _fit_worker}, sys.argv[1:]):
        raise SystemExit(main())
