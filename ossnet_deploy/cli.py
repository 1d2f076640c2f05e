"""``ossnet-segment``: segment NIfTI volumes or DICOM series, one case or a cohort folder.

Examples::

    ossnet-segment -i t1.nii.gz -o t1_seg.nii.gz
    ossnet-segment -i BraTS20_001/ -o out/ -m model/            # a BraTS case folder
    ossnet-segment -i case_0000.nii.gz,case_0001.nii.gz -o out/  # per-channel files
    ossnet-segment -i cohort/ -o out/ --num-parts 4 --part-id 0 # a quarter of a cohort
    ossnet-segment -i series_dir/ -o seg.dcm                    # DICOM in, DICOM SEG out
    ossnet-segment -i study.zip -o seg.nii.gz --series-uid 1.2.3 # one series of a study, NIfTI out
    ossnet-segment -i studies/ -o out/                          # one study per sub-folder or zip

Exit codes: 0 all done (finished outputs skipped count as done); 1 some inputs failed (the
rest were processed); 2 usage error (bad option, unusable model folder); 3 missing dependency
or hardware. Errors are one line each; ``-v`` adds the traceback.

Outputs are written atomically and never replace an existing file without ``--overwrite``,
so a rerun of an interrupted cohort skips what is finished. Inputs are only read.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ossnet_deploy.errors import (
    EXIT_DEPENDENCY,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    DependencyError,
    InputError,
    ModelFormatError,
    OssnetError,
    describe,
)

if TYPE_CHECKING:
    from ossnet_deploy.inputs import Case
    from ossnet_deploy.segmenter import SegmentationStats, Segmenter

__all__ = ["main"]

_MODES = ("adaptive", "reference", "dense")


@dataclass(frozen=True)
class _Job:
    """One case and where its outputs go.

    ``dicom``: the case's files are DICOM folders or zips, one per channel, read with
    ``series_uids`` (one per file, None: the only series) (docs/design.md#dicom).
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
class _Row:
    """One line of the final table."""

    name: str
    status: str
    stats: SegmentationStats | None = None


class _Console:
    """One-line messages to stdout/stderr that do not break tqdm bars."""

    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.quiet = quiet
        self.verbose = verbose

    def info(self, message: str) -> None:
        if not self.quiet:
            self._write(message, err=False)

    def error(self, message: str, exc: BaseException | None = None) -> None:
        self._write(f"error: {message}", err=True)
        if self.verbose and exc is not None:
            self._write("".join(traceback.format_exception(exc)).rstrip(), err=True)

    def warning(self, message: str) -> None:
        if not self.quiet:
            self._write(f"warning: {message}", err=True)

    @staticmethod
    def _write(message: str, *, err: bool) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr if err else sys.stdout)


