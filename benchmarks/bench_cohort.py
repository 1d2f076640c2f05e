"""Cohort throughput: the local folder run against Ray with 1 and 2 actors (docs/cohorts.md#throughput).

Every measurement is a whole ``ossnet-segment`` process on a fresh output folder (interpreter
start, Ray start and shutdown, model loading and every case included), timed from outside;
the three programs run alternately (local, ray-1, ray-2, local, ...) and the table gives
medians and the median of the per-repeat ratios to the local run (docs/design.md#measuring).
How many actors really ran at once is read back from the run's manifest (the most cases whose
[start, end] intervals overlap) along with the distinct worker processes.

The machine's cores are shared the same way by all three: local runs ``--threads C``, ray-1 one
actor with C threads, ray-2 two actors with C/2 threads each (C = ``--cores``, default the CPUs
available to this process).

The cohort: ``--volumes`` copies of the bundled demo sample (``examples/demo_3004_t1.nii.gz``,
197x233x189 at 1 mm), each a distinct file; or any folder with ``--cohort``. With the bundled
model one such volume took 15-21 s on a 1-thread actor on two busy cores, so 20 volumes x 3
programs x 2 repeats is about half an hour; docs/cohorts.md has the command. ``--model`` and ``--cohort`` also allow a smoke test on tiny
volumes (``--smoke`` makes them).

Usage::

    python benchmarks/bench_cohort.py --volumes 20 --repeats 2           # the benchmark
    python benchmarks/bench_cohort.py --smoke --volumes 4 --repeats 1 --out-dir /tmp/cohort-smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    REPO,
    RESULTS,
    environment,
    environment_markdown,
    median,
    median_ratio,
    table,
    thread_env,
    write_results,
)

from ossnet_deploy.manifest import MANIFEST_NAME, read_manifest

SAMPLE = REPO / "examples" / "demo_3004_t1.nii.gz"
PROGRAMS = ("local", "ray-1", "ray-2")
SMOKE_PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
                    "intensity": "zscore_foreground"}


def make_cohort(folder: Path, volumes: int, source: Path) -> Path:
    """``volumes`` copies of ``source`` as ``case_NNN.nii.gz`` (real copies: no shared page-cache tricks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(volumes):
        shutil.copyfile(source, folder / f"case_{n:03d}.nii.gz")
    return folder


def make_smoke(folder: Path, volumes: int) -> tuple[Path, Path]:
    """A tiny analytic model and ``volumes`` 32x32x24 phantoms (tests/deploy/synthetic_models.py)."""
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(REPO / "tests" / "deploy"))
    from synthetic_models import two_level_phantom, write_threshold_pair

    model = folder / "model"
    write_threshold_pair(model, SMOKE_PREPROCESS)
    cohort = folder / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for n in range(volumes):
        data = two_level_phantom(centre=(8.0 + 2 * (n % 5), 12.0, 9.0), radius=3.0 + (n % 5) / 2)
        nib.save(nib.Nifti1Image(data, affine), cohort / f"case_{n:03d}.nii.gz")
    return model, cohort


