"""``Segmenter``: an exported OSS-Net pair behind one call, ``segment(image) -> NIfTI``.

A :class:`Segmenter` is a loaded :class:`~ossnet_deploy.model.ModelPair` plus the settings of
one run (scheduler mode, chunk size, interpolation margin). One ``segment`` call

1. **reads** any accepted input form (``ossnet_deploy.inputs``: checked there, once) into
   ``(C, X, Y, Z)`` float32;
2. **prepares** it (``prepare_volume``): the normalised padded grid, the global volume and the
   placement; the raw data is released here;
3. runs **the pipeline** (``ossnet_deploy.pipeline.segment_prepared``): encode once, schedule
   decoder queries, labels back on the input's grid;
4. wraps the labels in a NIfTI image with the input's header.

Thread safety: the sessions are shared and their ``run`` is thread-safe; every other piece of
state (prepared volume, latent, patch buffer, statistics) lives in the call, so ``segment`` may
be called from several threads at once. Statistics are returned
(:meth:`Segmenter.segment_with_stats`), never stored on the shared object.

Memory of one call beyond the sessions: the raw input (until prepared), the padded grid
(C x grid float32), the global volume (1/8 of it), one patch buffer of ``max_queries`` patches,
the scheduler's compact state and the uint8 output. docs/runtime.md has the measured bytes per
voxel.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ossnet_deploy.backends.base import Backend
from ossnet_deploy.dicom_series import DicomSeriesRef
from ossnet_deploy.domain import DomainWarning, check_input, check_output
from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.inputs import ImageLike, VolumeInput, resolve_volume
from ossnet_deploy.label_codes import LabelCode
from ossnet_deploy.memory import peak_rss_bytes
from ossnet_deploy.metadata import GraphMetadata
from ossnet_deploy.model import CPU_DEVICES, ModelPair
from ossnet_deploy.nifti_io import labels_image
from ossnet_deploy.pipeline import bind_decoder, segment_prepared
from ossnet_deploy.preprocess import PreparedVolume, PreprocessConfig, check_fit, prepare_volume
from ossnet_deploy.scheduler import MODES, SchedulerConfig, SchedulerStats

__all__ = [
    "DEFAULT_MAX_QUERIES",
    "GPU_DEFAULT_MAX_QUERIES",
    "EncodedState",
    "Progress",
    "SegmentationStats",
    "Segmenter",
]

DEFAULT_MAX_QUERIES = 4096
"""Decoder queries per call on the CPU when none is given: the knee of speed vs memory
measured with ``benchmarks/bench_segmenter.py --study chunks`` (docs/runtime.md, "Chunk
size"): larger chunks add 6-8 KiB per query of peak memory and no speed."""

GPU_DEFAULT_MAX_QUERIES = 32768
"""Default on CUDA/TensorRT: GPUs need large batches to be busy and the decoder's memory per
query is small; 32768 is also the maximum of the TensorRT profile ``ossnet-export --trt``
builds by default. Not measured here (no GPU in this project's CI)."""

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stages ``read``, ``prepare``, ``encode`` (1 of 1 when
finished), every scheduler stage (queries done of queries planned so far), ``restore``."""

OnRead = Callable[[VolumeInput], None]
"""``on_read(volume)``: sees the input once it is read and checked, before it is prepared
(e.g. the CLI keeps the grey levels of its preview); must not modify ``volume.data``."""

# Names that lived here before the model module existed (docs/design.md#model-files-and-metadata).
_MOVED_TO_MODEL = ("DEFAULT_MODEL_DIR", "PRECISIONS", "CPU_DEVICES", "ENCODER_FILE", "DECODER_FILE",
                   "DECODER_FP16_FILE", "ModelFiles", "find_model_files")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_MODEL:
        from ossnet_deploy import model

        warnings.warn(f"ossnet_deploy.segmenter.{name} moved to ossnet_deploy.model.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(model, name)
    raise AttributeError(f"module 'ossnet_deploy.segmenter' has no attribute {name!r}")


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
        peak_rss_bytes: the process's peak resident memory (VmHWM) at the end of the call, or
            None. Per process: a caller that wants one call's peak resets it first
            (``ossnet_deploy.memory.reset_peak_rss``; the CLI does so per case).
        scheduler: the scheduler's own statistics.
        warnings: the domain checks' findings (``ossnet_deploy.domain``): the input or the output
            lies far outside what the model saw in training; each was also emitted as a
            :class:`~ossnet_deploy.domain.DomainWarning`. Empty when all is plausible.
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
    warnings: tuple[str, ...] = ()

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


class Segmenter:
    """A loaded model pair, its preprocessing and the query scheduler's settings.

    Create it with :meth:`from_dir`. ``segment`` is thread-safe.

    Args:
        encoder: backend of the encoder graph (or a :class:`ModelPair` as the only positional
            argument, with ``encoder_meta``/``decoder_meta`` left out).
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
        encoder: Backend | ModelPair,
        decoder: Backend | None = None,
        encoder_meta: GraphMetadata | None = None,
        decoder_meta: GraphMetadata | None = None,
        *,
        max_queries: int | None = None,
        mode: str = "adaptive",
        model_dir: Path | None = None,
        interpolation_margin: float | None = None,
    ) -> None:
        if isinstance(encoder, ModelPair):
            pair = encoder
        else:
            if decoder is None or encoder_meta is None or decoder_meta is None:
                raise TypeError("Segmenter(encoder, decoder, encoder_meta, decoder_meta) or Segmenter(pair)")
            pair = ModelPair(encoder, decoder, encoder_meta, decoder_meta, folder=model_dir)
        _check_settings(mode, max_queries, interpolation_margin)
        limit = pair.max_queries_limit
        chunk = max_queries
        if chunk is None:
            chunk = DEFAULT_MAX_QUERIES if pair.device in CPU_DEVICES else GPU_DEFAULT_MAX_QUERIES
            chunk = chunk if limit is None else min(chunk, limit)
        if limit is not None and chunk > limit:
            raise InputError(describe(pair.decoder_backend.path, "max_queries exceeds the TensorRT engine's profile",
                                      expected=f"at most {limit}", found=str(chunk),
                                      fix=f"pass max_queries <= {limit}, or rebuild the engine with a larger "
                                          "--max-queries"))
        self.pair = pair
        self.mode = mode
        self.max_queries = chunk
        self.model_dir = pair.folder if model_dir is None else model_dir
        margin = {} if interpolation_margin is None else {"interpolation_margin": interpolation_margin}
        self.scheduler_config = SchedulerConfig(mode=mode, threshold_logit=pair.encoder_meta.scheduler.threshold_logit,
                                                max_queries=chunk, **margin)

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
            device: ``auto`` (TensorRT, CUDA, CPU, as available; on the CPU the decoder runs in
                OpenVINO where it is installed), ``cpu`` (ONNX Runtime only), ``openvino``,
                ``cuda[:N]``, ``gpu[:N]`` or ``trt[:N]``.
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
        _check_settings(mode, max_queries, interpolation_margin)  # before the (slow) sessions are built
        pair = ModelPair.open(model_dir, device=device, precision=precision, threads=threads)
        return cls(pair, max_queries=max_queries, mode=mode, interpolation_margin=interpolation_margin)

    # ----------------------------------------------------------------------------- properties

    @property
    def encoder(self) -> Backend:
        """The encoder graph's backend."""
        return self.pair.encoder

    @property
    def decoder(self) -> Backend:
        """The decoder graph's backend."""
        return self.pair.decoder_backend

    @property
    def encoder_meta(self) -> GraphMetadata:
        """The encoder's ossnet metadata."""
        return self.pair.encoder_meta

    @property
    def decoder_meta(self) -> GraphMetadata:
        """The decoder's ossnet metadata."""
        return self.pair.decoder_meta

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing the model was trained with."""
        return self.pair.preprocess

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
        return self.pair.device

    # ----------------------------------------------------------------------- research API

    def read(self, image: ImageLike | VolumeInput) -> VolumeInput:
        """Read and check one input (any form :meth:`segment` takes) for this model's channels.

        Raises:
            InputError: see :func:`ossnet_deploy.inputs.resolve_volume`.
        """
        if isinstance(image, VolumeInput):
            return image
        return resolve_volume(image, self.preprocess.channels, min_side=self.preprocess.patch_size)

    def prepare(self, image: ImageLike | VolumeInput, *, fit: str = "error") -> tuple[PreparedVolume, nib.Nifti1Image, str]:
        """Read and preprocess one input: ``(prepared volume, reference image, source name)``.

        Raises:
            InputError: see :func:`ossnet_deploy.inputs.resolve_volume` and ``prepare_volume``.
        """
        check_fit(fit)
        volume = self.read(image)
        prepared = prepare_volume(volume.data, volume.affine, self.preprocess, fit=fit, source=volume.source,
                                  finite_checked=True)
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
        encoding = self.pair.encode(prepared.global_volume[None])
        return EncodedState(prepared, encoding.latent, encoding.coarse_logits)

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
        decode = bind_decoder(state.prepared, self.preprocess, self.pair, state.latent, max_queries=self.max_queries)
        out = np.empty(idx.shape[0], dtype=np.float32)
        for begin in range(0, idx.shape[0], self.max_queries):
            end = min(begin + self.max_queries, idx.shape[0])
            out[begin:end] = decode(idx[begin:end], None if coords is None else coords[begin:end])
        return out

    # --------------------------------------------------------------------------- segment

    def segment(self, image: ImageLike | VolumeInput, *, fit: str = "error", progress: Progress | None = None) -> nib.Nifti1Image:
        """Segment one volume.

        Args:
            image: a NIfTI path, a list of per-channel paths (model order), a case folder, a
                DICOM series folder or zip (or a ``DicomSource`` naming the series; one per
                channel, or a channel -> input mapping), a nibabel image, ``(array, affine)``
                with ``array`` ``(X, Y, Z)`` or ``(X, Y, Z, C)`` laid out like NIfTI data, or a
                :class:`VolumeInput` already read. DICOM SEG output: :meth:`save_dicom_seg`.
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
        self, image: ImageLike | VolumeInput, *, fit: str = "error", progress: Progress | None = None,
        on_read: OnRead | None = None,
    ) -> tuple[nib.Nifti1Image, SegmentationStats]:
        """:meth:`segment`, also returning the call's :class:`SegmentationStats`.

        ``on_read(volume)`` (optional) sees the input right after it is read and checked.
        """
        check_fit(fit)
        started = time.perf_counter()
        volume = self.read(image)
        reference, source = volume.reference, volume.source
        input_shape = _shape3(volume.data.shape[1:])
        if on_read is not None:
            on_read(volume)
        read_at = time.perf_counter()
        if progress is not None:
            progress("read", 1, 1)
        prepared = prepare_volume(volume.data, volume.affine, self.preprocess, fit=fit, source=source,
                                  finite_checked=True)
        del volume  # the raw input is not needed any more; only the padded grid stays
        findings: list[str] = []
        if prepared.profile is not None and self.pair.domain is not None:
            findings += check_input(prepared.profile, self.pair.domain)
        prepared_at = time.perf_counter()
        if progress is not None:
            progress("prepare", 1, 1)
        region_shape = _shape3(tuple(s.stop - s.start for s in prepared.region))
        result = segment_prepared(prepared, self.preprocess, self.pair, self.scheduler_config, source=source,
                                  progress=progress)
        if prepared.profile is not None:
            findings += check_output(result.grid_label_voxels, prepared.profile, self.pair.domain)
        for finding in findings:
            warnings.warn(f"{source}: {finding}", DomainWarning, stacklevel=2)
        del prepared
        wrap_started = time.perf_counter()
        output = labels_image(result.labels, reference)
        stage_seconds = [("read", read_at - started), ("prepare", prepared_at - read_at), *result.stage_seconds]
        # The header wrap belongs to the restore stage, as before the pipeline existed.
        name, seconds = stage_seconds[-1]
        stage_seconds[-1] = (name, seconds + time.perf_counter() - wrap_started)
        stages = result.stats.stages
        stats = SegmentationStats(
            source=source, mode=self.mode, device=self.device, max_queries=self.max_queries,
            input_shape=input_shape, region_shape=region_shape,
            stage_queries=tuple((s.name, s.queries) for s in stages),
            stage_seconds=tuple(stage_seconds), peak_rss_bytes=peak_rss_bytes(), scheduler=result.stats,
            warnings=tuple(findings),
        )
        return output, stats

    def label_codes(self) -> dict[str, LabelCode]:
        """The coded meaning of every label (the model's ``ossnet.label_codes``, else the known
        table; ``ossnet_deploy.label_codes``), as a DICOM SEG needs them.

        Raises:
            InputError: a label has no code (so no SEG can be written; NIfTI can).
        """
        from ossnet_deploy.label_codes import label_codes_for, parse_label_codes

        meta = self.encoder_meta
        model_codes = parse_label_codes(meta.label_codes, "label_codes") if meta.label_codes else None
        return label_codes_for(meta.labels, model_codes, model=str(self.model_dir))

    def save_dicom_seg(self, labels: nib.Nifti1Image | np.ndarray, volume: VolumeInput | DicomSeriesRef,
                       path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write a segmentation of a DICOM input as a BINARY DICOM SEG (docs/design.md#dicom).

        Example::

            volume = segmenter.read("series_dir/")       # or DicomSource(folder, series_uid)
            labels = segmenter.segment(volume)           # NIfTI image in the series' world geometry
            segmenter.save_dicom_seg(labels, volume, "seg.dcm")

        Args:
            labels: :meth:`segment`'s output for ``volume`` (or its ``(X, Y, Z)`` uint8 array).
            volume: the input as :meth:`read` returned it (it must come from a DICOM series), or
                its ``dicom`` attribute.
            path: the output, ``*.dcm``.
            overwrite: replace an existing file.

        Raises:
            InputError: ``volume`` is not from DICOM, a label has no coded meaning, or ``path``
                is not ``.dcm``.
            OutputExistsError: ``path`` exists and ``overwrite`` is False.
            DependencyError: the ``dicom`` extra is not installed.
        """
        from ossnet_deploy import __version__
        from ossnet_deploy.dicom_seg import SegAlgorithm, write_seg

        series = volume if isinstance(volume, DicomSeriesRef) else volume.dicom
        if series is None:
            raise InputError(describe(volume.source, "DICOM SEG output needs a DICOM input",  # type: ignore[union-attr]
                                      expected="a DICOM series (folder or zip)", found="a NIfTI or in-memory image",
                                      fix="write NIfTI output (.nii.gz) for NIfTI inputs"))
        array = np.asarray(labels.dataobj if isinstance(labels, nib.Nifti1Image) else labels)
        meta = self.encoder_meta
        codes = self.label_codes()
        name = Path(str(self.model_dir)).name or meta.variant
        algorithm = SegAlgorithm(name, __version__, {"pair_id": meta.pair_id, "variant": meta.variant,
                                                     "mode": self.mode})
        return write_seg(array.astype(np.uint8, copy=False), series, path, label_names=meta.labels,
                         label_codes=codes, algorithm=algorithm, overwrite=overwrite)

    def close(self) -> None:
        """Release both sessions."""
        self.pair.close()

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