@contextlib.contextmanager
def _warnings_as_lines(console: _Console) -> Iterator[None]:
    """Show Python warnings (e.g. a GPU that did not load) as one ``warning:`` line each."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        console.warning(str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _split_inputs(values: Sequence[str]) -> list[Path]:
    """``-i a -i b,c`` -> ``[a, b, c]`` (repeatable and comma-separated)."""
    return [Path(part.strip()) for value in values for part in value.split(",") if part.strip()]


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith((".nii.gz", ".nii"))


def _is_seg_name(path: Path) -> bool:
    return path.name.lower().endswith(".dcm")


def _plan_dicom_jobs(inputs: list[Path], output: Path, series_uids: tuple[str, ...],
                     output_format: str) -> list[_Job]:
    """Cases and outputs for DICOM inputs (docs/design.md#dicom, "Folder runs").

    One ``-i`` folder (or zip) is one case when it holds one study, otherwise a folder of cases
    (one study per sub-folder or zip); several ``-i`` are the channels of one case.
    """
    from ossnet_deploy.inputs import Case, dicom_cases, is_dicom_zip

    if series_uids and len(series_uids) != len(inputs):
        raise click.UsageError(f"give one --series-uid per -i input ({len(inputs)}), not {len(series_uids)}")
    uids: tuple[str | None, ...] = series_uids or (None,) * len(inputs)
    if len(inputs) == 1 and inputs[0].is_dir() and not is_dicom_zip(inputs[0]):
        cases = dicom_cases(inputs[0])
    else:
        first = inputs[0]
        cases = [Case(first.name[: -len(".zip")] if is_dicom_zip(first) else (first.resolve().name or "dicom"),
                      tuple(inputs))]
    if len(cases) > 1 and series_uids:
        raise click.UsageError(f"-i {inputs[0]} holds several studies (a folder run); --series-uid picks a series "
                               "of one case only: pass that case's folder or zip")
    output_is_file = _is_nifti_name(output) or _is_seg_name(output)
    if output_is_file and len(cases) > 1:
        raise click.UsageError(f"-i {inputs[0]} is a folder of {len(cases)} studies, so -o must be a folder, "
                               f"not {output}")
    if output_is_file:
        if output_format != "auto" and (output_format == "seg") != _is_seg_name(output):
            raise click.UsageError(f"--output-format {output_format} does not fit -o {output}")
        return [_Job(cases[0], output, True, uids)]
    suffix = ".nii.gz" if output_format == "nifti" else ".dcm"
    return [_Job(case, output / f"{case.name}{suffix}", True, uids) for case in cases]


def _plan_jobs(inputs: list[Path], output: Path, channels: tuple[str, ...], series_uids: tuple[str, ...] = (),
               output_format: str = "auto") -> list[_Job]:
    """Turn the ``-i`` values into cases and output paths.

    Raises:
        click.UsageError: the inputs and ``-o`` do not fit together.
        InputError: a folder input that does not exist.
    """
    from ossnet_deploy.dicom_series import is_dicom_input
    from ossnet_deploy.inputs import Case, case_folder_files, case_name, discover_cases, is_dicom_zip

    def dicom(p: Path) -> bool:
        # A folder of NIfTI cases stays one even if a DICOM file lies somewhere in it.
        return is_dicom_zip(p) or (p.is_dir() and not discover_cases(p, channels) and is_dicom_input(p))

    kinds = [dicom(p) for p in inputs]
    if any(kinds):
        if not all(kinds):
            raise click.UsageError("mix of DICOM and NIfTI inputs: give the channels of a case in one form")
        return _plan_dicom_jobs(inputs, output, series_uids, output_format)
    if series_uids:
        raise click.UsageError("--series-uid picks a series of a DICOM input; the inputs are not DICOM")
    if _is_seg_name(output) or output_format == "seg":
        raise click.UsageError("DICOM SEG output (.dcm) needs DICOM input (a series folder or zip); write NIfTI "
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
                raise click.UsageError(f"-i {folder} is a folder of cases, so -o must be a folder, not {output}")
    else:
        if any(p.is_dir() for p in inputs):
            raise click.UsageError("a folder input (-i FOLDER) must be the only input")
        cases = [Case(case_name(inputs[0], channels), tuple(inputs))]
    if output_is_file:
        return [_Job(case, output) for case in cases]
    return [_Job(case, output / f"{case.name}.nii.gz") for case in cases]


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _run_job(job: _Job, segmenter: Segmenter, *, fit: str, overwrite: bool, preview: bool,
             progress: Any, console: _Console, fail_on_warning: bool = False) -> SegmentationStats:
    """Segment one case and write its outputs; returns its statistics.

    With ``fail_on_warning``, a case whose input or output the domain checks flag raises
    :class:`InputError` and nothing is written for it.
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
        if _same_file(source, job.output) or (preview and _same_file(source, job.preview)):
            raise InputError(describe(job.output, "output would replace an input file", found=str(source),
                                      fix="choose another output path (-o)"))
        if job.dicom and source.is_dir() and _inside(job.output, source):
            raise InputError(describe(job.output, "output inside the DICOM input folder", found=str(source),
                                      fix="write outputs elsewhere (-o); ossnet writes nothing next to its inputs"))
    if _is_seg_name(job.output):
        segmenter.label_codes()  # a model whose labels have no codes fails before the work, not after
    image: Any
    if job.dicom:
        from ossnet_deploy.inputs import DicomSource

        sources = [DicomSource(p, uid) for p, uid in zip(case.files, job.series_uids, strict=True)]
        image = sources if len(sources) > 1 else sources[0]
    else:
        image = list(case.files) if len(case.files) > 1 else case.files[0]
    # The input's grey levels for the preview are taken while it is in memory anyway, as 8-bit
    # levels (a quarter of the float input), instead of reading and decoding the file again.
    kept: dict[str, Any] = {}

    def keep_from_input(volume: VolumeInput) -> None:
        kept["dicom"] = volume.dicom  # the headers only: the raw data must be released after preparing
        if preview:
            kept["grey"] = grey_levels(volume.data[0])
            kept["affine"] = np.asarray(volume.affine)

    reset_peak_rss()  # this case's peak, not the run's (the CLI owns the process)
    labels_img, stats = segmenter.segment_with_stats(image, fit=fit, progress=progress, on_read=keep_from_input)
    if fail_on_warning and stats.warnings:
        raise InputError(describe(case.files[0], "the input or its segmentation lies outside what the model knows; "
                                  "nothing was written (--fail-on-warning)", found=" / ".join(stats.warnings),
                                  fix="check the input; without --fail-on-warning the result is written with "
                                      "these warnings"))
    started = time.perf_counter()
    if _is_seg_name(job.output):
        if kept.get("dicom") is None:
            raise InputError(describe(case.files[0], "DICOM SEG output needs a DICOM input",
                                      fix="write NIfTI output (.nii.gz)"))
        segmenter.save_dicom_seg(labels_img, kept["dicom"], job.output, overwrite=overwrite)
    else:
        save_image(labels_img, job.output, overwrite=overwrite)
    if preview:
        try:
            write_preview(job.preview, kept["grey"], np.asarray(labels_img.dataobj), kept["affine"],
                          overwrite=overwrite)
        except OutputExistsError:
            console.warning(f"{job.preview}: preview exists and was kept (--overwrite replaces it)")
    return stats.with_stage("write", time.perf_counter() - started)


def _table(rows: list[_Row]) -> str:
    """The end-of-run table: case, status, seconds, queries, % of dense, peak memory."""
    header = ("case", "status", "seconds", "queries", "of dense", "peak MiB")
    lines = [header]
    for row in rows:
        s = row.stats
        if s is None:
            lines.append((row.name, row.status, "", "", "", ""))
        else:
            peak = "" if s.peak_rss_bytes is None else f"{s.peak_rss_bytes / 2**20:.0f}"
            lines.append((row.name, row.status, f"{s.total_seconds:.2f}", f"{s.total_queries:,}",
                          f"{s.total_queries / max(s.dense_queries, 1):.1%}", peak))
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


class _StageBar:
    """A tqdm bar over the scheduler stages of the current volume."""

    def __init__(self, disable: bool | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=0, position=1, leave=False, unit="q", unit_scale=True, disable=disable,
                         file=sys.stderr, dynamic_ncols=True)

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bar
        if bar.disable:
            return
        bar.set_description_str(stage, refresh=False)
        bar.total = max(total, done, 1)
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        self._bar.close()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-i", "--input", "inputs", multiple=True, required=True, metavar="PATH",
              help="A NIfTI file; per-channel files of one case (repeat -i or separate with commas, in the "
                   "model's channel order); a case folder (BraTS: *_flair, *_t1, ...); a folder of cases "
                   "(NIfTI files, nnU-Net <case>_0000.nii.gz groups or case folders); or DICOM: a folder (any "
                   "names, nested) or .zip of one study, one per channel, or a folder of studies (one per "
                   "sub-folder or zip). DICOM needs pip install 'ossnet[dicom]'.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="PATH",
              help="Output file for one case: .nii.gz/.nii, or .dcm (DICOM SEG, for DICOM input); or a folder: "
                   "<case>.nii.gz in it (<case>.dcm for DICOM input).")
