"""An exported model: the folder layout, the pair's validation, and its graphs opened on a device.

* **Layout**: ``ossnet-export`` writes :data:`ENCODER_FILE` and :data:`DECODER_FILE` (optionally
  :data:`DECODER_FP16_FILE`, and TensorRT EP-context models beside them) into one folder; the
  exporter imports these names from here. :func:`find_model_files` locates them.
* **Pair validation**: :class:`ModelPair` refuses graphs that are not one exported pair
  (``check_pair``), graphs whose inputs/outputs differ from their metadata, preprocessing
  metadata that does not parse, and a scheduler grid or patch-channel count that disagrees with
  the preprocessing (docs/design.md#model-files-and-metadata).
* **Opening**: :meth:`ModelPair.open` picks the backends for a device request (TensorRT
  engines, ONNX Runtime on CUDA or CPU, OpenVINO for the decoder).

A :class:`ModelPair` is the runtime's :class:`~ossnet_deploy.pipeline.PairRunner`: the
pipeline calls its ``encode`` once per volume and its ``decoder(latent)`` for every chunk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ossnet_deploy.backends.base import Backend
from ossnet_deploy.devices import DeviceRequest, parse_device, warn_once
from ossnet_deploy.domain import ModelDomain
from ossnet_deploy.errors import DependencyError, InputError, ModelFormatError, describe
from ossnet_deploy.metadata import (
    COARSE_LOGITS,
    LATENT,
    LOGITS,
    PATCHES,
    VOLUME,
    GraphMetadata,
    check_pair,
)
from ossnet_deploy.onnx_metadata import read_graph_metadata
from ossnet_deploy.pipeline import DecoderRun, Encoding
from ossnet_deploy.preprocess import PreprocessConfig

__all__ = [
    "CPU_DEVICES",
    "DECODER_FILE",
    "DECODER_FP16_FILE",
    "DEFAULT_MODEL_DIR",
    "ENCODER_FILE",
    "PRECISIONS",
    "ModelFiles",
    "ModelPair",
    "find_model_files",
]

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DECODER_FP16_FILE = "decoder.fp16.onnx"

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "mni-wm-demo"
"""The bundled default model (docs/design.md#files-that-ship)."""

PRECISIONS = ("fp32", "fp16")

CPU_DEVICES = ("cpu", "openvino")
"""Backend devices that are the CPU (the CPU chunk default and the fp16 warning apply)."""


@dataclass(frozen=True)
class ModelFiles:
    """The graph files of a model folder that one :class:`ModelPair` loads.

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


def check_precision(precision: str) -> None:
    """:class:`InputError` unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise InputError(describe(None, f"unknown precision {precision!r}", expected=" or ".join(PRECISIONS),
                                  found=repr(precision), fix="pass precision='fp32' (CPU) or 'fp16' (GPU)"))


def find_model_files(model_dir: str | os.PathLike[str] | None, precision: str = "fp32") -> ModelFiles:
    """Locate the graphs of a model folder (default: the bundled model).

    Raises:
        ModelFormatError: the folder or a graph file is missing (the message names the folder
            and the fix); the bundled model is missing from this installation.
        InputError: an unknown precision.
    """
    check_precision(precision)
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


def _preprocess_of(encoder: Backend, encoder_meta: GraphMetadata) -> PreprocessConfig:
    """The preprocessing the encoder's metadata records; :class:`ModelFormatError` if it does not parse."""
    try:
        return PreprocessConfig.from_dict(encoder_meta.preprocess)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(
            describe(encoder.path, "the model's preprocessing metadata is invalid", found=str(exc),
                     fix="re-export the model with this version of ossnet-export")
        ) from None


def _domain_of(encoder: Backend, encoder_meta: GraphMetadata, preprocess: PreprocessConfig) -> ModelDomain | None:
    """The training inputs' domain the encoder's metadata records, or None (older exports)."""
    if encoder_meta.domain is None:
        return None
    try:
        domain = ModelDomain.from_dict(encoder_meta.domain)
    except ValueError as exc:
        raise ModelFormatError(describe(encoder.path, "the model's domain metadata is invalid", found=str(exc),
                                        fix="re-export the model with this version of ossnet-export")) from None
    if domain.channels != tuple(preprocess.channels):
        raise ModelFormatError(describe(encoder.path, "the model's domain metadata names other channels",
                                        expected=str(list(preprocess.channels)), found=str(list(domain.channels)),
                                        fix="re-export the model"))
    return domain


class ModelPair:
    """An encoder and a decoder graph that belong together, opened and checked.

    Args:
        encoder: backend of the encoder graph.
        decoder: backend of the decoder graph.
        encoder_meta: the encoder's ossnet metadata.
        decoder_meta: the decoder's ossnet metadata.
        folder: the folder the graphs came from (for messages and reports), or None.

    Attributes:
        preprocess: the preprocessing the model was trained with.
        uses_patches: the decoder takes local patches (every variant but O-Net).
        domain: what its training inputs looked like (``ossnet.domain``), or None.

    Raises:
        ModelFormatError: the two graphs are not one exported pair, a graph's inputs/outputs
            differ from its metadata, or the metadata is inconsistent.
    """

    def __init__(self, encoder: Backend, decoder: Backend, encoder_meta: GraphMetadata,
                 decoder_meta: GraphMetadata, *, folder: Path | None = None) -> None:
        check_pair(encoder_meta, decoder_meta, encoder.path, decoder.path)
        for backend, meta in ((encoder, encoder_meta), (decoder, decoder_meta)):
            backend.require({s.name: s for s in meta.io.inputs}, {s.name: s for s in meta.io.outputs})
        preprocess = _preprocess_of(encoder, encoder_meta)
        grid = tuple(encoder_meta.scheduler.grid_shape)
        if grid != tuple(preprocess.shape):
            raise ModelFormatError(
                describe(encoder.path, "scheduler grid and preprocessing grid differ",
                         expected=f"grid {tuple(preprocess.shape)}", found=f"grid {grid}", fix="re-export the model")
            )
        self.uses_patches = PATCHES in decoder.inputs
        if self.uses_patches:
            want = preprocess.patch_channels()
            got = decoder.inputs[PATCHES].shape[1]
            if got != want:
                raise ModelFormatError(
                    describe(decoder.path, "decoder patch channels disagree with the preprocessing",
                             expected=f"{want} patch channels", found=f"{got}", fix="re-export the model")
                )
        self.encoder = encoder
        self.decoder_backend = decoder
        self.encoder_meta = encoder_meta
        self.decoder_meta = decoder_meta
        self.preprocess = preprocess
        self.folder = folder
        self.domain = _domain_of(encoder, encoder_meta, preprocess)

    @classmethod
    def open(
        cls,
        model_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
    ) -> ModelPair:
        """Open the pair in ``model_dir`` (default: the bundled model) on ``device``.

        Args:
            model_dir: a folder written by ``ossnet-export``.
            device: ``auto`` (TensorRT, CUDA, CPU, as available; on the CPU the decoder runs in
                OpenVINO where it is installed), ``cpu`` (ONNX Runtime only), ``openvino``,
                ``cuda[:N]``, ``gpu[:N]`` or ``trt[:N]``.
            precision: ``fp32`` or ``fp16`` (the ``decoder.fp16.onnx`` graph; meant for GPUs).
            threads: CPU threads per graph (default: the physical cores this process may use).

        Raises:
            ModelFormatError: missing, foreign, newer-format or mismatched graphs, or a
                mismatched TensorRT engine.
            DependencyError: an explicit GPU device (or OpenVINO) this installation cannot drive.
            InputError: an unknown device or precision, or a bad ``threads``.
        """
        request = parse_device(device)
        files = find_model_files(model_dir, precision)
        encoder_meta = read_graph_metadata(files.encoder)
        decoder_meta = read_graph_metadata(files.decoder)
        # Before the (slow) sessions are built.
        check_pair(encoder_meta, decoder_meta, files.encoder, files.decoder)
        encoder, decoder = _open_backends(files, request, threads, precision=precision)
        if precision == "fp16" and decoder.device in CPU_DEVICES:
            warn_once(describe(files.decoder, "fp16 runs on the CPU here, where it is slower than fp32",
                               fix="use precision='fp32' on CPUs; fp16 pays off on GPUs"))
        return cls(encoder, decoder, encoder_meta, decoder_meta, folder=files.folder)

    # ------------------------------------------------------------------ what the pipeline calls

    def encode(self, volume: np.ndarray) -> Encoding:
        """The encoder graph on ``volume`` ``(1, C, Dg, Hg, Wg)`` float32."""
        outputs = self.encoder.run({VOLUME: np.ascontiguousarray(volume, dtype=np.float32)})
        return Encoding(outputs[LATENT], outputs.get(COARSE_LOGITS))

    def decoder(self, latent: np.ndarray) -> DecoderRun:
        """The decoder graph with ``latent`` bound once (GPU backends copy it to the device once)."""
        run = self.decoder_backend.bind({LATENT: np.ascontiguousarray(latent, dtype=np.float32)})

        def logits(feed: Mapping[str, np.ndarray]) -> np.ndarray:
            return run(feed)[LOGITS]

        return logits

    # --------------------------------------------------------------------------- facts

    @property
    def device(self) -> str:
        """Where the decoder runs: ``cpu``, ``openvino``, ``cuda:N`` or ``trt:N``."""
        return self.decoder_backend.device

    @property
    def max_queries_limit(self) -> int | None:
        """Most queries one decoder call may carry (a TensorRT profile's maximum), or None."""
        return self.decoder_backend.max_queries_limit

    def close(self) -> None:
        """Release both graphs."""
        self.encoder.close()
        self.decoder_backend.close()


def _open_backends(files: ModelFiles, request: DeviceRequest, threads: int | None, *,
                   precision: str = "fp32") -> tuple[Backend, Backend]:
    """Create the encoder and decoder backends for a device request.

    ``auto`` on a CPU runs the fp32 decoder in OpenVINO when it is installed (it fuses the
    decoder's elementwise chains: about 1.5x the queries per second of ONNX Runtime's CPU
    provider, docs/benchmarks.md), else in ONNX Runtime; ``cpu`` is always ONNX Runtime.
    """
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
    if request.kind == "auto" and encoder.plan.kind == "cpu" and precision == "fp32":
        decoder_ov = _auto_openvino_decoder(files.decoder, threads)
        if decoder_ov is not None:
            return encoder, decoder_ov
    decoder = OrtBackend(files.decoder, device=encoder.plan, threads=threads)
    return encoder, decoder


def _auto_openvino_decoder(path: Path, threads: int | None) -> Backend | None:
    """``auto`` on a CPU: the decoder in OpenVINO when it can run there, else None (ONNX Runtime).

    openvino is a core dependency where it ships wheels (docs/design.md#packages-and-dependencies);
    elsewhere it is missing and ``auto`` quietly keeps ONNX Runtime. A graph OpenVINO cannot read
    (ONNX Runtime can, it read the encoder) costs one warning, not the run.
    """
    from ossnet_deploy.backends.openvino import OpenVinoBackend

    try:
        return OpenVinoBackend(path, threads=threads)
    except DependencyError:
        return None
    except ModelFormatError as exc:
        warn_once(f"device 'auto' runs the decoder in ONNX Runtime: {exc}")
        return None
