"""A folder of cases on Ray Data actors: ``ossnet-segment --engine ray`` (docs/design.md#cohorts-on-ray).

The driver (this process) discovers the cases exactly as the local folder run does
(``cohort.plan_jobs``), skips finished outputs, and hands the rest to Ray with
``ray.data.from_items`` (one case per block, so no read task takes an actor's core and one lost
block is one lost case). Each actor (:class:`_CaseWorker`) loads the model once and runs every
case it gets through ``cohort.segment_case``, the function the local loop calls, which writes
the outputs atomically and returns a :class:`~ossnet_deploy.manifest.CaseRecord`; the driver
appends the records to the manifest as they stream back.

Nothing is lost: a bad case comes back as a ``failed`` record; an actor that dies (killed,
out of memory, a crash in native code) is restarted and its case redone at most
``max_retries`` times (Ray Data's default is forever, so a case that kills its actor every
time would never end); a block that still fails is dropped by Ray (``max_errored_blocks`` is
unlimited here) and its case, like any discovered case without a record at the end, is
recorded as ``failed``.

Ray is optional (``pip install "ossnet[ray]"``) and imported only when a run starts; the actors
import ``ossnet_deploy`` only, never torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ossnet_deploy.cohort import (
    CaseSettings,
    Job,
    ModelOptions,
    PlanError,
    is_finished,
    is_folder_run,
    plan_jobs,
    segment_case,
    skipped_record,
)
from ossnet_deploy.errors import DependencyError, ModelFormatError, describe
from ossnet_deploy.manifest import MANIFEST_NAME, CaseRecord, ManifestWriter, new_run_id

if TYPE_CHECKING:
    import numpy as np

    from ossnet_deploy.segmenter import Segmenter

__all__ = [
    "RAY_INSTALL",
    "ActorPlan",
    "CohortInterrupted",
    "CohortRun",
    "ModelFacts",
    "RayOptions",
    "check_model",
    "plan_actors",
    "require_ray",
    "segment_cohort",
]

RAY_INSTALL = 'pip install "ossnet[ray]"'

STOP_MARKER_PREFIX = ".ossnet-stop-"
"""A hidden file ``<output>/.ossnet-stop-<run_id>``: the driver was interrupted, actors write nothing more."""
STOP_GRACE_SECONDS = 2.0
"""How long an interrupted driver that leaves the actors to Ray waits for them to see the marker."""

SegmenterFactory = Callable[..., "Segmenter"]
"""Builds an actor's segmenter: called like ``Segmenter.from_dir(model_dir, threads=..., **kwargs)``."""


def require_ray() -> ModuleType:
    """Import Ray Data, or raise :class:`DependencyError` saying how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data (pyarrow, pandas), not only Ray core
    except ImportError as exc:
        raise DependencyError(
            describe(None, "the Ray engine needs Ray Data", expected="the 'ray[data]' package",
                     found=f"{type(exc).__name__}: {exc}",
                     fix=f"{RAY_INSTALL}, or run without --engine ray (the local folder run)")
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes.

    Attributes:
        address: the cluster (``auto``, ``ray://HOST:PORT``); None starts a local Ray for the
            run and shuts it down after (unless this process already called ``ray.init``).
        actors: actors running at once; None: as many as the cluster's CPUs, GPUs and memory
            hold (and no more than there are cases).
        threads_per_actor: CPU threads of each actor's graphs (and its numpy/BLAS pools).
        gpus_per_actor: GPUs each actor reserves (fractions share one).
        max_retries: how often a case whose actor died is redone on a restarted actor.
        oversubscribe: allow actors x threads above the cluster's CPUs (and the memory rule).
        memory_per_actor: bytes each actor reserves; None: the bytes-per-voxel rule
            (``memory.worker_bytes``) for the largest input of the run.
    """

    address: str | None = None
    actors: int | None = None
    threads_per_actor: int = 1
    gpus_per_actor: float = 0.0
    max_retries: int = 2
    oversubscribe: bool = False
    memory_per_actor: int | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What the driver reads from the model's metadata, without building sessions."""

    folder: Path
    pair_id: str
    channels: tuple[str, ...]
    grid_shape: tuple[int, int, int]
    patch_channels: int
    file_bytes: int


