"""The measuring harness shared by the peer and hardware benchmarks (docs/design.md#measuring).

* Every measurement is one fresh Python process (a *worker*): the benchmark script re-runs
  itself as ``python SCRIPT _worker KIND JSON`` (:func:`spawn`, :func:`worker_main`), and the
  worker prints one JSON object on its last stdout line. The parent times the whole process
  (``process_seconds``: start of the interpreter to its exit).
* Peak memory is the kernel's ``VmHWM`` (:class:`PeakMeter`): the peak while starting and
  loading, then reset (``5`` into ``/proc/self/clear_refs``) and the peak of the measured call;
  the process's peak is the larger of the two.
* Programs that are compared run alternately (A B A B ...) and ratios are taken per repeat,
  then their median is reported (:func:`median_ratio`), never the ratio of medians.
* Results: ``<name>.json`` (environment + raw runs), ``<name>.md`` (tables) and PNG plots in
  ``benchmarks/results/`` (:func:`write_results`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "GB",
    "MIB",
    "REPO",
    "RESULTS",
    "PeakMeter",
    "environment",
    "environment_markdown",
    "fmt_gb",
    "median",
    "median_ratio",
    "spawn",
    "table",
    "thread_env",
    "worker_main",
    "write_results",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: the issue states memory in GB (10^9 bytes); tables say "GB" and mean exactly that.
GB = 1e9
MIB = 2**20

Worker = Callable[[dict[str, Any]], dict[str, Any]]


def thread_env(threads: int, extra_path: Sequence[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """Environment of a worker: every thread pool (OpenMP, MKL, OpenBLAS) capped at ``threads``.

    ``extra_path`` is prepended to ``PYTHONPATH`` (the MONAI worker's ``.bench-deps``); the
    repository root is always on it so workers import the checkout's packages.
    """
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    paths = [os.fspath(p) for p in extra_path] + [os.fspath(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def spawn(script: str | os.PathLike[str], kind: str, spec: Mapping[str, Any], *, threads: int,
          timeout: float, extra_path: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    """Run worker ``kind`` of ``script`` in a fresh interpreter; its JSON result plus ``process_seconds``.

    Raises:
        RuntimeError: the worker failed (the message holds the end of its stderr).
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
    """
    command = [sys.executable, os.fspath(script), "_worker", kind, json.dumps(dict(spec))]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          env=thread_env(threads, extra_path), cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = seconds
    return result


def worker_main(workers: Mapping[str, Worker], argv: Sequence[str]) -> bool:
    """If ``argv`` is ``_worker KIND JSON``, run that worker, print its JSON and return True."""
    if list(argv[:1]) != ["_worker"]:
        return False
    result = workers[argv[1]](json.loads(argv[2]))
    print(json.dumps(result))
    return True


class PeakMeter:
    """Peak resident memory of this process in two phases: start + load, then the measured call.

    Create it after loading (before the measured call): it reads the peak so far and resets it.
    :meth:`finish` after the call returns both peaks and the process's overall peak (bytes;
    ``None`` where ``/proc`` is unavailable).
    """

    def __init__(self) -> None:
        from ossnet_deploy.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

        self.load_peak = peak_rss_bytes()
        self.loaded_rss = current_rss_bytes()
        self.reset_ok = reset_peak_rss()

    def finish(self) -> dict[str, int | None]:
        """``load_peak_bytes``, ``loaded_rss_bytes``, ``call_peak_bytes``, ``process_peak_bytes``."""
        from ossnet_deploy.memory import peak_rss_bytes

        call = peak_rss_bytes()
        peaks = [p for p in (self.load_peak, call) if p is not None]
        return {"load_peak_bytes": self.load_peak, "loaded_rss_bytes": self.loaded_rss,
                "call_peak_bytes": call if self.reset_ok else None,
                "process_peak_bytes": max(peaks) if peaks else None}


def median(values: Sequence[float | None]) -> float | None:
    """Median of the non-None values, None when there are none."""
    clean = [float(v) for v in values if v is not None]
    return statistics.median(clean) if clean else None


def median_ratio(numerator: Sequence[Mapping[str, Any]], denominator: Sequence[Mapping[str, Any]],
                 key: str) -> float | None:
    """Median over repeats ``r`` of ``numerator[r][key] / denominator[r][key]``.

    Runs are paired by their ``repeat`` field when they have one (a failed run then drops only
    its own pair), else by position.
    """
    def by_repeat(runs: Sequence[Mapping[str, Any]]) -> dict[Any, Mapping[str, Any]]:
        return {r.get("repeat", n): r for n, r in enumerate(runs)}

    top, bottom = by_repeat(numerator), by_repeat(denominator)
    pairs = [(top[r], bottom[r]) for r in top if r in bottom]
    ratios = [a[key] / b[key] for a, b in pairs if a.get(key) is not None and b.get(key)]
    return statistics.median(ratios) if ratios else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _version(name: str, path: Sequence[str] | None = None) -> str | None:
    try:
        if path is None:
            return importlib.metadata.version(name)
        for dist in importlib.metadata.distributions(name=name, path=list(path)):
            return str(dist.version)
    except importlib.metadata.PackageNotFoundError:
        pass
    return None


def environment(threads: int, extra: Mapping[str, Any] | None = None,
                monai_path: Sequence[str] | None = None) -> dict[str, Any]:
    """Machine and software description stored with every result (versions read from metadata,
    nothing is imported)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                            check=False).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=REPO, check=False).stdout.strip())
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "git": commit, "git_dirty": dirty,
        "cpu": _cpu_model(), "machine": platform.machine(), "cpus_online": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)), "memory_total_bytes": _memory_total(),
        "kernel": platform.release(), "python": platform.python_version(), "threads": threads,
        "versions": {name: _version(name) for name in ("numpy", "onnxruntime", "torch", "nibabel", "onnx")},
        "load_average_at_start": os.getloadavg(),
    }
    if monai_path is not None:
        info["versions"]["monai"] = _version("monai", monai_path)
    info.update(extra or {})
    return info


def fmt_gb(value: float | None) -> str:
    """Bytes as GB (10^9) with two decimals, ``n/a`` for None."""
    return "n/a" if value is None else f"{value / GB:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment_markdown(env: Mapping[str, Any]) -> str:
    """One paragraph describing the machine and versions, for the top of a results file."""
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    memory = env.get("memory_total_bytes")
    return (f"Machine: {env.get('cpu')} ({env.get('cpus_available')} of {env.get('cpus_online')} CPUs available, "
            f"{(memory or 0) / 2**30:.0f} GiB RAM), Linux {env.get('kernel')}, Python {env.get('python')}; "
            f"{versions}; {env.get('threads')} threads per program; git {env.get('git')}"
            f"{' (uncommitted changes)' if env.get('git_dirty') else ''}; {env.get('date')}.")


def write_results(name: str, payload: Mapping[str, Any], markdown: str, out_dir: Path) -> Path:
    """Write ``<out_dir>/<name>.json`` and ``.md``; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
    print(f"\nwritten: {path} and {name}.md")
    return path
