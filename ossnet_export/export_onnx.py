"""Export one OSS-Net checkpoint as a verified, self-describing ``encoder.onnx`` + ``decoder.onnx``.

Output folder (default: beside the checkpoint, named after it: ``models/run.pt`` ->
``models/run/``) holding

* ``encoder.onnx``: ``volume (1, C, Dg, Hg, Wg) -> latent (1, K, L)[, coarse_logits]``, static;
* ``decoder.onnx``: ``coords, patches, latent -> logits (num_queries, 1)``, ``num_queries``
  symbolic;
* ``decoder.fp16.onnx`` with ``--fp16`` (only if it passes its gate, see :mod:`.fp16`);
* TensorRT EP-context models and their ``.engine.json`` with ``--trt`` (see :mod:`.trt`).

Steps: validate the checkpoint; export both graphs with the dynamo exporter
(``torch.onnx.export(dynamo=True)``, opset 20, ``dynamic_shapes`` with ``torch.export.Dim``);
check that the query axis is a named symbolic dimension on every decoder input and output,
run two query counts through ONNX Runtime, ``onnx.checker.check_model(full_check=True)``;
verify against PyTorch on a phantom (:mod:`.verify`); write the metadata
(:class:`ossnet_deploy.metadata.GraphMetadata`, including the measured parity). Everything is
built in a hidden folder beside the destination and renamed into place at the end, so a failure
anywhere leaves no partial output (``ossnet_deploy.atomic.atomic_directory``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ossnet_deploy.atomic import atomic_directory
from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_deploy.label_codes import known_codes_metadata
from ossnet_deploy.metadata import (
    FORMAT_VERSION,
    LATENT,
    NUM_QUERIES,
    PRODUCER_NAME,
    ROLE_DECODER,
    ROLE_ENCODER,
    GraphMetadata,
    IOSpec,
    SchedulerFacts,
)
from ossnet_deploy.model import DECODER_FILE, DECODER_FP16_FILE, ENCODER_FILE
from ossnet_deploy.onnx_metadata import sha256_file
from ossnet_deploy.preprocess import PreprocessConfig
from ossnet_export.graphs import GraphSpec, example_inputs, graph_specs
from ossnet_export.verify import (
    FP32_ATOL,
    FP32_RTOL,
    ParityError,
    ParityReport,
    cpu_session,
    decoder_feed,
    decoder_sensitivity,
    make_case,
    stored_volume,
    torch_reference,
    verify_pair,
)
from ossnet_train.config import ARCHITECTURE, ModelConfig

__all__ = [
    "DECODER_FILE",
    "DECODER_FP16_FILE",
    "DEFAULT_OPSET",
    "DEMO_PAIR_BUDGET_BYTES",
    "ENCODER_FILE",
    "ExportOptions",
    "ExportResult",
    "LoadedCheckpoint",
    "check_query_axis",
    "default_output_dir",
    "export_checkpoint",
    "export_model",
    "graph_metadata",
    "load_checkpoint",
    "pair_id",
    "run_query_counts",
    "verify_export",
]

DEFAULT_OPSET = 20
#: The demo preset's size budget for an exported C pair: 16 MB (docs/design.md#presets).
DEMO_PAIR_BUDGET_BYTES = 16_000_000
#: Node metadata kept in written graphs: the module scope, which the fp16 conversion needs.
_KEPT_NODE_PROPS = frozenset({"namespace"})
_DEFAULT_LABELS = {"1": "foreground"}
_LOW_SENSITIVITY_FACTOR = 100.0


# ----------------------------------------------------------------------------------------
# Options and results


@dataclass(frozen=True)
class ExportOptions:
    """How to export (plain values).

    Attributes:
        opset: ONNX opset (the dynamo exporter implements 18..23; 20 is the default).
        verify: compare with PyTorch on a phantom (False skips only that comparison; the
            structural checks and the fp16 gate always run).
        fp16: also write ``decoder.fp16.onnx`` if it passes its gate.
        reference_volume: a real volume for the verification and the fp16 gate, or None for
            the phantom.
        overwrite: replace an existing output folder.
        query_counts: two different decoder query counts for verification.
        trace_queries: the query count of the tracing example (differs from both above).
        rtol: relative tolerance of the fp32 parity check.
        atol: absolute tolerance of the fp32 parity check.
        seed: seed of the phantom texture and the query sampling.
        dice_box: side (voxels) of the box densely decoded for the fp16 Dice.
    """

    opset: int = DEFAULT_OPSET
    verify: bool = True
    fp16: bool = False
    reference_volume: str | None = None
    overwrite: bool = False
    query_counts: tuple[int, int] = (61, 389)
    trace_queries: int = 13
    rtol: float = FP32_RTOL
    atol: float = FP32_ATOL
    seed: int = 0
    dice_box: int = 24

    def __post_init__(self) -> None:
        counts = tuple(int(n) for n in self.query_counts)
        if len(counts) != 2 or counts[0] == counts[1] or min(counts) < 8 or self.trace_queries in counts:
            raise ValueError(
                f"query_counts must be two different counts >= 8, both unlike trace_queries={self.trace_queries}; "
                f"got {self.query_counts}"
            )
        if not 18 <= self.opset <= 23:
            raise ValueError(f"opset must be in 18..23 (the dynamo exporter's range), got {self.opset}")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and measured.

    Attributes:
        directory: the output folder.
        files: file name -> size in bytes, for every file written.
        metadata: role -> the metadata written into that graph.
        parity: fp32 verification against PyTorch, or None with ``verify=False``.
        fp16: the fp16 gate's report, or None without ``--fp16``.
        fp16_refused: why ``decoder.fp16.onnx`` was not written, or None.
        sensitivity: decoder input -> largest logit change when it is perturbed.
        seconds: step -> wall time in seconds.
        warnings: things the user should know (weak verification, size budget, skipped checks).
    """

    directory: Path
    files: dict[str, int]
    metadata: dict[str, GraphMetadata]
    parity: ParityReport | None
    fp16: ParityReport | None
    fp16_refused: str | None
    sensitivity: dict[str, float]
    seconds: dict[str, float]
    warnings: tuple[str, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint ready to export.

    Attributes:
        path: the checkpoint file.
        model: the OSS-Net with its weights, eval mode, CPU, float32.
        preprocess: its preprocessing.
        labels: label value -> name (``{"1": "foreground"}`` unless the checkpoint says).
        domain: what the training inputs looked like (``provenance["domain"]``), or None.
        sha256: sha256 of the checkpoint file.
    """

    path: Path
    model: nn.Module
    preprocess: PreprocessConfig
    labels: dict[str, str]
    domain: dict[str, Any] | None
    sha256: str


def _labels(provenance: Mapping[str, Any]) -> dict[str, str]:
    """Label names for the metadata: ``provenance["labels"]`` if the checkpoint has them, else
    ``{"1": <training target>}`` (``provenance["training"]["train_config"]["target"]``), else
    ``{"1": "foreground"}``."""
    labels = provenance.get("labels")
    if isinstance(labels, Mapping) and labels:
        return {str(k): str(v) for k, v in labels.items()}
    training = provenance.get("training")
    train_config = training.get("train_config") if isinstance(training, Mapping) else None
    target = train_config.get("target") if isinstance(train_config, Mapping) else None
    if isinstance(target, str) and target:
        return {"1": target}
    return dict(_DEFAULT_LABELS)


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Load a checkpoint for export (``ossnet_train.checkpoint.load_model``) and check it can export.

    Raises:
        ModelFormatError: missing, truncated or foreign file, unknown checkpoint format
            version, weights that do not fit (all from ``ossnet_train.checkpoint``), a model that
            is not an OSS-Net (e.g. a U-Net baseline), or a preprocessing that does not fit it.
    """
    from ossnet_train import checkpoint as ckpt

    source = Path(path)
    model, stored = ckpt.load_model(source)
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig) or config.architecture != ARCHITECTURE:
        raise ModelFormatError(
            describe(source, "this model cannot be exported as an encoder/decoder pair",
                     expected="an OSS-Net checkpoint (variant O-Net, A, B, C or D)",
                     found=f"architecture {getattr(config, 'architecture', None)!r}",
                     fix="U-Net baselines are dense models without a query decoder; export an OSS-Net checkpoint")
        )
    try:
        preprocess = PreprocessConfig.from_dict(stored.preprocess)
    except ValueError as exc:
        raise ModelFormatError(
            describe(source, "the checkpoint's preprocessing is invalid", found=str(exc),
                     fix="re-save the checkpoint with ossnet_train.checkpoint.save_checkpoint")
        ) from None
    check_exportable(config, preprocess, source)
    model.float().eval()
    domain = stored.provenance.get("domain")
    return LoadedCheckpoint(source, model, preprocess, _labels(stored.provenance),
                            domain if isinstance(domain, dict) else None, sha256_file(source))


