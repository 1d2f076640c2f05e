"""The cohort manifest: one JSON line per case and run, in the output folder (docs/design.md#cohorts-on-ray).

A cohort run (``ossnet-segment -i FOLDER -o FOLDER``, either engine) appends one
:class:`CaseRecord` per case to ``<output folder>/ossnet-manifest.jsonl`` as soon as the case
ends, so an interrupted or crashed run leaves a manifest that says what finished. Records are
only ever appended (a rerun adds its own records under a new ``run_id``); the last record of a
case is its current state. Each line is written with one ``write`` and flushed to disk, so a
crash can at worst leave a truncated last line, which :func:`read_manifest` skips.

The manifest reports; it does not decide. Whether a case is redone depends on its output file
alone (a finished output is skipped, a missing one is segmented), exactly as before manifests
existed, so both engines and runs without a manifest behave the same.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FAILED_STATUSES",
    "MANIFEST_NAME",
    "STATUSES",
    "CaseRecord",
    "ManifestWriter",
    "new_run_id",
    "read_manifest",
    "utc_now",
]

MANIFEST_NAME = "ossnet-manifest.jsonl"

#: ``done``: written; ``warned``: written, with domain warnings; ``skipped``: its output existed
#: (finished earlier); ``failed``: nothing written (bad input, a bug, or its worker died too
#: often, or no result came back); ``interrupted``: the run was stopped before the case ended.
STATUSES = ("done", "warned", "skipped", "failed", "interrupted")
FAILED_STATUSES = ("failed", "interrupted")


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds (``2025-01-01T12:00:00.123Z``)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def new_run_id() -> str:
    """A run's id: UTC start time plus 32 random bits (``20250101T120000Z-1a2b3c4d``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


@dataclass(frozen=True)
class CaseRecord:
    """What happened to one case in one run.

    Attributes:
        case: the case name (the output is ``<case>.nii.gz``).
        inputs: the input files, in model channel order.
        output: the output file.
        status: one of :data:`STATUSES`.
        error: the one-line error message of a failed case, else None.
        error_type: the exception's class name (``InputError``, ``DependencyError``, ...), or
            ``WorkerLost`` when no result came back from the worker, else None.
        warnings: the domain checks' findings (``SegmentationStats.warnings``).
        seconds: wall seconds of the case (read to write), None when it did not run.
        queries: decoder queries made.
        dense_queries: the queries ``dense`` mode would make (the input's region of the grid).
        peak_rss_bytes: the worker process's peak resident memory during the case, or None.
        stage_seconds: ``(stage, wall seconds)`` of the case, in run order.
        mode: the scheduler mode.
        device: where the graphs ran (``cpu``, ``cuda:0``, ...).
        host: the machine that ran it.
        pid: the process that ran it.
        pair_id: the model pair's ``ossnet.pair_id``.
        engine: ``local`` or ``ray``.
        run_id: the run that wrote the record (:func:`new_run_id`).
        started_at: UTC time the case started (:func:`utc_now`), None when it did not run.
        finished_at: UTC time the record was made (:func:`utc_now`).
        traceback: the traceback of an unexpected error (a bug), else None.
    """

    case: str
    inputs: tuple[str, ...]
    output: str
    status: str
    error: str | None = None
    error_type: str | None = None
    warnings: tuple[str, ...] = ()
    seconds: float | None = None
    queries: int | None = None
    dense_queries: int | None = None
    peak_rss_bytes: int | None = None
    stage_seconds: tuple[tuple[str, float], ...] = ()
    mode: str | None = None
    device: str | None = None
    host: str | None = None
    pid: int | None = None
    pair_id: str | None = None
    engine: str = "local"
    run_id: str = ""
    started_at: str | None = None
    finished_at: str = field(default_factory=utc_now)
    traceback: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            # Records are built by this package, never from user input: a wrong status is a bug.
            raise ValueError(f"unknown case status {self.status!r}; expected one of {STATUSES}")

    @property
    def failed(self) -> bool:
        """The case produced no output in this run and was not skipped."""
        return self.status in FAILED_STATUSES

    def summary(self) -> str:
        """One line like ``SegmentationStats.summary()``: time, queries, peak memory, host."""
        parts = []
        if self.seconds is not None:
            parts.append(f"{self.seconds:.2f} s")
        if self.queries is not None:
            fraction = self.queries / max(self.dense_queries or 0, 1)
            parts.append(f"{self.queries:,} queries ({fraction:.1%} of dense)")
        parts.append("peak n/a" if self.peak_rss_bytes is None else f"peak {self.peak_rss_bytes / 2**20:.0f} MiB")
        if self.mode is not None and self.device is not None:
            parts.append(f"{self.mode} on {self.device}")
        if self.host is not None:
            parts.append(f"host {self.host}")
        return ", ".join(parts)

    def with_run(self, *, engine: str, run_id: str) -> CaseRecord:
        """A copy stamped with the run that reports it."""
        return replace(self, engine=engine, run_id=run_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        data["warnings"] = list(self.warnings)
        data["stage_seconds"] = [[name, seconds] for name, seconds in self.stage_seconds]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseRecord:
        """The inverse of :meth:`to_dict`; unknown keys (a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["inputs"] = tuple(values.get("inputs", ()))
        values["warnings"] = tuple(values.get("warnings", ()))
        values["stage_seconds"] = tuple((str(n), float(t)) for n, t in values.get("stage_seconds", ()))
        return cls(**values)


class ManifestWriter:
    """Appends :class:`CaseRecord` lines to a manifest file, each flushed to disk at once.

    One writer per run, in the driver process; workers never write the manifest (they return
    records), so lines from one run never interleave.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None

    def write(self, record: CaseRecord) -> None:
        """Append one record and fsync it (a record that is not on disk did not happen)."""
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_all(self, records: Iterable[CaseRecord]) -> None:
        """Append several records."""
        for record in records:
            self.write(record)

    def close(self) -> None:
        """Close the file (records are already on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: str | os.PathLike[str]) -> list[CaseRecord]:
    """Every record of a manifest, oldest first; a missing file is an empty manifest.

    Lines that are not a complete JSON object (a crash while the last line was written) are
    skipped: they name no finished case.
    """
    target = Path(path)
    if not target.is_file():
        return []
    records = []
    for line in target.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            try:
                records.append(CaseRecord.from_dict(data))
            except (TypeError, ValueError):
                continue
    return records
