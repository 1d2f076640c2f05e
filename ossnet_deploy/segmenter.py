"""``Segmenter``: an exported OSS-Net pair behind one call, ``segment(image) -> NIfTI``.

One call runs

1. **read**: any accepted input form (``ossnet_deploy.inputs``) -> ``(C, X, Y, Z)`` float32;
2. **prepare**: ``prepare_volume`` -> the normalised padded grid, the global volume, placement;
   the raw data is released here;
3. **encode**: the encoder graph, once: ``latent`` (and ``coarse_logits`` for C/D);
4. **scheduler stages**: ``run_scheduler`` asks for logits of voxel batches; our decode callable
   normalises their coordinates, cuts their patches from the padded grid and runs the decoder
   with the latent bound once per volume, in chunks of at most ``max_queries``;
5. **restore**: the region labels go back onto the input's own grid and header.

Thread safety: the ONNX Runtime sessions are shared and their ``run`` is thread-safe; every
other piece of state (prepared volume, latent, patch buffer, statistics) lives in the call, so
``segment`` may be called from several threads at once. Statistics are returned
(:meth:`Segmenter.segment_with_stats`), never stored on the shared object.

Memory of one call beyond the sessions: the raw input (until prepared), the padded grid
(C x grid float32), the global volume (1/8 of it), one patch buffer of ``max_queries`` patches,
the scheduler's compact state, a uint8 grid and the uint8 output. docs/runtime.md has the
measured bytes per voxel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from ossnet_deploy.backends.base import Backend
from ossnet_deploy.devices import DeviceRequest, parse_device, warn_once
from ossnet_deploy.errors import InputError, ModelFormatError, describe
from ossnet_deploy.inputs import ImageLike, resolve_volume
from ossnet_deploy.memory import peak_rss_bytes, reset_peak_rss
from ossnet_deploy.metadata import (
    COARSE_LOGITS,
    COORDS,
    LATENT,
    LOGITS,
    PATCHES,
    VOLUME,
    GraphMetadata,
    check_pair,
    read_graph_metadata,
)
from ossnet_deploy.nifti_io import labels_image
from ossnet_deploy.preprocess import (
    PreparedVolume,
    PreprocessConfig,
    encoder_input,
    extract_patches,
    labels_to_input,
    normalise_coords,
    prepare_volume,
)
from ossnet_deploy.scheduler import MODES, SchedulerConfig, SchedulerStats, run_scheduler

__all__ = [
    "DEFAULT_MAX_QUERIES",
    "DEFAULT_MODEL_DIR",
    "GPU_DEFAULT_MAX_QUERIES",
    "PRECISIONS",
    "EncodedState",
    "ModelFiles",
    "Progress",
    "SegmentationStats",
    "Segmenter",
    "find_model_files",
]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "mni-wm-demo"
"""The bundled default model (docs/design.md#files-that-ship)."""

DEFAULT_MAX_QUERIES = 4096
"""Decoder queries per call on the CPU when none is given: the knee of speed vs memory
measured with ``benchmarks/bench_segmenter.py --study chunks`` (docs/runtime.md, "Chunk
size"): larger chunks add 6-8 KiB per query of peak memory and no speed."""

GPU_DEFAULT_MAX_QUERIES = 32768
"""Default on CUDA/TensorRT: GPUs need large batches to be busy and the decoder's memory per
query is small; 32768 is also the maximum of the TensorRT profile ``ossnet-export --trt``
builds by default. Not measured here (no GPU in this project's CI)."""

PRECISIONS = ("fp32", "fp16")

CPU_DEVICES = ("cpu", "openvino")
"""Backend devices that are the CPU (the CPU chunk default and the fp16 warning apply)."""

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stages ``read``, ``prepare``, ``encode`` (1 of 1 when
finished), every scheduler stage (queries done of queries planned so far), ``restore``."""

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DECODER_FP16_FILE = "decoder.fp16.onnx"


@dataclass(frozen=True)
class ModelFiles:
    """The graph files of a model folder that one :class:`Segmenter` loads.

    Attributes:
        folder: the model folder.
        encoder: the encoder ONNX graph.
        decoder: the decoder ONNX graph (``decoder.fp16.onnx`` for ``precision="fp16"``).
        encoder_engine: TensorRT EP-context model of the encoder, or None.
        decoder_engine: TensorRT EP-context model of the decoder, or None.
    """

    folder: Path
    encoder: Path
    decoder: Path
    encoder_engine: Path | None = None
    decoder_engine: Path | None = None

    @property
    def has_trt_engines(self) -> bool:
        """Both graphs have engines written by ``ossnet-export --trt``."""
        return self.encoder_engine is not None and self.decoder_engine is not None


def _engine_for(graph: Path) -> Path | None:
    """The EP-context model ``ossnet-export --trt`` writes beside ``graph``, if any."""
    from ossnet_deploy.backends.trt import engine_context_path

    candidate = engine_context_path(graph)
    return candidate if candidate.is_file() else None


def find_model_files(model_dir: str | os.PathLike[str] | None, precision: str = "fp32") -> ModelFiles:
    """Locate the graphs of a model folder (default: the bundled model).

    Raises:
        ModelFormatError: the folder or a graph file is missing (the message names the folder
            and the fix); the bundled model is missing from this installation.
        InputError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise InputError(describe(None, f"unknown precision {precision!r}", expected=" or ".join(PRECISIONS),
                                  found=repr(precision), fix="pass precision='fp32' (CPU) or 'fp16' (GPU)"))
    if model_dir is None:
        folder = DEFAULT_MODEL_DIR
        if not (folder / ENCODER_FILE).is_file():
            raise ModelFormatError(
                describe(folder, "the default model is not bundled with this installation",
                         expected=f"{ENCODER_FILE} and {DECODER_FILE} in it", found="no model files",
                         fix="pass a model folder written by ossnet-export (model_dir=... / -m FOLDER)")
            )
    else:
        folder = Path(model_dir)
        if not folder.is_dir():
            raise ModelFormatError(
                describe(folder, "model folder not found" if not folder.exists() else "model path is not a folder",
                         expected=f"a folder holding {ENCODER_FILE} and {DECODER_FILE} (ossnet-export output)",
                         found="nothing" if not folder.exists() else "a file",
                         fix="pass the folder ossnet-export wrote")
            )
    decoder_name = DECODER_FP16_FILE if precision == "fp16" else DECODER_FILE
    for name in (ENCODER_FILE, decoder_name):
        if not (folder / name).is_file():
            fix = ("export it with `ossnet-export CHECKPOINT --fp16`, or use precision='fp32'"
                   if name == DECODER_FP16_FILE else "pass the folder ossnet-export wrote, or export the model again")
            present = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
            raise ModelFormatError(
                describe(folder / name, "model file missing", expected=f"{name} in {folder}",
                         found=", ".join(present[:10]) or "an empty folder", fix=fix)
            )
    encoder, decoder = folder / ENCODER_FILE, folder / decoder_name
    return ModelFiles(folder, encoder, decoder, _engine_for(encoder), _engine_for(decoder))


@dataclass(frozen=True)
class EncodedState:
    """One volume after the encoder: what every decoder query needs.

    Attributes:
        prepared: the prepared volume (padded grid ``(C, D, H, W)`` float32, placement, ...).
        latent: ``(1, K, L)`` float32 encoder latent.
        coarse_logits: ``(1, 1, d, h, w)`` float32 coarse segmentation logits (C/D), or None.
    """

    prepared: PreparedVolume
    latent: np.ndarray
    coarse_logits: np.ndarray | None


@dataclass(frozen=True)
class SegmentationStats:
    """What one ``segment`` call did.

    Attributes:
        source: the input (a path, or ``"<in-memory image>"``).
        mode: scheduler mode.
        device: where the graphs ran (``cpu``, ``cuda:0``, ``trt:0``).
        max_queries: decoder chunk size.
        input_shape: spatial shape of the stored input ``(X, Y, Z)``.
        region_shape: the input's region of the model grid ``(i, j, k)``; its voxel count is
            the number of queries of ``dense``.
        stage_queries: ``(scheduler stage, decoder queries)`` in run order.
        stage_seconds: ``(stage, wall seconds)`` in run order: ``read``, ``prepare``,
            ``encode``, every scheduler stage, ``restore`` (the CLI adds ``write``).
        peak_rss_bytes: the process's peak resident memory during the call (VmHWM after a
            reset at the start; per process, so concurrent calls share it), or None.
        scheduler: the scheduler's own statistics.
    """

    source: str
    mode: str
    device: str
    max_queries: int
    input_shape: tuple[int, int, int]
    region_shape: tuple[int, int, int]
    stage_queries: tuple[tuple[str, int], ...]
    stage_seconds: tuple[tuple[str, float], ...]
    peak_rss_bytes: int | None
    scheduler: SchedulerStats | None = field(default=None, compare=False)

    @property
    def total_queries(self) -> int:
        """Decoder queries of all stages."""
        return sum(n for _, n in self.stage_queries)

    @property
    def dense_queries(self) -> int:
        """Queries ``dense`` mode would make: the voxels of the input's region of the grid."""
        i, j, k = self.region_shape
        return i * j * k

    @property
    def total_seconds(self) -> float:
        """Wall seconds of all stages."""
        return sum(s for _, s in self.stage_seconds)

    def seconds(self, stage: str) -> float:
        """Wall seconds of one stage (0.0 when it did not run)."""
        return sum(s for name, s in self.stage_seconds if name == stage)

    def with_stage(self, name: str, seconds: float) -> SegmentationStats:
        """A copy with one more timed stage (e.g. the CLI's ``write``)."""
        return replace(self, stage_seconds=(*self.stage_seconds, (name, float(seconds))))

    def summary(self) -> str:
        """One line: time, queries (and the fraction of dense), peak memory."""
        peak = "n/a" if self.peak_rss_bytes is None else f"{self.peak_rss_bytes / 2**20:.0f} MiB"
        fraction = self.total_queries / max(self.dense_queries, 1)
        return (f"{self.total_seconds:.2f} s, {self.total_queries:,} queries ({fraction:.1%} of dense), "
                f"peak {peak}, {self.mode} on {self.device}")


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (int(shape[0]), int(shape[1]), int(shape[2]))


class _Timer:
    """Collects ``(stage, seconds)`` in order and reports finished stages to ``progress``."""

    def __init__(self, progress: Progress | None) -> None:
        self.stages: list[tuple[str, float]] = []
        self._progress = progress
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages.append((name, now - self._start))
        self._start = now
        if self._progress is not None:
            self._progress(name, 1, 1)

    def skip(self) -> None:
        """Restart the clock without recording (the scheduler timed its own stages)."""
        self._start = time.perf_counter()


class Segmenter:
    """An exported encoder/decoder pair, its preprocessing and the query scheduler.

    Create it with :meth:`from_dir`. ``segment`` is thread-safe.

    Args:
        encoder: backend of the encoder graph.
        decoder: backend of the decoder graph.
        encoder_meta: the encoder's ossnet metadata.
        decoder_meta: the decoder's ossnet metadata.
        max_queries: decoder queries per call (default :data:`DEFAULT_MAX_QUERIES` on CPU,
            :data:`GPU_DEFAULT_MAX_QUERIES` on a GPU, at most a TensorRT profile's maximum).
        mode: scheduler mode: ``adaptive`` (default), ``reference`` or ``dense``.
        model_dir: the folder the graphs came from (for messages and reports).
        interpolation_margin: ``adaptive``'s last-level interpolation margin in logits
            (:class:`~ossnet_deploy.scheduler.SchedulerConfig`; None: its default, 0: exact).

    Raises:
        ModelFormatError: the two graphs are not one exported pair, a graph's inputs/outputs
            differ from its metadata, or the metadata is inconsistent.
        InputError: an unknown mode, a ``max_queries`` below 1 or a negative margin.
    """

    def __init__(
        self,
        encoder: Backend,
        decoder: Backend,
        encoder_meta: GraphMetadata,
        decoder_meta: GraphMetadata,
        *,
        max_queries: int | None = None,
        mode: str = "adaptive",
        model_dir: Path | None = None,
        interpolation_margin: float | None = None,
    ) -> None:
        check_pair(encoder_meta, decoder_meta, encoder.path, decoder.path)
        for backend, meta in ((encoder, encoder_meta), (decoder, decoder_meta)):
            backend.require({s.name: s for s in meta.io.inputs}, {s.name: s for s in meta.io.outputs})
        try:
            preprocess = PreprocessConfig.from_dict(encoder_meta.preprocess)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(
                describe(encoder.path, "the model's preprocessing metadata is invalid", found=str(exc),
                         fix="re-export the model with this version of ossnet-export")
            ) from None
        facts = encoder_meta.scheduler
        if tuple(facts.grid_shape) != tuple(preprocess.shape):
            raise ModelFormatError(
                describe(encoder.path, "scheduler grid and preprocessing grid differ",
                         expected=f"grid {tuple(preprocess.shape)}", found=f"grid {tuple(facts.grid_shape)}",
                         fix="re-export the model")
            )
        _check_settings(mode, max_queries, interpolation_margin)
        limit = decoder.max_queries_limit
        chunk = max_queries
        if chunk is None:
            chunk = DEFAULT_MAX_QUERIES if decoder.device in CPU_DEVICES else GPU_DEFAULT_MAX_QUERIES
            chunk = chunk if limit is None else min(chunk, limit)
        if limit is not None and chunk > limit:
            raise InputError(describe(decoder.path, "max_queries exceeds the TensorRT engine's profile",
                                      expected=f"at most {limit}", found=str(chunk),
                                      fix=f"pass max_queries <= {limit}, or rebuild the engine with a larger "
                                          "--max-queries"))
        self._has_patches = PATCHES in decoder.inputs
        if self._has_patches:
            want = preprocess.patch_channels()
            got = decoder.inputs[PATCHES].shape[1]
            if got != want:
                raise ModelFormatError(
                    describe(decoder.path, "decoder patch channels disagree with the preprocessing",
                             expected=f"{want} patch channels", found=f"{got}", fix="re-export the model")
                )
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_meta = encoder_meta
        self.decoder_meta = decoder_meta
        self.preprocess = preprocess
        self.mode = mode
        self.max_queries = chunk
        self.model_dir = model_dir
        margin = {} if interpolation_margin is None else {"interpolation_margin": interpolation_margin}
        self.scheduler_config = SchedulerConfig(mode=mode, threshold_logit=facts.threshold_logit, max_queries=chunk,
                                                **margin)

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_dir(
        cls,
        model_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "fp32",
        max_queries: int | None = None,
        threads: int | None = None,
        mode: str = "adaptive",
        interpolation_margin: float | None = None,
    ) -> Segmenter:
        """Load the pair in ``model_dir`` (default: the bundled ``mni-wm-demo`` model).

        Args:
            model_dir: a folder written by ``ossnet-export`` (``encoder.onnx``, ``decoder.onnx``,
                optionally ``decoder.fp16.onnx`` and TensorRT engines).
            device: ``auto`` (TensorRT, CUDA, CPU, as available), ``cpu``, ``cuda[:N]``,
                ``gpu[:N]`` or ``trt[:N]``.
            precision: ``fp32`` or ``fp16`` (the ``decoder.fp16.onnx`` graph; meant for GPUs).
            max_queries: decoder queries per call (the memory cap; default
                :data:`DEFAULT_MAX_QUERIES` on CPU, :data:`GPU_DEFAULT_MAX_QUERIES` on a GPU).
            threads: CPU threads per graph (default: the physical cores this process may use).
            mode: scheduler mode: ``adaptive``, ``reference`` or ``dense``.
            interpolation_margin: ``adaptive``'s last-level interpolation margin in logits
                (None: the scheduler's default 2.0; 0: decode every point, exact).

        Raises:
            ModelFormatError: missing, foreign, newer-format or mismatched graphs (different
                ``pair_id``), or a mismatched TensorRT engine.
            DependencyError: an explicit GPU device this installation cannot drive.
            InputError: an unknown device, precision, mode, or a bad ``max_queries``/``threads``.
        """
        request = parse_device(device)
        _check_settings(mode, max_queries, interpolation_margin)  # before the (slow) sessions are built
        files = find_model_files(model_dir, precision)
        encoder_meta = read_graph_metadata(files.encoder)
        decoder_meta = read_graph_metadata(files.decoder)
        check_pair(encoder_meta, decoder_meta, files.encoder, files.decoder)
        encoder, decoder = _load_backends(files, request, threads)
        if precision == "fp16" and decoder.device in CPU_DEVICES:
            warn_once(describe(files.decoder, "fp16 runs on the CPU here, where it is slower than fp32",
                               fix="use precision='fp32' on CPUs; fp16 pays off on GPUs"))
        return cls(encoder, decoder, encoder_meta, decoder_meta, max_queries=max_queries, mode=mode,
                   model_dir=files.folder, interpolation_margin=interpolation_margin)

    # ----------------------------------------------------------------------------- properties

    @property
    def channels(self) -> tuple[str, ...]:
        """The model's input channels, in order (e.g. ``("t1",)``)."""
        return tuple(self.preprocess.channels)

    @property
    def labels(self) -> Mapping[str, str]:
        """Output label value (decimal string) -> name, e.g. ``{"1": "white_matter"}``."""
        return dict(self.encoder_meta.labels)

    @property
    def device(self) -> str:
        """Where the decoder runs: ``cpu``, ``openvino`` (the CPU, through OpenVINO), ``cuda:N`` or ``trt:N``."""
        return self.decoder.device

    # ----------------------------------------------------------------------- research API

    def prepare(self, image: ImageLike, *, fit: str = "error") -> tuple[PreparedVolume, nib.Nifti1Image, str]:
        """Read and preprocess one input: ``(prepared volume, reference image, source name)``.

        Raises:
            InputError: see :func:`ossnet_deploy.inputs.resolve_volume` and ``prepare_volume``.
        """
        _check_fit(fit)
        volume = resolve_volume(image, self.preprocess.channels, min_side=self.preprocess.patch_size)
        prepared = prepare_volume(volume.data, volume.affine, self.preprocess, fit=fit, source=volume.source)
        return prepared, volume.reference, volume.source

    def encode(self, volume_or_prepared: PreparedVolume | ImageLike) -> EncodedState:
        """Run the encoder once: ``latent`` ``(1, K, L)`` and, for C/D, ``coarse_logits``.

        Args:
            volume_or_prepared: a :class:`PreparedVolume` or any input :meth:`segment` takes.
        """
        if isinstance(volume_or_prepared, PreparedVolume):
            prepared = volume_or_prepared
        else:
            prepared = self.prepare(volume_or_prepared)[0]
        outputs = self.encoder.run({VOLUME: np.ascontiguousarray(encoder_input(prepared))})
        return EncodedState(prepared, outputs[LATENT], outputs.get(COARSE_LOGITS))

    def query(self, state: EncodedState, idx_or_coords: np.ndarray) -> np.ndarray:
        """Decoder logits at arbitrary points of one encoded volume.

        Args:
            state: from :meth:`encode`.
            idx_or_coords: ``(N, 3)`` integer voxel indices ``(i, j, k)`` of the padded grid
                (exact: coordinates and patches as the scheduler uses them), or ``(N, 3)``
                float decoder coordinates in ``[-1, 1]`` (continuous positions; the patch is
                cut at the nearest voxel).

        Returns:
            ``(N,)`` float32 logits (foreground where > the model's threshold, 0).

        Raises:
            InputError: not an ``(N, 3)`` array, indices outside the grid, coordinates
                outside ``[-1, 1]`` or not finite.
        """
        points = np.asarray(idx_or_coords)
        grid = np.asarray(self.preprocess.shape, dtype=np.int64)
        if points.ndim != 2 or points.shape[1] != 3 or points.dtype.kind not in "iuf":
            raise InputError(describe(None, "query points have the wrong shape", expected="(N, 3) int or float",
                                      found=f"{points.dtype} {points.shape}", fix="pass one (i, j, k) row per point"))
        if points.dtype.kind in "iu":
            idx = points.astype(np.int64)
            if idx.size and (idx.min() < 0 or np.any(idx.max(axis=0) >= grid)):
                raise InputError(describe(None, "query indices outside the grid",
                                          expected=f"0 <= (i, j, k) < {tuple(int(g) for g in grid)}",
                                          found=f"range {idx.min(axis=0).tolist()} .. {idx.max(axis=0).tolist()}",
                                          fix="index voxels of the padded grid"))
            coords = None
        else:
            coords = points.astype(np.float32)
            if not np.isfinite(coords).all() or (coords.size and np.abs(coords).max() > 1.0):
                raise InputError(describe(None, "query coordinates outside [-1, 1]", expected="finite values in "
                                          "[-1, 1]", found=f"range [{np.nanmin(coords):g}, {np.nanmax(coords):g}]",
                                          fix="normalise as (2 * idx + 1) / shape - 1"))
            # Inverse of c = (2 * idx + 1) / shape - 1, rounded to the nearest voxel for the patch.
            idx = np.clip(np.rint(((coords + 1.0) * grid - 1.0) / 2.0), 0, grid - 1).astype(np.int64)
        decode = self._decode_fn(state)
        out = np.empty(idx.shape[0], dtype=np.float32)
        for begin in range(0, idx.shape[0], self.max_queries):
            end = min(begin + self.max_queries, idx.shape[0])
            out[begin:end] = decode(idx[begin:end], None if coords is None else coords[begin:end])
        return out

    def _decode_fn(self, state: EncodedState) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
        """The per-volume decode function: ``(idx (N, 3) int64, coords or None) -> (N,) float32``.

        Binds the latent once and reuses one patch buffer of ``max_queries`` patches, so every
        chunk allocates nothing of the grid's size.
        """
        prepared = state.prepared
        config = self.preprocess
        run = self.decoder.bind({LATENT: np.ascontiguousarray(state.latent, dtype=np.float32)})
        buffer = None
        if self._has_patches:
            p = config.patch_size
            buffer = np.empty((self.max_queries, config.patch_channels(), p, p, p), dtype=np.float32)

        def decode(idx: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
            n = idx.shape[0]
            if n == 0:
                return np.empty(0, dtype=np.float32)
            feed = {COORDS: normalise_coords(idx, config.shape) if coords is None else coords}
            if buffer is not None:
                feed[PATCHES] = extract_patches(prepared.padded, prepared.pad_values, idx,
                                                large=config.large_patches, patch_size=config.patch_size,
                                                out=buffer[:n])
            return run(feed)[LOGITS].reshape(n)

        return decode

    # --------------------------------------------------------------------------- segment

    def segment(self, image: ImageLike, *, fit: str = "error", progress: Progress | None = None) -> nib.Nifti1Image:
        """Segment one volume.

        Args:
            image: a NIfTI path, a list of per-channel paths (model order), a case folder, a
                nibabel image, or ``(array, affine)`` with ``array`` ``(X, Y, Z)`` or
                ``(X, Y, Z, C)`` laid out like NIfTI data.
            fit: ``"error"``: a foreground larger than the model grid raises InputError;
                ``"downsample"``: shrink it until it fits.
            progress: ``progress(stage, done, total)`` callback (see :data:`Progress`).

        Returns:
            uint8 labels on the input's grid: a ``Nifti1Image`` whose header is a copy of the
            input's (same shape, affine, qform/sform codes); for ``(array, affine)`` a fresh
            header with that affine.

        Raises:
            InputError: unreadable, 2D/5D, non-finite, wrong channel count, smaller than a
                patch, singular affine, or too large for the grid with ``fit="error"``.
        """
        return self.segment_with_stats(image, fit=fit, progress=progress)[0]

    def segment_with_stats(
        self, image: ImageLike, *, fit: str = "error", progress: Progress | None = None
    ) -> tuple[nib.Nifti1Image, SegmentationStats]:
        """:meth:`segment`, also returning the call's :class:`SegmentationStats`."""
        _check_fit(fit)
        reset_peak_rss()
        timer = _Timer(progress)
        volume = resolve_volume(image, self.preprocess.channels, min_side=self.preprocess.patch_size)
        reference, source = volume.reference, volume.source
        input_shape = _shape3(volume.data.shape[1:])
        timer.lap("read")
        prepared = prepare_volume(volume.data, volume.affine, self.preprocess, fit=fit, source=source)
        del volume  # the raw input is not needed any more; only the padded grid stays
        timer.lap("prepare")
        state = self.encode(prepared)
        timer.lap("encode")
        decode = self._decode_fn(state)
        result = run_scheduler(
            decode, self.preprocess.shape, prepared.region, self.scheduler_config,
            coarse_logits=state.coarse_logits, progress=progress,
        )
        timer.skip()
        grid_labels = np.zeros(self.preprocess.shape, dtype=np.uint8)
        grid_labels[prepared.region] = result.labels
        placement, scheduler_stats = prepared.placement, result.stats
        del state, prepared, decode, result
        labels = labels_to_input(grid_labels, placement, source=source)
        del grid_labels
        output = labels_image(labels, reference)
        timer.lap("restore")
        stages = scheduler_stats.stages
        region_shape = _shape3(tuple(s.stop - s.start for s in placement.region))
        timed = [*timer.stages[:3], *((s.name, s.seconds) for s in stages), *timer.stages[3:]]
        stats = SegmentationStats(
            source=source, mode=self.mode, device=self.device, max_queries=self.max_queries,
            input_shape=input_shape, region_shape=region_shape,
            stage_queries=tuple((s.name, s.queries) for s in stages),
            stage_seconds=tuple(timed), peak_rss_bytes=peak_rss_bytes(), scheduler=scheduler_stats,
        )
        return output, stats

    def close(self) -> None:
        """Release both sessions."""
        self.encoder.close()
        self.decoder.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Segmenter(model_dir={str(self.model_dir)!r}, variant={self.encoder_meta.variant!r}, "
                f"device={self.device!r}, mode={self.mode!r}, max_queries={self.max_queries})")


def _check_settings(mode: str, max_queries: int | None, interpolation_margin: float | None) -> None:
    if mode not in MODES:
        raise InputError(describe(None, f"unknown mode {mode!r}", expected=", ".join(MODES), found=repr(mode),
                                  fix="use 'adaptive' (default), 'reference' or 'dense'"))
    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                    or max_queries < 1):
        raise InputError(describe(None, "invalid max_queries", expected="an int >= 1 or None",
                                  found=repr(max_queries), fix=f"e.g. max_queries={DEFAULT_MAX_QUERIES}"))
    if interpolation_margin is not None:
        SchedulerConfig(interpolation_margin=interpolation_margin)  # raises InputError naming the setting


def _check_fit(fit: str) -> None:
    if fit not in ("error", "downsample"):
        raise InputError(describe(None, f"unknown fit {fit!r}", expected="'error' or 'downsample'",
                                  found=repr(fit), fix="use fit='downsample' to shrink inputs larger than the grid"))


def _load_backends(files: ModelFiles, request: DeviceRequest, threads: int | None) -> tuple[Backend, Backend]:
    """Create the encoder and decoder backends for a device request."""
    from ossnet_deploy.backends.ort import OrtBackend
    from ossnet_deploy.devices import plan_providers

    plan = plan_providers(request, has_trt_engine=files.has_trt_engines)
    if plan.kind == "trt":
        from ossnet_deploy.backends.trt import TrtBackend

        encoder_engine, decoder_engine = files.encoder_engine, files.decoder_engine
        if encoder_engine is None or decoder_engine is None:
            raise ModelFormatError(
                describe(files.folder, "no TensorRT engines in the model folder",
                         expected="the EP-context models written by `ossnet-export CHECKPOINT --trt`",
                         found="only ONNX graphs", fix="export with --trt on this machine, or use device='cuda'")
            )
        return (TrtBackend(encoder_engine, source_onnx=files.encoder, plan=plan, threads=threads),
                TrtBackend(decoder_engine, source_onnx=files.decoder, plan=plan, threads=threads))
    encoder = OrtBackend(files.encoder, device=plan, threads=threads)
    if request.kind == "openvino":
        # Only the decoder: it runs ~600 k times per volume and its elementwise chains are what
        # OpenVINO fuses; the encoder runs once, and ONNX Runtime's slabbed run keeps its peak low.
        from ossnet_deploy.backends.openvino import OpenVinoBackend

        return encoder, OpenVinoBackend(files.decoder, threads=threads)
    decoder = OrtBackend(files.decoder, device=encoder.plan, threads=threads)
    return encoder, decoder
