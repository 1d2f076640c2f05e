"""Segment one volume: the one pipeline of the runtime, training validation, export verification
and the benchmarks.

A volume goes

1. **prepare** (the caller: it reads the input and releases the raw data right after):
   ``prepare_volume`` -> the normalised padded grid, the global volume and the placement;
2. **encode**: the model's encoder, once: ``latent`` and, for C/D, ``coarse_logits``;
3. **schedule**: ``run_scheduler`` asks for logits of voxel batches; :class:`DecoderFeed` cuts
   their patches from the padded grid and normalises their coordinates, and the model's
   decoder (latent bound once per volume) turns them into logits, in chunks of at most
   ``max_queries``;
4. **restore**: the region's labels go back onto the stored input grid
   (:func:`~ossnet_deploy.geometry.region_labels_to_input`), without a grid-sized copy.

Callers differ only in the :class:`PairRunner` they pass: ONNX Runtime / TensorRT / OpenVINO
backends in ``Segmenter``, PyTorch modules in training validation and the benchmarks' eager
program, an ONNX Runtime session fed PyTorch's latent in export verification. So validation
equals deployment by construction (docs/design.md#one-pipeline).

Everything here is numpy; nothing holds state between volumes, so one runner may serve
several threads when its ``encode`` and ``decoder`` are thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ossnet_deploy.geometry import region_labels_to_input
from ossnet_deploy.metadata import COORDS, PATCHES
from ossnet_deploy.patches import extract_patches, normalise_coords
from ossnet_deploy.preprocess import PreparedVolume, PreprocessConfig, encoder_input
from ossnet_deploy.scheduler import Progress, SchedulerConfig, SchedulerStats, run_scheduler

__all__ = [
    "DecoderFeed",
    "DecoderRun",
    "Encoding",
    "PairRunner",
    "RegionResult",
    "VolumeResult",
    "bind_decoder",
    "segment_prepared",
    "segment_region",
]

DecoderRun = Callable[[Mapping[str, np.ndarray]], np.ndarray]
"""``run(feed) -> logits`` of one volume, its latent already bound: ``feed`` holds ``coords``
``(N, 3)`` float32 and, except O-Net, ``patches`` ``(N, C_p, 7, 7, 7)`` float32; the logits are
``(N,)`` or ``(N, 1)`` float32. The arrays of ``feed`` may be reused after the call returns."""


@dataclass(frozen=True)
class Encoding:
    """The encoder's outputs for one volume.

    Attributes:
        latent: ``(1, K, L)`` float32.
        coarse_logits: ``(1, 1, d, h, w)`` float32 coarse segmentation logits (C, D), or None.
    """

    latent: np.ndarray
    coarse_logits: np.ndarray | None = None


class PairRunner(Protocol):
    """What the pipeline needs of an encoder/decoder pair, however it is run.

    Attributes:
        uses_patches: the decoder takes a ``patches`` input (every variant but O-Net).
    """

    uses_patches: bool

    def encode(self, volume: np.ndarray) -> Encoding:
        """``volume`` ``(1, C, Dg, Hg, Wg)`` float32 (the global volume) -> :class:`Encoding`."""
        ...

    def decoder(self, latent: np.ndarray) -> DecoderRun:
        """The decoder with ``latent`` ``(1, K, L)`` bound, for every query of one volume."""
        ...


class DecoderFeed:
    """The decoder's per-query inputs for one prepared volume.

    ``feed(idx)`` with ``idx`` ``(N, 3)`` int64 voxel indices of the padded grid gives
    ``{"coords": (N, 3) float32, "patches": (N, C_p, 7, 7, 7) float32}`` (no ``patches`` for
    O-Net): coordinates ``(2 * idx + 1) / shape - 1`` and patches cut from the padded grid with
    the preprocessing's patch size and large-patch setting (docs/design.md#queries-and-patches).
    With ``max_queries``, patches go into one reused buffer, so a chunk allocates nothing of the
    grid's size and a feed is valid until the next call.

    Args:
        prepared: the volume from ``prepare_volume``.
        config: its preprocessing configuration.
        patches: cut patches (the decoder has a ``patches`` input).
        max_queries: the most queries of one call, to size the reused buffer (None: allocate
            per call).
    """

    def __init__(self, prepared: PreparedVolume, config: PreprocessConfig, *, patches: bool,
                 max_queries: int | None = None) -> None:
        self._prepared = prepared
        self._config = config
        self._patches = patches
        self._buffer = None
        if patches and max_queries is not None:
            p = config.patch_size
            self._buffer = np.empty((max_queries, config.patch_channels(), p, p, p), dtype=np.float32)

    def __call__(self, idx: np.ndarray, coords: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Inputs for ``idx``; ``coords`` replaces the normalised voxel centres (continuous queries)."""
        config = self._config
        feed = {COORDS: normalise_coords(idx, config.shape) if coords is None else coords}
        if self._patches:
            out = None if self._buffer is None else self._buffer[: idx.shape[0]]
            feed[PATCHES] = extract_patches(self._prepared.padded, self._prepared.pad_values, idx,
                                            large=config.large_patches, patch_size=config.patch_size, out=out)
        return feed


