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
    "is_finished",
    "is_folder_run",
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
    """One case and where its outputs go.

    ``dicom``: the case's files are DICOM folders or zips, one per channel, read with
    ``series_uids`` (one per file, None: the only series) (docs/design.md#dicom). Both travel
    with the job, so a Ray actor reads the case exactly as the local loop does.
    """

    case: Case
    output: Path
    dicom: bool = False
    series_uids: tuple[str | None, ...] = ()

    @property
    def preview(self) -> Path:
        """``<name>.png`` beside the output (``out/case.nii.gz`` -> ``out/case.png``)."""
        name = self.output.name
        for suffix in (".nii.gz", ".nii", ".dcm"):
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


def _is_seg_name(path: Path) -> bool:
    from ossnet_deploy.dicom_seg import is_seg_name

    return is_seg_name(path)


def is_folder_run(inputs: Sequence[Path], jobs: Sequence[Job], channels: tuple[str, ...]) -> bool:
    """True when ``inputs`` is one folder of cases, as :func:`plan_jobs` planned it: not one case
    folder of a multi-channel model, nor a DICOM folder holding one study (one case). A folder
    run gets a manifest, and it is what ``--engine ray`` runs."""
    from ossnet_deploy.inputs import case_folder_files

    if len(inputs) != 1 or not inputs[0].is_dir():
        return False
    if any(job.dicom for job in jobs):
        # dicom_cases: a folder of one study is one case whose only file is the folder itself.
        return not (len(jobs) == 1 and jobs[0].case.files == (inputs[0],))
    return len(channels) <= 1 or case_folder_files(inputs[0], channels, nnunet=False) is None


def _plan_dicom_jobs(inputs: list[Path], output: Path, series_uids: tuple[str, ...], output_format: str) -> list[Job]:
    """Cases and outputs for DICOM inputs (docs/design.md#dicom, "Folder runs").

    One ``-i`` folder (or zip) is one case when it holds one study, otherwise a folder of cases
    (one study per sub-folder or zip); several ``-i`` are the channels of one case.
    """
    from ossnet_deploy.inputs import Case, dicom_cases, is_dicom_zip

    if series_uids and len(series_uids) != len(inputs):
        raise PlanError(f"give one --series-uid per -i input ({len(inputs)}), not {len(series_uids)}")
    uids: tuple[str | None, ...] = series_uids or (None,) * len(inputs)
    if len(inputs) == 1 and inputs[0].is_dir() and not is_dicom_zip(inputs[0]):
        cases = dicom_cases(inputs[0])
    else:
        first = inputs[0]
        cases = [Case(first.name[: -len(".zip")] if is_dicom_zip(first) else (first.resolve().name or "dicom"),
                      tuple(inputs))]
    if len(cases) > 1 and series_uids:
        raise PlanError(f"-i {inputs[0]} holds several studies (a folder run); --series-uid picks a series "
                        "of one case only: pass that case's folder or zip")
    output_is_file = _is_nifti_name(output) or _is_seg_name(output)
    if output_is_file and len(cases) > 1:
        raise PlanError(f"-i {inputs[0]} is a folder of {len(cases)} studies, so -o must be a folder, not {output}")
    if output_is_file:
        if output_format != "auto" and (output_format == "seg") != _is_seg_name(output):
            raise PlanError(f"--output-format {output_format} does not fit -o {output}")
        return [Job(cases[0], output, True, uids)]
    suffix = ".nii.gz" if output_format == "nifti" else ".dcm"
    return [Job(case, output / f"{case.name}{suffix}", True, uids) for case in cases]