def check_model(model: ModelOptions) -> ModelFacts:
    """Check the model folder and the settings in the driver, before any actor starts.

    The actors load the same folder (on a cluster: the same path on every node), so a model
    that cannot load fails here once, as a usage error, instead of once per actor.

    Raises:
        ModelFormatError: missing, foreign or mismatched graphs, or unreadable metadata.
        InputError: an unknown device, precision or mode, or a bad setting.
    """
    from ossnet_deploy.devices import parse_device
    from ossnet_deploy.metadata import check_pair
    from ossnet_deploy.model import find_model_files
    from ossnet_deploy.onnx_metadata import read_graph_metadata
    from ossnet_deploy.preprocess import PreprocessConfig
    from ossnet_deploy.segmenter import _check_settings

    parse_device(model.device)
    _check_settings(model.mode, model.max_queries, model.interpolation_margin)
    files = find_model_files(model.model_dir, model.precision)
    encoder_meta = read_graph_metadata(files.encoder)
    decoder_meta = read_graph_metadata(files.decoder)
    check_pair(encoder_meta, decoder_meta, files.encoder, files.decoder)
    try:
        preprocess = PreprocessConfig.from_dict(encoder_meta.preprocess)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(describe(files.encoder, "the model's preprocessing metadata is invalid", found=str(exc),
                                        fix="re-export the model with this version of ossnet-export")) from None
    shape = tuple(int(s) for s in preprocess.shape)
    return ModelFacts(folder=files.folder, pair_id=encoder_meta.pair_id, channels=tuple(preprocess.channels),
                      grid_shape=(shape[0], shape[1], shape[2]), patch_channels=preprocess.patch_channels(),
                      file_bytes=files.encoder.stat().st_size + files.decoder.stat().st_size)


@dataclass(frozen=True)
class ActorPlan:
    """How many actors run, and what each reserves from Ray."""

    actors: int
    threads_per_actor: int
    cpus_per_actor: float
    gpus_per_actor: float
    memory_per_actor: int
    cluster_cpus: float
    cluster_gpus: float
    cluster_memory: float

    def describe(self) -> str:
        """One line for the console."""
        gpus = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (f"ray: {self.actors} actor(s) x {self.threads_per_actor} thread(s){gpus}, "
                f"{self.memory_per_actor / 2**20:.0f} MiB reserved each; cluster {self.cluster_cpus:g} CPU, "
                f"{self.cluster_gpus:g} GPU, {self.cluster_memory / 2**30:.1f} GiB")