def bind_decoder(
    prepared: PreparedVolume, config: PreprocessConfig, runner: PairRunner, latent: np.ndarray,
    *, max_queries: int | None = None,
) -> Callable[..., np.ndarray]:
    """The per-volume ``decode(idx, coords=None) -> (N,) float32 logits`` the scheduler calls.

    Binds ``latent`` once (``runner.decoder``) and feeds :class:`DecoderFeed`'s inputs; calls
    hold at most ``max_queries`` points when given (the scheduler guarantees it).
    """
    run = runner.decoder(latent)
    feed = DecoderFeed(prepared, config, patches=runner.uses_patches, max_queries=max_queries)

    def decode(idx: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
        n = idx.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.float32)
        return np.asarray(run(feed(idx, coords)), dtype=np.float32).reshape(n)

    return decode


@dataclass(frozen=True)
class RegionResult:
    """One prepared volume segmented on (a region of) its grid.

    Attributes:
        labels: uint8 labels of ``region``'s shape (not the whole grid).
        region: the part of the grid that was segmented.
        encoding: the encoder's outputs.
        stats: the scheduler's statistics (stages, queries, seconds).
        encode_seconds: wall seconds of the encoder (0.0 when ``encoding`` was given).
    """

    labels: np.ndarray
    region: tuple[slice, slice, slice]
    encoding: Encoding
    stats: SchedulerStats
    encode_seconds: float


def segment_region(
    prepared: PreparedVolume,
    config: PreprocessConfig,
    runner: PairRunner,
    scheduler: SchedulerConfig,
    *,
    region: tuple[slice, slice, slice] | None = None,
    encoding: Encoding | None = None,
    progress: Progress | None = None,
) -> RegionResult:
    """Encode (unless ``encoding`` is given), then let the scheduler decode ``region``.

    Args:
        prepared: the volume from ``prepare_volume`` with ``config``.
        config: its preprocessing configuration (grid shape, patch settings).
        runner: the model.
        scheduler: mode, threshold, chunk size (``max_queries``) and margins.
        region: the part of the grid to segment (default: the input's region).
        encoding: the encoder's outputs when already computed (verification decodes PyTorch
            and ONNX with one latent).
        progress: ``progress(stage, done, total)``: ``encode`` (1 of 1 when it ran), then every
            scheduler stage.
    """
    encode_seconds = 0.0
    if encoding is None:
        started = time.perf_counter()
        encoding = runner.encode(np.ascontiguousarray(encoder_input(prepared)))
        encode_seconds = time.perf_counter() - started
        if progress is not None:
            progress("encode", 1, 1)
    region = prepared.region if region is None else region
    decode = bind_decoder(prepared, config, runner, encoding.latent, max_queries=scheduler.max_queries)
    result = run_scheduler(decode, config.shape, region, scheduler, coarse_logits=encoding.coarse_logits,
                           progress=progress)
    return RegionResult(result.labels, region, encoding, result.stats, encode_seconds)


@dataclass(frozen=True)
class VolumeResult:
    """One prepared volume segmented, its labels back on the stored input grid.

    Attributes:
        labels: uint8 ``(X, Y, Z)`` in the stored axis order of the input.
        grid_label_voxels: labelled voxels on the model grid (at the model's spacing).
        stats: the scheduler's statistics.
        stage_seconds: ``(stage, wall seconds)`` in run order: ``encode``, every scheduler
            stage, ``restore``.
    """

    labels: np.ndarray
    grid_label_voxels: int
    stats: SchedulerStats
    stage_seconds: tuple[tuple[str, float], ...]


def segment_prepared(
    prepared: PreparedVolume,
    config: PreprocessConfig,
    runner: PairRunner,
    scheduler: SchedulerConfig,
    *,
    source: str | None = None,
    progress: Progress | None = None,
) -> VolumeResult:
    """Prepared volume -> encode -> schedule -> labels on the input grid.

    Args:
        prepared: the volume from ``prepare_volume`` with ``config``.
        config: the model's preprocessing.
        runner: the model.
        scheduler: the query schedule.
        source: the input's name, for messages.
        progress: ``progress(stage, done, total)``: ``encode``, every scheduler stage,
            ``restore``.
    """
    result = segment_region(prepared, config, runner, scheduler, progress=progress)
    started = time.perf_counter()
    labels = region_labels_to_input(result.labels, prepared.placement, source=source)
    restore_seconds = time.perf_counter() - started
    if progress is not None:
        progress("restore", 1, 1)
    stages = (
        ("encode", result.encode_seconds),
        *((s.name, s.seconds) for s in result.stats.stages),
        ("restore", restore_seconds),
    )
    return VolumeResult(labels, int(np.count_nonzero(result.labels)), result.stats, stages)