def plan_jobs(inputs: Sequence[Path], output: Path, channels: tuple[str, ...], series_uids: Sequence[str] = (),
              output_format: str = "auto") -> list[Job]:
    """Turn the ``-i`` values into cases and output paths.

    ``series_uids`` (``--series-uid``, one per DICOM input) and ``output_format`` (``auto``,
    ``nifti``, ``seg``: the outputs of a DICOM folder run) only concern DICOM inputs.

    Raises:
        PlanError: the inputs and ``-o`` do not fit together.
        InputError: a folder input that does not exist, a damaged DICOM header.
        DependencyError: DICOM input without the ``dicom`` extra.
    """
    from ossnet_deploy.dicom_series import is_dicom_input
    from ossnet_deploy.inputs import Case, case_folder_files, case_name, discover_cases, is_dicom_zip

    inputs = list(inputs)
    series_uids = tuple(series_uids)
    if output_format not in ("auto", "nifti", "seg"):
        raise PlanError(f"unknown output format {output_format!r}: auto, nifti or seg")

    def dicom(p: Path) -> bool:
        # A folder of NIfTI cases stays one even if a DICOM file lies somewhere in it.
        return is_dicom_zip(p) or (p.is_dir() and not discover_cases(p, channels) and is_dicom_input(p))

    kinds = [dicom(p) for p in inputs]
    if any(kinds):
        if not all(kinds):
            raise PlanError("mix of DICOM and NIfTI inputs: give the channels of a case in one form")
        return _plan_dicom_jobs(inputs, output, series_uids, output_format)
    if series_uids:
        raise PlanError("--series-uid picks a series of a DICOM input; the inputs are not DICOM")
    if _is_seg_name(output) or output_format == "seg":
        raise PlanError("DICOM SEG output (.dcm) needs DICOM input (a series folder or zip); write NIfTI "
                        "(.nii.gz) for NIfTI inputs")
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


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def run_job(job: Job, segmenter: Segmenter, settings: CaseSettings, *, progress: Any = None,
            warn: Callable[[str], None] | None = None, stop: Callable[[], bool] | None = None) -> SegmentationStats:
    """Segment one case and write its outputs atomically; returns its statistics.

    With ``settings.fail_on_warning``, a case whose input or output the domain checks flag
    raises :class:`InputError` and nothing is written for it. ``warn`` receives messages that
    do not fail the case (a preview that exists and was kept). ``stop()`` is asked just before
    writing: True (the run was interrupted) raises :class:`StopRequested` and writes nothing.

    A DICOM job (``job.dicom``) reads its series (``job.series_uids``) and writes a DICOM SEG
    for a ``.dcm`` output (after checking, before any work, that every label has a code), or
    NIfTI in the series' world geometry; no output may lie inside a DICOM input folder.

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
        if job.dicom and source.is_dir() and _inside(job.output, source):
            raise InputError(describe(job.output, "output inside the DICOM input folder", found=str(source),
                                      fix="write outputs elsewhere (-o); ossnet writes nothing next to its inputs"))
    seg_output = _is_seg_name(job.output)
    if seg_output:
        segmenter.label_codes()  # a model whose labels have no codes fails before the work, not after
    image: Any
    if job.dicom:
        from ossnet_deploy.inputs import DicomSource

        uids = job.series_uids or (None,) * len(case.files)
        sources = [DicomSource(p, uid) for p, uid in zip(case.files, uids, strict=True)]
        image = sources if len(sources) > 1 else sources[0]
    else:
        image = list(case.files) if len(case.files) > 1 else case.files[0]
    # The input's grey levels for the preview are taken while it is in memory anyway, as 8-bit
    # levels (a quarter of the float input), instead of reading and decoding the file again.
    kept: dict[str, Any] = {}

    def keep_from_input(volume: VolumeInput) -> None:
        kept["dicom"] = volume.dicom  # the headers only: the raw data must be released after preparing
        if settings.preview:
            kept["grey"] = grey_levels(volume.data[0])
            kept["affine"] = np.asarray(volume.affine)

    reset_peak_rss()  # this case's peak, not the process's (one case at a time per process)
    labels_img, stats = segmenter.segment_with_stats(image, fit=settings.fit, progress=progress,
                                                     on_read=keep_from_input)
    if settings.fail_on_warning and stats.warnings:
        raise InputError(describe(case.files[0], "the input or its segmentation lies outside what the model knows; "
                                  "nothing was written (--fail-on-warning)", found=" / ".join(stats.warnings),
                                  fix="check the input; without --fail-on-warning the result is written with "
                                      "these warnings"))
    if stop is not None and stop():
        raise StopRequested(describe(job.output, "the run was interrupted; nothing was written",
                                     fix="rerun: finished outputs are skipped"))
    started = time.perf_counter()
    if seg_output:
        if kept.get("dicom") is None:
            raise InputError(describe(case.files[0], "DICOM SEG output needs a DICOM input",
                                      fix="write NIfTI output (.nii.gz)"))
        segmenter.save_dicom_seg(labels_img, kept["dicom"], job.output, overwrite=settings.overwrite)
    else:
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