def plan_actors(resources: Mapping[str, float], options: RayOptions, memory_per_actor: int, cases: int) -> ActorPlan:
    """Size the actor pool for a cluster's resources (``ray.cluster_resources()``).

    Without ``options.actors``: as many actors as the CPUs (``threads_per_actor`` each), GPUs
    and memory hold, at most one per case, at least one. An explicit count that does not fit is
    refused unless ``oversubscribe``; then each actor reserves its share of the CPUs and the
    memory (Ray does not pin CPUs, so the threads really do share them) and still runs
    ``threads_per_actor`` threads. GPUs are never oversubscribed beyond what the fractions say.

    Raises:
        PlanError: the requested actors or threads do not fit the cluster.
        DependencyError: GPUs asked for on a cluster without any.
    """
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    memory = float(resources.get("memory", 0.0))
    threads = options.threads_per_actor
    per_gpu = options.gpus_per_actor
    if per_gpu > 0 and gpus <= 0:
        raise DependencyError(describe(None, "--gpus-per-actor asks for GPUs the Ray cluster does not have",
                                       expected=f"{per_gpu:g} GPU per actor", found="0 GPUs in ray.cluster_resources()",
                                       fix="start the workers with their GPUs (ray start --num-gpus), or drop "
                                           "--gpus-per-actor"))
    fits = [math.floor(cpus / threads)]
    if per_gpu > 0:
        fits.append(math.floor(gpus / per_gpu + 1e-9))
    if memory > 0:
        fits.append(math.floor(memory / memory_per_actor))
    fit = min(fits)
    actors = options.actors if options.actors is not None else max(1, min(fit, max(cases, 1)))
    if options.actors is None and fit < 1 and not options.oversubscribe:
        raise PlanError(describe(None, "not even one actor fits the Ray cluster",
                                 expected=f"{threads} CPU(s), {memory_per_actor / 2**20:.0f} MiB"
                                          + (f", {per_gpu:g} GPU" if per_gpu else "") + " per actor",
                                 found=f"{cpus:g} CPU(s), {memory / 2**20:.0f} MiB, {gpus:g} GPU(s)",
                                 fix="fewer --threads-per-actor, a bigger cluster, or --oversubscribe"))
    if per_gpu > 0 and actors * per_gpu > gpus + 1e-9:
        raise PlanError(describe(None, "the actors need more GPUs than the Ray cluster has",
                                 expected=f"at most {gpus:g} GPU(s)",
                                 found=f"{actors} actors x {per_gpu:g} GPU = {actors * per_gpu:g}",
                                 fix="fewer --actors, or a fraction (--gpus-per-actor 0.5 shares a GPU)"))
    cpus_each = float(threads)
    memory_each = memory_per_actor
    if actors * threads > cpus:
        if not options.oversubscribe:
            raise PlanError(describe(None, "actors x threads exceed the CPUs Ray offers",
                                     expected=f"at most {cpus:g} CPU(s)",
                                     found=f"{actors} actors x {threads} thread(s) = {actors * threads}",
                                     fix="fewer --actors or --threads-per-actor, or --oversubscribe to run them "
                                         "anyway"))
        cpus_each = cpus / actors
    if memory > 0 and actors * memory_per_actor > memory:
        if not options.oversubscribe:
            raise PlanError(describe(None, "the actors need more memory than Ray offers",
                                     expected=f"at most {memory / 2**20:.0f} MiB",
                                     found=f"{actors} actors x {memory_per_actor / 2**20:.0f} MiB (docs/cohorts.md: "
                                           "the bytes-per-voxel rule)",
                                     fix="fewer --actors, or --oversubscribe to run them anyway"))
        memory_each = int(memory / actors)
    return ActorPlan(actors=actors, threads_per_actor=threads, cpus_per_actor=cpus_each, gpus_per_actor=per_gpu,
                     memory_per_actor=memory_each, cluster_cpus=cpus, cluster_gpus=gpus, cluster_memory=memory)


def _largest_input_voxels(jobs: Sequence[Job]) -> int:
    """The most voxels among the jobs' inputs, from their headers (unreadable files count 0:
    they fail in their actor, with the one message the local run gives).

    DICOM cases: the image series of the case with the most bytes (one header scan, not one
    per case; a guess where compression differs between studies).
    """
    import nibabel as nib

    largest = 0
    for job in jobs:
        if job.dicom:
            continue
        for path in job.case.files[:1]:
            try:
                shape = nib.load(path).shape
            except Exception:  # a bad file is the actor's to report, not the driver's
                continue
            largest = max(largest, int(math.prod(int(s) for s in shape[:3])))
    dicom = [job for job in jobs if job.dicom and job.case.files]
    if dicom:
        largest = max(largest, _dicom_voxels(max(dicom, key=lambda job: _bytes(job.case.files[0])).case.files[0]))
    return largest