def check_exportable(config: ModelConfig, preprocess: PreprocessConfig, source: str | os.PathLike[str] | None) -> None:
    """Refuse a model whose preprocessing does not produce its graph inputs.

    Raises:
        ModelFormatError: grid, channel count, patch mode or pooling disagree.
    """
    problems = []
    if tuple(preprocess.shape) != tuple(config.grid_shape):
        problems.append(f"preprocess grid {tuple(preprocess.shape)} vs model grid {config.grid_shape} (2 x global)")
    if preprocess.global_downsample != 2:
        problems.append(f"global_downsample {preprocess.global_downsample} (the model's global volume is grid / 2)")
    if len(preprocess.channels) != config.in_channels:
        problems.append(f"{len(preprocess.channels)} preprocess channels vs {config.in_channels} model channels")
    if preprocess.large_patches != config.large_patches:
        problems.append(f"large_patches={preprocess.large_patches} vs patch_mode {config.patch_mode!r}")
    if config.uses_patches and preprocess.patch_size != 7:
        problems.append(f"patch_size {preprocess.patch_size} (the patch encoder takes 7^3)")
    if problems:
        raise ModelFormatError(
            describe(source, "model and preprocessing do not fit together", found="; ".join(problems),
                     fix="re-save the checkpoint with the preprocessing it was trained with")
        )