@click.option("--series-uid", "series_uids", multiple=True, metavar="UID",
              help="DICOM: the SeriesInstanceUID to read when an input holds several image series (one per -i, "
                   "in the same order). Without it such an input fails, listing its series.")
@click.option("--output-format", type=click.Choice(["auto", "nifti", "seg"]), default="auto", show_default=True,
              help="DICOM input with a folder -o: seg (<case>.dcm, the default) or nifti (<case>.nii.gz).")
@click.option("-m", "--model", "model_dir", type=click.Path(path_type=Path), default=None, metavar="FOLDER",
              help="Model folder written by ossnet-export (default: the bundled mni-wm-demo model).")
@click.option("-d", "--device", default="auto", show_default=True,
              help="auto, cpu, openvino, cuda, cuda:N, gpu, gpu:N or trt[:N]. auto takes TensorRT, CUDA, CPU, as "
                   "available; on the CPU it runs the decoder in OpenVINO where installed (about 1.5x faster "
                   "than ONNX Runtime alone). cpu: ONNX Runtime only. openvino: OpenVINO or an error.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16 uses decoder.fp16.onnx (for GPUs).")
@click.option("--mode", type=click.Choice(_MODES), default="adaptive", show_default=True,
              help="Query schedule: adaptive (ours), reference (the paper's) or dense (every voxel).")