def _bytes(path: Path) -> int:
    """The bytes of a file, or of every file below a folder (0 when unreadable)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0


def _dicom_voxels(path: Path) -> int:
    """The voxels of the largest image series of a DICOM folder or zip (0 when unreadable)."""
    from ossnet_deploy.dicom_series import find_series

    try:
        series = find_series(path)
    except Exception:  # a bad study is the actor's to report, not the driver's
        return 0
    largest = 0
    for summary in series:
        for matrix in summary.matrix.split("/"):
            rows, _, columns = matrix.partition("x")
            if rows.isdigit() and columns.isdigit():
                largest = max(largest, int(rows) * int(columns) * summary.frames)
    return largest


def _memory_per_actor(jobs: Sequence[Job], facts: ModelFacts, model: ModelOptions, options: RayOptions) -> int:
    from ossnet_deploy.memory import case_peak_bytes, worker_bytes
    from ossnet_deploy.segmenter import DEFAULT_MAX_QUERIES, GPU_DEFAULT_MAX_QUERIES

    if options.memory_per_actor is not None:
        return options.memory_per_actor
    max_queries = model.max_queries or (GPU_DEFAULT_MAX_QUERIES if options.gpus_per_actor else DEFAULT_MAX_QUERIES)
    case = case_peak_bytes(_largest_input_voxels(jobs), len(facts.channels), facts.grid_shape, facts.patch_channels,
                           max_queries, model.mode)
    return worker_bytes(facts.file_bytes, case)


def _job_to_json(job: Job) -> str:
    case = job.case
    return json.dumps({"name": case.name, "files": [os.fspath(f) for f in case.files], "problem": case.problem,
                       "output": os.fspath(job.output), "dicom": job.dicom, "series_uids": list(job.series_uids)})


def _job_from_json(text: str) -> Job:
    from ossnet_deploy.inputs import Case

    data = json.loads(text)
    return Job(Case(data["name"], tuple(Path(f) for f in data["files"]), data["problem"]), Path(data["output"]),
               dicom=data["dicom"], series_uids=tuple(data["series_uids"]))


class _CaseWorker:
    """A Ray Data actor: loads the model once, then segments one case per call.

    Ray builds it from ``fn_constructor_kwargs`` in each actor process (again after a restart).
    """

    def __init__(self, model: dict[str, Any], settings: dict[str, Any], threads: int, stop_marker: str,
                 factory: SegmenterFactory | None = None) -> None:
        from ossnet_deploy.segmenter import Segmenter

        options = ModelOptions(**model)
        make = factory if factory is not None else Segmenter.from_dir
        self.segmenter = make(options.model_dir, threads=threads, **options.segmenter_kwargs())
        self.settings = CaseSettings(**settings)
        self.stop_marker = Path(stop_marker)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        from ossnet_deploy.domain import DomainWarning

        records = []
        for text in batch["job"]:
            with warnings.catch_warnings():
                # The findings travel in the record; the driver prints them once.
                warnings.simplefilter("ignore", DomainWarning)
                record = segment_case(_job_from_json(str(text)), self.segmenter, self.settings,
                                      stop=self.stop_marker.exists)
            records.append(json.dumps(record.to_dict()))
        return {"record": np.asarray(records, dtype=object)}


def _lost_record(job: Job, pair_id: str, max_retries: int) -> CaseRecord:
    return CaseRecord(
        case=job.case.name, inputs=tuple(os.fspath(f) for f in job.case.files), output=os.fspath(job.output),
        status="failed", error_type="WorkerLost", pair_id=pair_id,
        error=describe(job.case.files[0] if job.case.files else job.output,
                       "no result came back from the Ray worker segmenting this case",
                       expected="a record from its actor",
                       found=f"none after {max_retries + 1} attempt(s): its actor died each time (killed, out of "
                             "memory, a crash in native code) or its block was lost",
                       fix="see the Ray logs (ray logs / the dashboard) for the cause; check the input; a rerun "
                           "tries it again (--max-retries N for more attempts)"))


def _unreported_record(job: Job, pair_id: str, run_started: float) -> CaseRecord:
    """The record of a case that had no record when the run was interrupted."""
    inputs = tuple(os.fspath(f) for f in job.case.files)
    try:
        written_now = job.output.stat().st_mtime >= run_started
    except OSError:
        written_now = False
    if written_now:
        # Outputs appear only complete (atomic rename), so this one finished; its statistics
        # were still on their way to the driver.
        return CaseRecord(job.case.name, inputs, os.fspath(job.output), "done", pair_id=pair_id,
                          warnings=("finished while the run was being interrupted; its statistics did not "
                                    "come back",))
    return CaseRecord(job.case.name, inputs, os.fspath(job.output), "interrupted", pair_id=pair_id)


class CohortInterrupted(KeyboardInterrupt):
    """Ctrl-C during a Ray run; the manifest records what ended and marks the rest interrupted."""

    def __init__(self, ended: int, total: int, manifest: Path) -> None:
        super().__init__(f"interrupted after {ended} of {total} case(s); see {manifest}")
        self.ended = ended
        self.total = total
        self.manifest = manifest


@dataclass
class CohortRun:
    """What a Ray run did.

    Attributes:
        records: one record per case of the run (skipped, done, warned, failed), in name order.
        manifest: the manifest file the records were appended to.
        plan: the actor pool, or None when nothing needed an actor (every output existed).
        run_id: the run's id in the manifest.
    """

    records: list[CaseRecord]
    manifest: Path
    plan: ActorPlan | None
    run_id: str

    @property
    def failed(self) -> int:
        """Cases that ended without an output."""
        return sum(r.failed for r in self.records)

    def worker_processes(self) -> int:
        """Distinct worker processes (host, pid) that returned a case: restarted actors count again."""
        return len({(r.host, r.pid) for r in self.records if r.started_at is not None})

    def max_concurrent(self) -> int:
        """The most cases that were being segmented at the same moment (from the records' times)."""
        events = []
        for r in self.records:
            if r.started_at is None:
                continue
            events.append((_parse_time(r.started_at), 1))
            events.append((_parse_time(r.finished_at), -1))
        running = best = 0
        for _, step in sorted(events):  # at equal times the end (-1) sorts first
            running += step
            best = max(best, running)
        return best

    def describe_actors(self) -> str:
        """One line: the plan and what really ran."""
        if self.plan is None:
            return "ray: no case needed an actor"
        return (f"{self.plan.describe()}; {self.worker_processes()} worker process(es) returned cases, "
                f"at most {self.max_concurrent()} case(s) at once")


def _parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


@contextlib.contextmanager
def _ray_session(ray: ModuleType, address: str | None, verbose: bool) -> Iterator[bool]:
    """Connect to ``address`` or start a local Ray; yields whether this run started it (and so
    shuts it down after). A session this process opened before is used as it is."""
    if ray.is_initialized():
        yield False
        return
    if address is not None and address.startswith("ray://"):
        # Ray Client forwards unknown init arguments to the server's ray.init; it needs none.
        ray.init(address=address)
    else:
        # Starting a local Ray: no dashboard (nobody looks at it during one CLI run). Joining a
        # cluster (address "auto", or RAY_ADDRESS as Ray Jobs sets it): these only shape the
        # driver's own console.
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR)
    try:
        yield True
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _data_context(ray: ModuleType, progress_bars: bool, verbose: bool) -> Iterator[None]:
    """Ray Data settings for one run, restored after (the context is process-wide)."""
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing max_restarts / max_task_retries through ray_remote_args
        # but has no named parameter for them yet; its other deprecation notices (raised when
        # the context is first built) concern settings this run does not touch.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
        saved = {"max_errored_blocks": ctx.max_errored_blocks, "enable_progress_bars": ctx.enable_progress_bars}
        logger = logging.getLogger("ray.data")
        level = logger.level
        # Every failure is accounted by its case's record; Ray's default (0) would abort the
        # whole run at the first lost block.
        ctx.max_errored_blocks = -1
        ctx.enable_progress_bars = progress_bars
        if not verbose:
            logger.setLevel(logging.CRITICAL)  # the records say what failed; -v shows Ray's own account
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(ctx, name, value)
            logger.setLevel(level)