def pair_id(model: nn.Module) -> str:
    """The pair id of a model: ``ossnet_train.checkpoint.weights_sha256`` of its state dict.

    sha256 over every entry in sorted name order (name, dtype, shape, raw bytes): independent
    of pickling and dict order, and equal to the id of the checkpoint the weights came from.
    Buffers (normalisation statistics) count; they change the outputs.
    """
    from ossnet_train.checkpoint import weights_sha256

    return weights_sha256(model.state_dict())


def default_output_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """``<checkpoint dir>/<checkpoint stem>/`` (``models/run.pt`` -> ``models/run/``)."""
    path = Path(checkpoint)
    return path.with_name(path.stem)


# ----------------------------------------------------------------------------------------
# Export of one graph


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and log lines (torchvision absence, deprecations)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_graph(spec: GraphSpec, opset: int, trace_queries: int) -> onnx.ModelProto:
    """Dynamo-export one wrapper; returns the in-memory ModelProto (initializers embedded)."""
    args = example_inputs(spec.io, trace_queries)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            spec.module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(spec.io.input_names),
            output_names=list(spec.io.output_names),
            dynamic_shapes=spec.dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key in _KEPT_NODE_PROPS]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def _value_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        elif dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            dims.append(None)
    return dims


def check_query_axis(model: onnx.ModelProto, io: IOSpec, path: str | os.PathLike[str] | None) -> None:
    """Check the graph's IO against ``io``: names in order, static sizes, ``num_queries`` symbolic.

    A query axis that came out static or unnamed is renamed only if it is symbolic; a static one
    (the silent ``dynamic_axes`` failure) is refused.

    Raises:
        ModelFormatError: names, ranks or static sizes differ, or the query axis is static.
    """
    problems = []
    for kind, values, specs in (("input", model.graph.input, io.inputs), ("output", model.graph.output, io.outputs)):
        names = [v.name for v in values]
        if names != [s.name for s in specs]:
            problems.append(f"{kind}s are {names}, expected {[s.name for s in specs]}")
            continue
        for value, spec in zip(values, specs, strict=True):
            dims = _value_dims(value)
            if len(dims) != len(spec.shape):
                problems.append(f"{kind} {spec.name} has rank {len(dims)}, expected {len(spec.shape)}")
                continue
            for axis, (have, want) in enumerate(zip(dims, spec.shape, strict=True)):
                if want == NUM_QUERIES:
                    if not isinstance(have, str):
                        problems.append(f"{kind} {spec.name} axis {axis} is static ({have}), expected symbolic {NUM_QUERIES!r}")
                    elif have != NUM_QUERIES:
                        value.type.tensor_type.shape.dim[axis].dim_param = NUM_QUERIES
                elif have != want:
                    problems.append(f"{kind} {spec.name} axis {axis} is {have!r}, expected {want}")
    if problems:
        raise ModelFormatError(
            describe(path, "the exported graph does not have the contract's inputs and outputs",
                     found="; ".join(problems),
                     fix="this is an exporter problem; report it with the torch and onnxscript versions")
        )