@click.option("--interpolation-margin", type=click.FloatRange(min=0.0), default=None, metavar="LOGITS",
              help="adaptive: at the finest level, decide a voxel from its decoded neighbours' interpolated "
                   "logit when that is at least this far from the threshold (default 2.0; 0: decode them all, "
                   "exact on every component found).")
@click.option("--max-queries", type=click.IntRange(min=1), default=None, metavar="N",
              help="Decoder queries per call: the memory cap (default: 4096 on CPU, 32768 on a GPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="CPU threads per graph (default: the physical cores available).")
@click.option("--fit", type=click.Choice(["error", "downsample"]), default="error", show_default=True,
              help="A foreground larger than the model grid: fail, or shrink it to fit.")
@click.option("--num-parts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the sorted cases into this many parts (one per machine).")
@click.option("--part-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="Process part K of --num-parts: case i goes to part i % num_parts.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: skip finished cases).")
@click.option("--preview", is_flag=True, help="Also write <name>.png: three slices with the outline.")
@click.option("--fail-on-warning", is_flag=True,
              help="A case whose input or output lies far outside the model's training domain (e.g. an empty "
                   "segmentation, another modality) fails and writes nothing, instead of a warning.")
@click.option("--disable-progress-bar", is_flag=True, help="No progress bars (they are off anyway without a TTY).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks with errors, stage times per volume.")
@click.version_option(package_name="ossnet", prog_name="ossnet-segment")
@click.pass_context
def main(
    ctx: click.Context,
    inputs: tuple[str, ...],
    output: Path,
    series_uids: tuple[str, ...],
    output_format: str,
    model_dir: Path | None,
    device: str,
    precision: str,
    mode: str,
    interpolation_margin: float | None,
    max_queries: int | None,
    threads: int | None,
    fit: str,
    num_parts: int,
    part_id: int,
    overwrite: bool,
    preview: bool,
    fail_on_warning: bool,
    disable_progress_bar: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Segment 3D NIfTI volumes or DICOM series with an exported OSS-Net model (no PyTorch needed)."""
    from ossnet_deploy.devices import parse_device

    console = _Console(quiet=quiet, verbose=verbose)
    if part_id >= num_parts:
        raise click.UsageError(f"--part-id must be below --num-parts ({part_id} >= {num_parts})")
    try:
        parse_device(device)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="'-d' / '--device'") from None
    paths = _split_inputs(inputs)
    if not paths:
        raise click.UsageError("no input given (-i PATH)")
    with _warnings_as_lines(console):
        ctx.exit(_segment_all(paths, output, model_dir, device, precision, mode, interpolation_margin, max_queries,
                              threads, fit, num_parts, part_id, overwrite, preview, disable_progress_bar, console,
                              fail_on_warning=fail_on_warning, series_uids=series_uids,
                              output_format=output_format))


def _load(model_dir: Path | None, device: str, precision: str, mode: str, interpolation_margin: float | None,
          max_queries: int | None, threads: int | None, console: _Console) -> Segmenter | int:
    from ossnet_deploy.segmenter import Segmenter

    try:
        return Segmenter.from_dir(model_dir, device=device, precision=precision, max_queries=max_queries,
                                  threads=threads, mode=mode, interpolation_margin=interpolation_margin)
    except DependencyError as exc:
        console.error(str(exc), exc)
        return EXIT_DEPENDENCY
    except (ModelFormatError, InputError) as exc:
        # The model folder or a setting is unusable: nothing can run, like a bad option.
        console.error(str(exc), exc)
        return EXIT_USAGE


def _segment_all(paths: list[Path], output: Path, model_dir: Path | None, device: str, precision: str, mode: str,
                 interpolation_margin: float | None, max_queries: int | None, threads: int | None, fit: str, num_parts: int, part_id: int,
                 overwrite: bool, preview: bool, disable_progress_bar: bool, console: _Console, *,
                 fail_on_warning: bool = False, series_uids: tuple[str, ...] = (), output_format: str = "auto") -> int:
    from tqdm import tqdm

    from ossnet_deploy.inputs import shard

    loaded = _load(model_dir, device, precision, mode, interpolation_margin, max_queries, threads, console)
    if isinstance(loaded, int):
        return loaded
    segmenter = loaded
    try:
        jobs = _plan_jobs(paths, output, segmenter.channels, series_uids, output_format)
    except DependencyError as exc:
        console.error(str(exc), exc)
        return EXIT_DEPENDENCY
    except InputError as exc:
        console.error(str(exc), exc)
        return EXIT_SOME_FAILED
    mine = {job.case.name for job in jobs} & {c.name for c in shard([j.case for j in jobs], num_parts, part_id)}
    jobs = sorted((j for j in jobs if j.case.name in mine), key=lambda j: j.case.name)
    if num_parts > 1:
        console.info(f"part {part_id} of {num_parts}: {len(jobs)} case(s)")
    console.info(f"model {segmenter.model_dir} ({segmenter.encoder_meta.variant}) on {segmenter.device}, "
                 f"mode {segmenter.mode}, max_queries {segmenter.max_queries}")
    bars_off: bool | None = True if (disable_progress_bar or console.quiet) else None
    rows: list[_Row] = []
    failed = 0
    stage_bar = _StageBar(bars_off)
    try:
        for job in tqdm(jobs, desc="volumes", unit="vol", position=0, disable=bars_off, file=sys.stderr,
                        dynamic_ncols=True):
            name = job.case.name
            if job.output.exists() and not overwrite:
                console.info(f"{name}: skipped, {job.output} exists (--overwrite replaces it)")
                rows.append(_Row(name, "skipped"))
                continue
            try:
                stats = _run_job(job, segmenter, fit=fit, overwrite=overwrite, preview=preview,
                                 progress=stage_bar, console=console, fail_on_warning=fail_on_warning)
            except DependencyError as exc:
                console.error(str(exc), exc)
                return EXIT_DEPENDENCY
            except OssnetError as exc:
                failed += 1
                console.error(str(exc), exc)
                rows.append(_Row(name, "failed"))
                continue
            except Exception as exc:  # a bug must not stop a cohort run; it is reported and counted
                failed += 1
                console.error(f"{name}: unexpected {type(exc).__name__}: {exc} (please report this; -v shows "
                              "the traceback)", exc)
                rows.append(_Row(name, "failed"))
                continue
            rows.append(_Row(name, "warned" if stats.warnings else "done", stats))
            line = f"{name}: {stats.summary()} -> {job.output}"
            if console.verbose:
                line += "\n  " + ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in stats.stage_seconds)
            console.info(line)
    finally:
        stage_bar.close()
    if len(rows) > 1:
        console.info(_table(rows))
    if failed:
        console.error(f"{failed} of {len(rows)} case(s) failed")
        return EXIT_SOME_FAILED
    return EXIT_OK
