"""``ossnet-segment``: segment NIfTI volumes or DICOM series, one case or a cohort folder.

Examples::

    ossnet-segment -i t1.nii.gz -o t1_seg.nii.gz
    ossnet-segment -i BraTS20_001/ -o out/ -m model/            # a BraTS case folder
    ossnet-segment -i case_0000.nii.gz,case_0001.nii.gz -o out/  # per-channel files
    ossnet-segment -i cohort/ -o out/ --num-parts 4 --part-id 0 # a quarter of a cohort
    ossnet-segment -i cohort/ -o out/ --engine ray --actors 8    # Ray actors (docs/cohorts.md)
    ossnet-segment -i series_dir/ -o seg.dcm                    # DICOM in, DICOM SEG out
    ossnet-segment -i study.zip -o seg.nii.gz --series-uid 1.2.3 # one series of a study, NIfTI out
    ossnet-segment -i studies/ -o out/                          # one study per sub-folder or zip
    ossnet-segment -i studies/ -o out/ --engine ray             # the same on Ray actors

Exit codes: 0 all done (finished outputs skipped count as done); 1 some inputs failed (the
rest were processed); 2 usage error (bad option, unusable model folder); 3 missing dependency
or hardware; 130 interrupted (Ctrl-C). Errors are one line each; ``-v`` adds the traceback.

Outputs are written atomically and never replace an existing file without ``--overwrite``,
so a rerun of an interrupted cohort skips what is finished. Inputs are only read. A folder of
cases also gets a manifest in the output folder, one JSON line per case and run
(``ossnet_deploy/manifest.py``); both engines run each case through
``ossnet_deploy.cohort.segment_case`` (docs/design.md#cohorts-on-ray).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ossnet_deploy.cohort import (
    CaseSettings,
    ModelOptions,
    PlanError,
    is_finished,
    is_folder_run,
    plan_jobs,
    segment_case,
    skipped_record,
)
from ossnet_deploy.errors import (
    EXIT_DEPENDENCY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    DependencyError,
    InputError,
    ModelFormatError,
)
from ossnet_deploy.manifest import MANIFEST_NAME, CaseRecord, ManifestWriter, new_run_id

if TYPE_CHECKING:
    from ossnet_deploy.cohort_ray import RayOptions
    from ossnet_deploy.segmenter import Segmenter

__all__ = ["main"]

_MODES = ("adaptive", "reference", "dense")


class _Console:
    """One-line messages to stdout/stderr that do not break tqdm bars."""

    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.quiet = quiet
        self.verbose = verbose

    def info(self, message: str) -> None:
        if not self.quiet:
            self._write(message, err=False)

    def error(self, message: str, exc: BaseException | None = None, *, detail: str | None = None) -> None:
        """``error: message``; with ``-v`` also the traceback (of ``exc``, or the text ``detail``)."""
        self._write(f"error: {message}", err=True)
        if self.verbose:
            if exc is not None:
                self._write("".join(traceback.format_exception(exc)).rstrip(), err=True)
            elif detail:
                self._write(detail.rstrip(), err=True)

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


def _table(records: Sequence[CaseRecord]) -> str:
    """The end-of-run table: case, status, seconds, queries, % of dense, peak memory."""
    header = ("case", "status", "seconds", "queries", "of dense", "peak MiB")
    lines = [header]
    for r in records:
        if r.queries is None:
            lines.append((r.case, r.status, "", "", "", ""))
        else:
            peak = "" if r.peak_rss_bytes is None else f"{r.peak_rss_bytes / 2**20:.0f}"
            lines.append((r.case, r.status, f"{r.seconds or 0.0:.2f}", f"{r.queries:,}",
                          f"{r.queries / max(r.dense_queries or 0, 1):.1%}", peak))
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _report(record: CaseRecord, console: _Console) -> None:
    """The line(s) one finished case prints, the same for both engines."""
    if record.status == "skipped":
        console.info(f"{record.case}: skipped, {record.output} exists (--overwrite replaces it)")
    elif record.status == "interrupted":
        console.info(f"{record.case}: interrupted, nothing written (a rerun segments it)")
    elif record.failed:
        console.error(record.error or f"{record.case}: {record.status}", detail=record.traceback)
    else:
        if record.engine == "ray":
            # Locally the domain checks' warnings were shown as they were raised; an actor's
            # come back in its record.
            for finding in record.warnings:
                console.warning(f"{record.case}: {finding}")
        line = f"{record.case}: {record.summary()} -> {record.output}"
        if console.verbose:
            line += "\n  " + ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in record.stage_seconds)
        console.info(line)


def _finish(records: Sequence[CaseRecord], console: _Console) -> int:
    """The end-of-run table and the exit code (1 when any case failed)."""
    if len(records) > 1:
        console.info(_table(records))
    failed = sum(r.failed for r in records)
    if failed:
        console.error(f"{failed} of {len(records)} case(s) failed")
        return EXIT_SOME_FAILED
    return EXIT_OK


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
                   "<case>.nii.gz in it (<case>.dcm for DICOM input; and, for a folder of cases, the manifest "
                   f"{MANIFEST_NAME}).")
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
              help="CPU threads per graph (default: the physical cores available). --engine ray: see "
                   "--threads-per-actor.")
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
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, one case after another. ray: a folder of cases on Ray actors, on "
                   "this machine or a cluster (pip install 'ossnet[ray]'; docs/cohorts.md).")
@click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
              help="--engine ray: the Ray cluster to use (default: start a local Ray for the run, shut down "
                   "after it).")
@click.option("--actors", type=click.IntRange(min=1), default=None, metavar="N",
              help="--engine ray: actors (model copies) running at once (default: as many as the cluster's "
                   "CPUs, GPUs and memory hold).")
@click.option("--threads-per-actor", type=click.IntRange(min=1), default=1, show_default=True, metavar="T",
              help="--engine ray: CPU threads per actor; actors x T may not exceed the cluster's CPUs unless "
                   "--oversubscribe.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0.0), default=0.0, show_default=True, metavar="G",
              help="--engine ray: GPUs per actor (0.5: two actors share a GPU).")
@click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True, metavar="N",
              help="--engine ray: a case whose actor dies is redone on a fresh actor at most N times, then "
                   "recorded as failed.")
@click.option("--oversubscribe", is_flag=True,
              help="--engine ray: allow actors x threads-per-actor above the cluster's CPUs.")
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
    engine: str,
    address: str | None,
    actors: int | None,
    threads_per_actor: int,
    gpus_per_actor: float,
    max_retries: int,
    oversubscribe: bool,
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
    source = ctx.get_parameter_source
    ray_only = [name for name in ("address", "actors", "threads_per_actor", "gpus_per_actor", "max_retries",
                                  "oversubscribe") if source(name) == click.core.ParameterSource.COMMANDLINE]
    if engine == "local" and ray_only:
        raise click.UsageError(f"--{ray_only[0].replace('_', '-')} needs --engine ray")
    if engine == "ray" and threads is not None:
        raise click.UsageError("--engine ray sets threads per actor: use --threads-per-actor, not --threads")
    model = ModelOptions(model_dir, device, precision, mode, interpolation_margin, max_queries)
    settings = CaseSettings(fit=fit, overwrite=overwrite, preview=preview, fail_on_warning=fail_on_warning)
    bars_off: bool | None = True if (disable_progress_bar or console.quiet) else None
    with _warnings_as_lines(console):
        if engine == "ray":
            from ossnet_deploy.cohort_ray import RayOptions

            options = RayOptions(address=address, actors=actors, threads_per_actor=threads_per_actor,
                                 gpus_per_actor=gpus_per_actor, max_retries=max_retries, oversubscribe=oversubscribe)
            ctx.exit(_segment_ray(paths, output, model, settings, options, num_parts, part_id, bars_off, console,
                                  series_uids=series_uids, output_format=output_format))
        ctx.exit(_segment_all(paths, output, model, threads, settings, num_parts, part_id, bars_off, console,
                              series_uids=series_uids, output_format=output_format))


def _load(model: ModelOptions, threads: int | None, console: _Console) -> Segmenter | int:
    from ossnet_deploy.segmenter import Segmenter

    try:
        return Segmenter.from_dir(model.model_dir, threads=threads, **model.segmenter_kwargs())
    except (DependencyError, ModelFormatError, InputError) as exc:
        return _model_unusable(exc, console)


def _model_unusable(exc: Exception, console: _Console) -> int:
    """Report a model that cannot be loaded; its exit code: a missing dependency, else a usage error."""
    # The model folder or a setting is unusable: nothing can run, like a bad option.
    console.error(str(exc), exc)
    return EXIT_DEPENDENCY if isinstance(exc, DependencyError) else EXIT_USAGE


def _interrupted(done: int, total: int, manifest: Path | None, console: _Console) -> int:
    where = f"; {manifest} lists what finished" if manifest is not None else ""
    console.error(f"interrupted: {done} of {total} case(s) ended before the stop, nothing partial was left{where}")
    return EXIT_INTERRUPTED


def _segment_all(paths: list[Path], output: Path, model: ModelOptions, threads: int | None, settings: CaseSettings,
                 num_parts: int, part_id: int, bars_off: bool | None, console: _Console, *,
                 series_uids: tuple[str, ...] = (), output_format: str = "auto") -> int:
    from tqdm import tqdm

    from ossnet_deploy.inputs import shard

    loaded = _load(model, threads, console)
    if isinstance(loaded, int):
        return loaded
    segmenter = loaded
    try:
        jobs = plan_jobs(paths, output, segmenter.channels, series_uids, output_format)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    except DependencyError as exc:
        console.error(str(exc), exc)
        return EXIT_DEPENDENCY
    except InputError as exc:
        console.error(str(exc), exc)
        return EXIT_SOME_FAILED
    folder_run = is_folder_run(paths, jobs, segmenter.channels)  # all of the cohort's cases, not this part's
    mine = {job.case.name for job in jobs} & {c.name for c in shard([j.case for j in jobs], num_parts, part_id)}
    jobs = sorted((j for j in jobs if j.case.name in mine), key=lambda j: j.case.name)
    if num_parts > 1:
        console.info(f"part {part_id} of {num_parts}: {len(jobs)} case(s)")
    console.info(f"model {segmenter.model_dir} ({segmenter.encoder_meta.variant}) on {segmenter.device}, "
                 f"mode {segmenter.mode}, max_queries {segmenter.max_queries}")
    pair_id = segmenter.encoder_meta.pair_id
    manifest_path = output / MANIFEST_NAME if folder_run else None
    manifest = ManifestWriter(manifest_path) if manifest_path is not None else None
    run_id = new_run_id()
    records: list[CaseRecord] = []

    def keep(record: CaseRecord) -> None:
        record = record.with_run(engine="local", run_id=run_id)
        records.append(record)
        if manifest is not None:
            manifest.write(record)
        _report(record, console)

    stage_bar = _StageBar(bars_off)
    try:
        for job in tqdm(jobs, desc="volumes", unit="vol", position=0, disable=bars_off, file=sys.stderr,
                        dynamic_ncols=True):
            if is_finished(job, settings):
                keep(skipped_record(job, pair_id))
                continue
            record = segment_case(job, segmenter, settings, progress=stage_bar, warn=console.warning)
            keep(record)
            if record.error_type == DependencyError.__name__:
                return EXIT_DEPENDENCY
    except KeyboardInterrupt:
        # atomic_write already removed the case's temporary file; the manifest says what ended.
        ended = {r.case for r in records}
        if manifest is not None:
            manifest.write_all(CaseRecord(j.case.name, tuple(str(f) for f in j.case.files), str(j.output),
                                          "interrupted", pair_id=pair_id, engine="local", run_id=run_id)
                               for j in jobs if j.case.name not in ended)
        return _interrupted(len(ended), len(jobs), manifest_path, console)
    finally:
        stage_bar.close()
        if manifest is not None:
            manifest.close()
    return _finish(records, console)


def _segment_ray(paths: list[Path], output: Path, model: ModelOptions, settings: CaseSettings, options: RayOptions,
                 num_parts: int, part_id: int, bars_off: bool | None, console: _Console, *,
                 series_uids: tuple[str, ...] = (), output_format: str = "auto") -> int:
    from ossnet_deploy.cohort_ray import CohortInterrupted, check_model, segment_cohort

    try:
        check_model(model)
    except (DependencyError, ModelFormatError, InputError) as exc:
        return _model_unusable(exc, console)
    try:
        run = segment_cohort(paths, output, model=model, settings=settings, options=options, num_parts=num_parts,
                             part_id=part_id, series_uids=series_uids, output_format=output_format,
                             progress_bars=bars_off is None, verbose=console.verbose,
                             on_record=lambda record: _report(record, console), on_info=console.info)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    except DependencyError as exc:
        console.error(str(exc), exc)
        return EXIT_DEPENDENCY
    except CohortInterrupted as stop:
        return _interrupted(stop.ended, stop.total, stop.manifest, console)
    except InputError as exc:
        console.error(str(exc), exc)
        return EXIT_SOME_FAILED
    console.info(run.describe_actors())
    return _finish(run.records, console)
