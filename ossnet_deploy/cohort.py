"""One case of a cohort: plan it, segment it, record it (docs/design.md#cohorts-on-ray).

Both engines of ``ossnet-segment`` run every case through :func:`segment_case`: the local
folder loop in ``cli.py`` and each Ray actor in ``cohort_ray.py``. So a case gives the same
labels, the same error message and the same manifest record whichever engine ran it, and a
rerun treats it the same way (:func:`is_finished`: an existing output is skipped, a missing one
is segmented).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ossnet_deploy.errors import InputError, OssnetError, describe
from ossnet_deploy.manifest import CaseRecord, utc_now

if TYPE_CHECKING:
    from ossnet_deploy.inputs import Case
    from ossnet_deploy.segmenter import SegmentationStats, Segmenter

__all__ = [
    "CaseSettings",
    "Job",
    "ModelOptions",
    "PlanError",
    "StopRequested",
    "is_cohort_input",
    "is_finished",
    "plan_jobs",
    "run_job",
    "segment_case",
    "skipped_record",
]


class PlanError(InputError):
    """The inputs and the output do not fit together (the CLI reports it as a usage error)."""


class StopRequested(OssnetError):
    """The run was interrupted while this case was segmented; nothing was written for it."""


@dataclass(frozen=True)
class Job:
    """One case and where its outputs go."""

    case: Case
    output: Path

    @property
    def preview(self) -> Path:
        """``<name>.png`` beside the output (``out/case.nii.gz`` -> ``out/case.png``)."""
        name = self.output.name
        for suffix in (".nii.gz", ".nii"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        return self.output.with_name(name + ".png")


@dataclass(frozen=True)
class CaseSettings:
    """How every case of a run is segmented and written (the CLI's per-case options)."""

    fit: str = "error"
    overwrite: bool = False
    preview: bool = False
    fail_on_warning: bool = False


@dataclass(frozen=True)
class ModelOptions:
    """Which model a run loads and how (``Segmenter.from_dir``'s arguments but ``threads``, which
    each engine sets for its own processes)."""

    model_dir: Path | None = None
    device: str = "auto"
    precision: str = "fp32"
    mode: str = "adaptive"
    interpolation_margin: float | None = None
    max_queries: int | None = None

    def segmenter_kwargs(self) -> dict[str, Any]:
        """``Segmenter.from_dir`` keyword arguments, ``model_dir`` and ``threads`` excepted."""
        return {"device": self.device, "precision": self.precision, "mode": self.mode,
                "interpolation_margin": self.interpolation_margin, "max_queries": self.max_queries}


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith((".nii.gz", ".nii"))


def is_cohort_input(inputs: Sequence[Path], channels: tuple[str, ...]) -> bool:
    """True when ``inputs`` is one folder of cases (not one case folder of a multi-channel model)."""
    from ossnet_deploy.inputs import case_folder_files

    if len(inputs) != 1 or not inputs[0].is_dir():
        return False
    return len(channels) <= 1 or case_folder_files(inputs[0], channels, nnunet=False) is None


def plan_jobs(inputs: Sequence[Path], output: Path, channels: tuple[str, ...]) -> list[Job]:
    """Turn the ``-i`` values into cases and output paths.

    Raises:
        PlanError: the inputs and ``-o`` do not fit together.
        InputError: a folder input that does not exist.
    """
    from ossnet_deploy.inputs import Case, case_folder_files, case_name, discover_cases

    inputs = list(inputs)
    output_is_file = _is_nifti_name(output)
    if len(inputs) == 1 and inputs[0].is_dir():
        folder = inputs[0]
        # Only a BraTS-style folder is one case; nnU-Net <case>_XXXX files form a folder of cases.
        files = case_folder_files(folder, channels, nnunet=False) if len(channels) > 1 else None
        if files is not None:
            cases = [Case(folder.name, files)]
        else:
            cases = discover_cases(folder, channels)
            if output_is_file:
                raise PlanError(f"-i {folder} is a folder of cases, so -o must be a folder, not {output}")
    else:
        if any(p.is_dir() for p in inputs):
            raise PlanError("a folder input (-i FOLDER) must be the only input")
        cases = [Case(case_name(inputs[0], channels), tuple(inputs))]
    if output_is_file:
        return [Job(case, output) for case in cases]
    return [Job(case, output / f"{case.name}.nii.gz") for case in cases]


def is_finished(job: Job, settings: CaseSettings) -> bool:
    """The case's output exists and is kept (a rerun skips it; ``overwrite`` redoes it)."""
    return job.output.exists() and not settings.overwrite


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def run_job(job: Job, segmenter: Segmenter, settings: CaseSettings, *, progress: Any = None,
            warn: Callable[[str], None] | None = None, stop: Callable[[], bool] | None = None) -> SegmentationStats:
    """Segment one case and write its outputs atomically; returns its statistics.

    With ``settings.fail_on_warning``, a case whose input or output the domain checks flag
    raises :class:`InputError` and nothing is written for it. ``warn`` receives messages that
    do not fail the case (a preview that exists and was kept). ``stop()`` is asked just before
    writing: True (the run was interrupted) raises :class:`StopRequested` and writes nothing.

    Raises:
        OssnetError: the case cannot be segmented or written (the message names the file).
    """
    import numpy as np

    from ossnet_deploy.errors import OutputExistsError
    from ossnet_deploy.inputs import VolumeInput
    from ossnet_deploy.memory import reset_peak_rss
    from ossnet_deploy.nifti_io import save_image
    from ossnet_deploy.preview import grey_levels, write_preview

    case = job.case
    if case.problem is not None:
        raise InputError(case.problem)
    for source in case.files:
        if _same_file(source, job.output) or (settings.preview and _same_file(source, job.preview)):
            raise InputError(describe(job.output, "output would replace an input file", found=str(source),
                                      fix="choose another output path (-o)"))
    image = list(case.files) if len(case.files) > 1 else case.files[0]
    # The input's grey levels for the preview are taken while it is in memory anyway, as 8-bit
    # levels (a quarter of the float input), instead of reading and decoding the file again.
    kept: dict[str, Any] = {}

    def keep_preview_grey(volume: VolumeInput) -> None:
        kept["grey"] = grey_levels(volume.data[0])
        kept["affine"] = np.asarray(volume.affine)

    reset_peak_rss()  # this case's peak, not the process's (one case at a time per process)
    labels_img, stats = segmenter.segment_with_stats(image, fit=settings.fit, progress=progress,
                                                     on_read=keep_preview_grey if settings.preview else None)
    if settings.fail_on_warning and stats.warnings:
        raise InputError(describe(case.files[0], "the input or its segmentation lies outside what the model knows; "
                                  "nothing was written (--fail-on-warning)", found=" / ".join(stats.warnings),
                                  fix="check the input; without --fail-on-warning the result is written with "
                                      "these warnings"))
    if stop is not None and stop():
        raise StopRequested(describe(job.output, "the run was interrupted; nothing was written",
                                     fix="rerun: finished outputs are skipped"))
    started = time.perf_counter()
    save_image(labels_img, job.output, overwrite=settings.overwrite)
    if settings.preview:
        try:
            write_preview(job.preview, kept["grey"], np.asarray(labels_img.dataobj), kept["affine"],
                          overwrite=settings.overwrite)
        except OutputExistsError:
            if warn is not None:
                warn(f"{job.preview}: preview exists and was kept (--overwrite replaces it)")
    return stats.with_stage("write", time.perf_counter() - started)


def _base_record(job: Job, pair_id: str | None) -> dict[str, Any]:
    return {"case": job.case.name, "inputs": tuple(os.fspath(f) for f in job.case.files),
            "output": os.fspath(job.output), "host": socket.gethostname(), "pid": os.getpid(), "pair_id": pair_id}


def skipped_record(job: Job, pair_id: str | None) -> CaseRecord:
    """The record of a case whose output was finished by an earlier run."""
    return CaseRecord(**_base_record(job, pair_id), status="skipped")


def segment_case(job: Job, segmenter: Segmenter, settings: CaseSettings, *, progress: Any = None,
                 warn: Callable[[str], None] | None = None, stop: Callable[[], bool] | None = None) -> CaseRecord:
    """Segment one case (:func:`run_job`) and describe the outcome; never raises for the case.

    A user-caused failure (:class:`OssnetError`) becomes a ``failed`` record with its one-line
    message; any other exception (a bug) too, with its traceback kept, so one case can never
    stop a cohort. ``KeyboardInterrupt`` and ``SystemExit`` pass through. ``stop`` (see
    :func:`run_job`) is how a worker in another process learns that its run was interrupted:
    the case then ends ``interrupted``, before any work when ``stop()`` is already True.
    """
    base = _base_record(job, segmenter.encoder_meta.pair_id)
    base["started_at"] = utc_now()
    started = time.perf_counter()
    try:
        if stop is not None and stop():
            raise StopRequested(describe(job.output, "the run was interrupted before this case started"))
        stats = run_job(job, segmenter, settings, progress=progress, warn=warn, stop=stop)
    except StopRequested as exc:
        return CaseRecord(**base, status="interrupted", error=str(exc), error_type=type(exc).__name__)
    except OssnetError as exc:
        return CaseRecord(**base, status="failed", error=str(exc), error_type=type(exc).__name__,
                          seconds=time.perf_counter() - started, traceback=traceback.format_exc())
    except Exception as exc:  # a bug must not stop a cohort run; it is reported and counted
        message = (f"{job.case.name}: unexpected {type(exc).__name__}: {exc} (please report this; -v shows "
                   "the traceback)")
        return CaseRecord(**base, status="failed", error=message, error_type=type(exc).__name__,
                          seconds=time.perf_counter() - started, traceback=traceback.format_exc())
    return CaseRecord(**base, status="warned" if stats.warnings else "done", warnings=tuple(stats.warnings),
                      seconds=stats.total_seconds, queries=stats.total_queries, dense_queries=stats.dense_queries,
                      peak_rss_bytes=stats.peak_rss_bytes, stage_seconds=tuple(stats.stage_seconds),
                      mode=stats.mode, device=stats.device)