def segment_cohort(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    model: ModelOptions | None = None,
    settings: CaseSettings | None = None,
    options: RayOptions | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    series_uids: Sequence[str] = (),
    output_format: str = "auto",
    progress_bars: bool = False,
    verbose: bool = False,
    on_record: Callable[[CaseRecord], None] | None = None,
    on_info: Callable[[str], None] | None = None,
    segmenter_factory: SegmenterFactory | None = None,
) -> CohortRun:
    """Segment a folder of cases on Ray actors; the Python form of ``ossnet-segment --engine ray``.

    Args:
        inputs: the folder of cases (as ``-i``; discovery as in the local folder run): NIfTI
            cases, or DICOM studies (one per sub-folder or zip).
        output: the output folder: ``<case>.nii.gz`` (DICOM: ``<case>.dcm``, see
            ``output_format``) and the manifest ``ossnet-manifest.jsonl``.
        model: which model and settings (default: the bundled model, ``auto`` device).
        settings: per-case options (fit, overwrite, preview, fail_on_warning).
        options: cluster address and actor sizing (:class:`RayOptions`).
        num_parts, part_id: only part ``part_id`` of the name-sorted cases, as ``--num-parts``.
        series_uids, output_format: as ``--series-uid`` and ``--output-format`` (``cohort.plan_jobs``).
        progress_bars: Ray Data's progress bars.
        verbose: Ray's and the actors' own logs on the console.
        on_record: called in the driver with each record as it is written to the manifest.
        on_info: called with one-line progress messages (the actor plan).
        segmenter_factory: builds each actor's segmenter instead of ``Segmenter.from_dir``
            (same arguments); it must be importable on the workers.

    Returns:
        the run's records (one per case) and actor statistics; ``run.failed`` > 0 is exit 1.

    Raises:
        DependencyError: Ray is not installed, GPUs are asked of a cluster without them, or
            DICOM input without the ``dicom`` extra.
        PlanError: the inputs are not one folder of cases, ``output`` is a file, or the actors
            do not fit the cluster.
        InputError: the input folder does not exist, or a DICOM header is damaged.
        ModelFormatError: the model folder is unusable.
        CohortInterrupted: Ctrl-C; the records so far and ``interrupted`` ones are in the manifest.
    """
    from ossnet_deploy.atomic import remove_temporaries
    from ossnet_deploy.inputs import shard

    model = model or ModelOptions()
    settings = settings or CaseSettings()
    options = options or RayOptions()
    if options.threads_per_actor < 1 or options.max_retries < 0 or (options.actors is not None and options.actors < 1):
        raise PlanError(describe(None, "invalid Ray options", expected="actors >= 1, threads_per_actor >= 1, "
                                 "max_retries >= 0", found=str(options), fix="pass positive counts"))
    ray = require_ray()
    facts = check_model(model)
    paths = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else [Path(p) for p in inputs]
    out = Path(output)
    jobs = plan_jobs(paths, out, facts.channels, series_uids, output_format)
    if not is_folder_run(paths, jobs, facts.channels):
        raise PlanError("--engine ray segments a folder of cases: pass one folder as -i (a file or a single case "
                        "runs locally, without --engine ray)")
    mine = {c.name for c in shard([j.case for j in jobs], num_parts, part_id)}
    jobs = sorted((j for j in jobs if j.case.name in mine), key=lambda j: j.case.name)
    run_id = new_run_id()
    manifest_path = out / MANIFEST_NAME
    records: dict[str, CaseRecord] = {}
    todo = [j for j in jobs if not is_finished(j, settings)]
    started_at = time.time()

    with ManifestWriter(manifest_path) as manifest:

        def keep(record: CaseRecord) -> None:
            record = record.with_run(engine="ray", run_id=run_id)
            records[record.case] = record
            manifest.write(record)
            if on_record is not None:
                on_record(record)

        for job in jobs:
            if is_finished(job, settings):
                keep(skipped_record(job, facts.pair_id))
        plan: ActorPlan | None = None
        stop_marker = out / f"{STOP_MARKER_PREFIX}{run_id}"
        session = {"started_here": False}
        if todo:
            for stale in out.glob(f"{STOP_MARKER_PREFIX}*"):  # an earlier interrupted run's
                stale.unlink(missing_ok=True)
            try:
                with _ray_session(ray, options.address, verbose) as started_here:
                    session["started_here"] = started_here
                    plan = plan_actors(ray.cluster_resources(), options,
                                       _memory_per_actor(todo, facts, model, options), len(todo))
                    if on_info is not None:
                        on_info(plan.describe() + ("" if started_here else " (an existing Ray session)"))
                    with _data_context(ray, progress_bars, verbose), contextlib.closing(
                            _run_on_actors(ray, todo, plan, model, settings, options, segmenter_factory,
                                           stop_marker)) as stream:
                        try:
                            for text in stream:
                                keep(CaseRecord.from_dict(json.loads(text)))
                        except KeyboardInterrupt:
                            # Ray Data lets running actor tasks finish when a dataset is dropped;
                            # the marker tells them to write nothing more.
                            stop_marker.touch()
                            raise
            except KeyboardInterrupt:
                if session["started_here"]:
                    stop_marker.unlink(missing_ok=True)  # Ray is shut down: no actor is left
                else:
                    # The actors belong to a Ray session that lives on: give them time to
                    # reach the marker (checked before each case and before each write).
                    time.sleep(STOP_GRACE_SECONDS)
                # What a stopped actor left half-written goes, and an output whose record was
                # still on its way is reported as finished rather than lost.
                _remove_leftovers(todo, settings, remove_temporaries)
                for job in todo:
                    if job.case.name not in records:
                        keep(_unreported_record(job, facts.pair_id, started_at))
                ended = len([r for r in records.values() if r.status not in ("skipped", "interrupted")])
                raise CohortInterrupted(ended, len(todo), manifest_path) from None
            for job in todo:
                if job.case.name not in records:
                    keep(_lost_record(job, facts.pair_id, options.max_retries))
            # A killed actor cannot clean up after itself; every writer of these outputs is gone now.
            _remove_leftovers(todo, settings, remove_temporaries)
    return CohortRun(records=[records[j.case.name] for j in jobs], manifest=manifest_path, plan=plan, run_id=run_id)