def command(program: str, cohort: Path, out: Path, model: Path | None, cores: int) -> list[str]:
    """The ``ossnet-segment`` command line of one program."""
    base = [sys.executable, "-c", "from ossnet_deploy.cli import main; main()", "-i", str(cohort), "-o", str(out),
            "-d", "cpu", "-q", "--disable-progress-bar"]
    if model is not None:
        base += ["-m", str(model)]
    if program == "local":
        return [*base, "--threads", str(cores)]
    actors = int(program.split("-")[1])
    return [*base, "--engine", "ray", "--actors", str(actors), "--threads-per-actor", str(max(1, cores // actors))]


def measure(program: str, cohort: Path, work: Path, model: Path | None, cores: int, repeat: int,
            timeout: float) -> dict[str, Any]:
    """One whole process on a fresh output folder; volumes per minute and what the manifest says."""
    out = work / f"out-{program}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(command(program, cohort, out, model, cores), capture_output=True, text=True,
                          timeout=timeout, check=False, env=thread_env(cores), cwd=REPO)
    seconds = time.perf_counter() - started
    records = read_manifest(out / MANIFEST_NAME)
    ran = [r for r in records if r.started_at is not None]
    result = {"program": program, "repeat": repeat, "returncode": done.returncode, "process_seconds": seconds,
              "cases": len(records), "failed": sum(r.failed for r in records),
              "volumes_per_minute": 60.0 * sum(not r.failed for r in records) / seconds,
              "case_seconds_sum": sum(r.seconds or 0.0 for r in ran),
              "worker_processes": len({(r.host, r.pid) for r in ran}),
              "max_concurrent": _max_concurrent(ran),
              "peak_rss_max_bytes": max((r.peak_rss_bytes or 0 for r in ran), default=None)}
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-2000:]
    shutil.rmtree(out, ignore_errors=True)
    return result


def _max_concurrent(records: Sequence[Any]) -> int:
    from ossnet_deploy.cohort_ray import CohortRun

    return CohortRun(records=list(records), manifest=Path(), plan=None, run_id="").max_concurrent()


def report(runs: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown table."""
    by_program = {p: [r for r in runs if r["program"] == p] for p in PROGRAMS}
    rows = []
    for program, mine in by_program.items():
        ratio = median_ratio(mine, by_program["local"], "volumes_per_minute")
        rows.append((program, " ".join(command(program, Path("COHORT"), Path("OUT"), None, args.cores)[3:])
                     .replace(" -d cpu -q --disable-progress-bar", ""),
                     f"{median([r['volumes_per_minute'] for r in mine]) or 0:.2f}",
                     "n/a" if ratio is None else f"{ratio:.2f}",
                     f"{median([r['process_seconds'] for r in mine]) or 0:.1f}",
                     "/".join(str(r["max_concurrent"]) for r in mine),
                     "/".join(str(r["worker_processes"]) for r in mine),
                     "/".join(str(r["failed"]) for r in mine)))
    title = "Cohort throughput (smoke test: tiny volumes, not the benchmark)" if args.smoke else "Cohort throughput"
    return "\n\n".join([
        f"# {title}",
        f"`python benchmarks/bench_cohort.py {' '.join(args.argv)}`: {args.volumes} volumes "
        f"({'32x32x24 phantoms, analytic threshold model' if args.smoke else 'copies of ' + str(args.source)}), "
        f"{args.repeats} repeat(s), programs alternated, whole processes (Ray start and shutdown included).",
        environment_markdown(env),
        table(("program", "command", "volumes/min (median)", "x local (median ratio)", "process s (median)",
               "actors at once (per repeat)", "worker processes", "failed cases"), rows),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--cohort", type=Path, default=None, help="an existing folder of cases (default: copies)")
    parser.add_argument("--source", type=Path, default=SAMPLE, help="the volume the cohort copies")
    parser.add_argument("--smoke", action="store_true", help="tiny phantoms and an analytic model")
    parser.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds per process")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        work = Path(tmp)
        model, cohort = args.model, args.cohort
        if args.smoke:
            model, cohort = make_smoke(work, args.volumes)
        elif cohort is None:
            cohort = make_cohort(work / "cohort", args.volumes, args.source)
        runs = []
        for repeat in range(args.repeats):
            for program in PROGRAMS:
                result = measure(program, cohort, work, model, args.cores, repeat, args.timeout)
                print(f"repeat {repeat} {program}: {result['volumes_per_minute']:.2f} volumes/min, "
                      f"{result['process_seconds']:.1f} s, {result['max_concurrent']} at once, "
                      f"rc {result['returncode']}", flush=True)
                runs.append(result)
    env = environment(args.cores, {"ray": _ray_version()})
    name = "cohort_smoke" if args.smoke else "cohort"
    write_results(name, {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs},
                  report(runs, env, args), args.out_dir)


def _ray_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