def run_query_counts(path: str | os.PathLike[str], io: IOSpec, counts: tuple[int, ...], *, seed: int = 0) -> None:
    """Run the decoder at each query count in ONNX Runtime; outputs must be ``(n, 1)`` and finite.

    Raises:
        ModelFormatError: ONNX Runtime refuses a count (a silently static axis) or the output
            has the wrong shape or non-finite values.
    """
    session = cpu_session(path)
    for n in counts:
        feed = {spec.name: t.numpy() for spec, t in zip(io.inputs, example_inputs(io, n, seed=seed), strict=True)}
        try:
            (logits,) = session.run(None, feed)
        except Exception as exc:
            raise ModelFormatError(
                describe(path, f"ONNX Runtime cannot run the decoder with {n} queries",
                         found=str(exc).splitlines()[0], fix="the query axis came out static; report it")
            ) from None
        if logits.shape != (n, 1) or not np.isfinite(logits).all():
            raise ModelFormatError(
                describe(path, f"the decoder's output for {n} queries is wrong",
                         expected=f"finite ({n}, 1)", found=f"{logits.shape}, finite={bool(np.isfinite(logits).all())}",
                         fix="report it with the checkpoint")
            )


def _check_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelFormatError(
            describe(path, "onnx.checker refuses the exported graph", found=str(exc).splitlines()[0],
                     fix="report it with the torch, onnx and onnxscript versions")
        ) from None