def _remove_leftovers(jobs: Sequence[Job], settings: CaseSettings, remove: Callable[[Path], list[Path]]) -> None:
    for job in jobs:
        remove(job.output)
        if settings.preview:
            remove(job.preview)


def _run_on_actors(ray: ModuleType, jobs: Sequence[Job], plan: ActorPlan, model: ModelOptions,
                   settings: CaseSettings, options: RayOptions, factory: SegmenterFactory | None,
                   stop_marker: Path) -> Generator[str, None, None]:
    """Stream the records (JSON text) of ``jobs`` back from the actor pool as cases end."""
    threads = str(plan.threads_per_actor)
    # Ray does not pin CPUs: without these, numpy/BLAS in every actor would size its pools to the
    # whole machine and N actors would run N x cores threads.
    env = {name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    model_kwargs = asdict(model)
    items = [{"job": _job_to_json(job)} for job in jobs]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    mapped = dataset.map_batches(
        _CaseWorker,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=plan.actors, max_size=plan.actors,
                                           # One case in flight per actor: a case that kills its
                                           # actor must not charge a retry to cases queued behind it.
                                           max_tasks_in_flight_per_actor=1),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
        memory=plan.memory_per_actor,
        fn_constructor_kwargs={"model": model_kwargs, "settings": asdict(settings),
                               "threads": plan.threads_per_actor, "stop_marker": os.fspath(stop_marker),
                               "factory": factory},
        runtime_env={"env_vars": env},
        # Actors restart without limit (a lost node, an OOM kill), but one case is redone at most
        # max_retries times: Ray Data's default (-1) retries a case that kills its actor forever.
        max_restarts=-1,
        max_task_retries=options.max_retries,
    )
    rows = iter(mapped.iter_rows())
    try:
        for row in rows:
            yield str(row["record"])
    finally:
        # Closing the iterator now (not whenever a traceback lets it go) shuts the executor and
        # its actors down before the caller cleans up after an interruption.
        close = getattr(rows, "close", None)
        if close is not None:
            close()