# ----------------------------------------------------------------------------------------
# Metadata


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", os.fspath(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _provenance(opset: int, checkpoint: Path | None, checkpoint_sha: str | None) -> dict[str, Any]:
    return {
        "checkpoint": None if checkpoint is None else checkpoint.name,
        "checkpoint_sha256": checkpoint_sha,
        "git_commit": _git_commit(),
        "ossnet": _version("ossnet"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": _version("onnxscript"),
        "onnxruntime": _version("onnxruntime"),
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
    }


def graph_metadata(
    role: str,
    io: IOSpec,
    config: ModelConfig,
    preprocess: PreprocessConfig,
    *,
    weights_id: str,
    labels: Mapping[str, str],
    parity: dict[str, Any],
    provenance: dict[str, Any],
    domain: Mapping[str, Any] | None = None,
) -> GraphMetadata:
    """The metadata of one graph (docs/design.md#model-files-and-metadata); ``weights_id`` is :func:`pair_id`."""
    return GraphMetadata(
        format_version=FORMAT_VERSION,
        role=role,
        pair_id=weights_id,
        variant=config.variant,
        preset=config.preset,
        model_config=config.to_dict(),
        preprocess=preprocess.to_dict(),
        labels=dict(labels),
        io=io,
        scheduler=SchedulerFacts(
            has_coarse_seg=config.has_coarse,
            grid_shape=tuple(preprocess.shape),
            coarse_shape=tuple(config.latent_shape) if config.has_coarse else None,
            threshold_logit=0.0,
        ),
        parity=parity,
        provenance=provenance,
        # Only the encoder carries the training domain (the runtime reads it from there).
        domain=dict(domain) if domain is not None and role == ROLE_ENCODER else None,
        # Coded label meanings for DICOM SEG (docs/design.md#dicom); omitted when no name is known.
        label_codes=known_codes_metadata(labels),
    )


def _stamp(model: onnx.ModelProto, metadata: GraphMetadata) -> None:
    """Write ``metadata`` into ``model`` (replacing earlier ossnet props), producer and version."""
    others = {p.key: p.value for p in model.metadata_props if not p.key.startswith("ossnet.")}
    onnx.helper.set_model_props(model, {**others, **metadata.to_props()})
    model.producer_name = PRODUCER_NAME
    model.producer_version = _version("ossnet")
    model.model_version = metadata.format_version
    model.doc_string = (
        f"OSS-Net {metadata.variant} {metadata.role} ({metadata.preset}); inputs/outputs per ossnet contracts "
        "section 5, metadata in ossnet.* props"
    )


def _save(model: onnx.ModelProto, path: Path) -> int:
    """Save as one file (no external data) and return its size in bytes."""
    onnx.save_model(model, os.fspath(path), save_as_external_data=False)
    return path.stat().st_size


# ----------------------------------------------------------------------------------------
# The export


Progress = Callable[[str], None]


def export_model(
    model: nn.Module,
    preprocess: PreprocessConfig,
    destination: str | os.PathLike[str],
    *,
    options: ExportOptions | None = None,
    labels: Mapping[str, str] | None = None,
    checkpoint: Path | None = None,
    checkpoint_sha256: str | None = None,
    progress: Progress | None = None,
    domain: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export, verify and describe ``model`` into the folder ``destination`` (atomically).

    Args:
        model: an OSS-Net (``ossnet_train.model.OSSNet``); moved to the CPU in float32, eval mode.
        preprocess: its preprocessing (recorded; builds the verification inputs).
        destination: the output folder; refused if it exists unless ``options.overwrite``.
        options: see :class:`ExportOptions`.
        labels: label value -> name for the metadata (default ``{"1": "foreground"}``).
        checkpoint: the source checkpoint file (provenance), if any.
        checkpoint_sha256: its sha256 (provenance), if any.
        progress: called with a short line before each step.

    Raises:
        OutputExistsError: ``destination`` exists and ``overwrite`` is False.
        ModelFormatError: the model cannot be exported, or a structural check fails.
        ParityError: verification failed (the message names the largest deviation); nothing is
            written.
    """
    opts = options or ExportOptions()
    say = progress or (lambda _line: None)
    config: ModelConfig = model.config
    check_exportable(config, preprocess, checkpoint)
    model.cpu().float().eval()
    out = Path(destination)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    started = time.perf_counter()
    weights_id = pair_id(model)
    provenance = _provenance(opts.opset, checkpoint, checkpoint_sha256)
    encoder_spec, decoder_spec = graph_specs(model)
    volume = stored_volume(opts.reference_volume, preprocess) if opts.reference_volume else None
    with atomic_directory(out, overwrite=opts.overwrite) as tmp:
        protos: dict[str, onnx.ModelProto] = {}
        paths = {ROLE_ENCODER: tmp / ENCODER_FILE, ROLE_DECODER: tmp / DECODER_FILE}
        for spec in (encoder_spec, decoder_spec):
            say(f"exporting the {spec.role} (opset {opts.opset}, dynamo)")
            t0 = time.perf_counter()
            proto = _export_graph(spec, opts.opset, opts.trace_queries)
            check_query_axis(proto, spec.io, out / paths[spec.role].name)
            _check_model(proto, out / paths[spec.role].name)
            _save(proto, paths[spec.role])
            protos[spec.role] = proto
            seconds[f"export_{spec.role}"] = time.perf_counter() - t0
        run_query_counts(paths[ROLE_DECODER], decoder_spec.io, opts.query_counts, seed=opts.seed)

        parity_report: ParityReport | None = None
        sensitivity: dict[str, float] = {}
        case = None
        if opts.verify or opts.fp16:
            case = make_case(preprocess, opts.query_counts, seed=opts.seed, volume=volume)
        if opts.verify:
            say(f"verifying against PyTorch on the {case.reference} at {list(opts.query_counts)} queries")
            t0 = time.perf_counter()
            reference = torch_reference(model, case, preprocess)
            parity_report = verify_pair(paths[ROLE_ENCODER], paths[ROLE_DECODER], model, preprocess, case,
                                        rtol=opts.rtol, atol=opts.atol, reference=reference)
            parity_report.raise_if_failed(out, "the export")
            feed = decoder_feed(case.prepared, case.queries[0], config, preprocess, reference[0][LATENT])
            sensitivity = decoder_sensitivity(model, feed, seed=opts.seed)
            seconds["verify"] = time.perf_counter() - t0
            floor = _LOW_SENSITIVITY_FACTOR * (opts.atol + opts.rtol)
            weak = sorted(name for name, change in sensitivity.items() if change < floor)
            if weak:
                notes.append(
                    f"the decoder's logits hardly depend on {', '.join(weak)} (largest change < {floor:g}); "
                    "an untrained checkpoint? the parity check says little about those inputs"
                )
            parity = {"fp32": parity_report.to_dict(), "sensitivity": sensitivity}
        else:
            notes.append(
                "--no-verify: the graphs were NOT compared with PyTorch; only the ONNX checker, the symbolic "
                "query axis and two ONNX Runtime query counts were checked"
            )
            parity = {"fp32": None, "skipped": "export ran with --no-verify"}

        metadata = {}
        files: dict[str, int] = {}
        for spec in (encoder_spec, decoder_spec):
            meta = graph_metadata(spec.role, spec.io, config, preprocess, weights_id=weights_id,
                                  labels=labels or _DEFAULT_LABELS, parity=parity, provenance=provenance,
                                  domain=domain)
            _stamp(protos[spec.role], meta)
            files[paths[spec.role].name] = _save(protos[spec.role], paths[spec.role])
            metadata[spec.role] = meta

        fp16_report: ParityReport | None = None
        fp16_refused: str | None = None
        if opts.fp16:
            say("converting the decoder to fp16 and gating it against fp32")
            t0 = time.perf_counter()
            fp16_report, fp16_refused, size = _write_fp16(
                protos[ROLE_DECODER], tmp / DECODER_FP16_FILE, out / DECODER_FP16_FILE, paths, case, config,
                preprocess, metadata, parity, opts,
            )
            if size is not None:
                files[DECODER_FP16_FILE] = size
            seconds["fp16"] = time.perf_counter() - t0

        pair_bytes = files[ENCODER_FILE] + files[DECODER_FILE]
        if config.preset == "demo" and config.has_coarse and pair_bytes > DEMO_PAIR_BUDGET_BYTES:
            notes.append(f"the demo C pair is {pair_bytes / 1e6:.1f} MB, above the 16 MB budget")
        say(f"moving into place: {out}")
    seconds["total"] = time.perf_counter() - started
    return ExportResult(out, files, metadata, parity_report, fp16_report, fp16_refused, sensitivity, seconds,
                        tuple(notes))


def _write_fp16(
    fp32: onnx.ModelProto,
    path: Path,
    final_path: Path,
    paths: Mapping[str, Path],
    case: Any,
    config: ModelConfig,
    preprocess: PreprocessConfig,
    metadata: Mapping[str, GraphMetadata],
    parity: dict[str, Any],
    opts: ExportOptions,
) -> tuple[ParityReport | None, str | None, int | None]:
    """Convert, gate and (if it passes) stamp and keep ``decoder.fp16.onnx``; returns
    (gate report, refusal message or None, size or None)."""
    from ossnet_export.fp16 import check_gate, convert_decoder, fp16_gate

    half = convert_decoder(fp32)
    _check_model(half, final_path)
    _save(half, path)
    report = fp16_gate(paths[ROLE_ENCODER], paths[ROLE_DECODER], path, case, config, preprocess,
                       dice_box=opts.dice_box)
    try:
        check_gate(report, final_path)
    except ParityError as exc:
        path.unlink()
        return report, str(exc), None
    base = metadata[ROLE_DECODER]
    stamped = dataclasses.replace(base, parity={**parity, "fp16": report.to_dict()})
    _stamp(half, stamped)
    return report, None, _save(half, path)


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    destination: str | os.PathLike[str] | None = None,
    *,
    options: ExportOptions | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Load ``checkpoint`` and :func:`export_model` it (default folder: :func:`default_output_dir`)."""
    loaded = load_checkpoint(checkpoint)
    out = Path(destination) if destination is not None else default_output_dir(loaded.path)
    return export_model(loaded.model, loaded.preprocess, out, options=options, labels=loaded.labels,
                        checkpoint=loaded.path, checkpoint_sha256=loaded.sha256, progress=progress,
                        domain=loaded.domain)


# ----------------------------------------------------------------------------------------
# Verifying a folder already written


def verify_export(
    directory: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    options: ExportOptions | None = None,
) -> dict[str, ParityReport]:
    """Re-run the comparison on graphs already written (a pipeline's acceptance check).

    Checks the pair's metadata (``check_pair``), that it was exported from ``checkpoint``
    (``pair_id``, model config, preprocessing), then fp32 parity with PyTorch and, if
    ``decoder.fp16.onnx`` is there, its gate.

    Returns:
        ``{"fp32": report[, "fp16": report]}``.

    Raises:
        ModelFormatError: missing files, a mismatched pair, graphs from another checkpoint.
        ParityError: a deviation beyond tolerance (the message names tensor, index and values).
    """
    from ossnet_deploy.metadata import check_pair
    from ossnet_deploy.onnx_metadata import read_graph_metadata
    from ossnet_export.fp16 import check_gate, fp16_gate

    opts = options or ExportOptions()
    folder = Path(directory)
    encoder_path, decoder_path = folder / ENCODER_FILE, folder / DECODER_FILE
    encoder_meta = read_graph_metadata(encoder_path)
    decoder_meta = read_graph_metadata(decoder_path)
    check_pair(encoder_meta, decoder_meta, encoder_path, decoder_path)
    loaded = load_checkpoint(checkpoint)
    config: ModelConfig = loaded.model.config
    found = []
    if encoder_meta.pair_id != pair_id(loaded.model):
        found.append("the weights differ (pair_id)")
    if encoder_meta.model_config != config.to_dict():
        found.append("the model config differs")
    if encoder_meta.preprocess != loaded.preprocess.to_dict():
        found.append("the preprocessing differs")
    if found:
        raise ModelFormatError(
            describe(folder, "the graphs were not exported from this checkpoint",
                     expected=f"graphs exported from {loaded.path}", found="; ".join(found),
                     fix=f"pass the checkpoint they came from, or re-export: ossnet-export {loaded.path} -o {folder} --overwrite")
        )
    volume = stored_volume(opts.reference_volume, loaded.preprocess) if opts.reference_volume else None
    case = make_case(loaded.preprocess, opts.query_counts, seed=opts.seed, volume=volume)
    reports = {"fp32": verify_pair(encoder_path, decoder_path, loaded.model, loaded.preprocess, case,
                                   rtol=opts.rtol, atol=opts.atol)}
    reports["fp32"].raise_if_failed(folder, "verification")
    fp16_path = folder / DECODER_FP16_FILE
    if fp16_path.is_file():
        reports["fp16"] = fp16_gate(encoder_path, decoder_path, fp16_path, case, config, loaded.preprocess,
                                    dice_box=opts.dice_box)
        check_gate(reports["fp16"], fp16_path)
    return reports
