"""TensorRT engines ahead of time, through ONNX Runtime's TensorRT execution provider.

Route (docs/export.md#tensorrt---trt): an ONNX Runtime session with the TensorRT EP, explicit
optimisation profiles, engine and timing caches, and ``trt_dump_ep_context_model`` builds the
engine once here and writes an *EP-context model* ``<graph>_ctx.onnx`` (the serialised engine
embedded in one ONNX node, ``trt_ep_context_embed_mode=1``) that the runtime loads without
ever running the TensorRT builder. Beside it goes ``<graph>_ctx.engine.json``
(:class:`ossnet_deploy.backends.trt_engine.EngineInfo`): the graph's metadata plus the TensorRT version,
the GPU compute capability and the source ONNX sha256, so the runtime refuses an engine built
for another setup (plans are not portable).

Precision: TensorRT 11 has no FP16 builder flag (strongly typed networks only), so this module
never sets ``trt_fp16_enable``; an fp16 engine is built from ``decoder.fp16.onnx`` (``--fp16``).

Everything that decides *what* is built (provider options, profile strings, cache keys, side
files, the missing-dependency message) is plain Python and unit-tested without a GPU;
:func:`build_engine` is the only function that needs one. ``tensorrt`` is imported lazily and
only for its version string. This path has not yet been run on hardware (docs/export.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ossnet_deploy import gpu_versions
from ossnet_deploy.atomic import temporary_sibling
from ossnet_deploy.backends.trt_engine import (
    EngineInfo,
    check_engine,
    engine_json_path,
    read_engine_info,
    write_engine_info,
)
from ossnet_deploy.errors import DependencyError, InputError, ModelFormatError, OutputExistsError, describe
from ossnet_deploy.gpu_versions import InstalledTensorrt, ProviderNeeds
from ossnet_deploy.metadata import NUM_QUERIES, GraphMetadata, IOSpec
from ossnet_deploy.model import DECODER_FILE, DECODER_FP16_FILE, ENCODER_FILE
from ossnet_deploy.onnx_metadata import read_graph_metadata, sha256_file
from ossnet_export.verify import compare

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "TRT_INSTALL_COMMAND",
    "TRT_PROVIDER",
    "TRT_RTOL_ATOL",
    "EngineBuild",
    "QueryProfile",
    "TrtEnvironment",
    "build_engine",
    "build_folder_engines",
    "cache_key",
    "context_model_path",
    "detect_environment",
    "engine_info",
    "engine_paths",
    "profile_feeds",
    "profile_shapes",
    "profile_string",
    "provider_options",
    "require_environment",
    "verify_engine_side_file",
]

TRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: The install command the ``--trt`` refusal gives on a machine without onnxruntime-gpu
#: (onnxruntime and onnxruntime-gpu both own the ``onnxruntime`` module, so the CPU build goes
#: first): the recommended onnxruntime-gpu and the TensorRT major its provider library links
#: against, from NVIDIA's index (docs/design.md#gpu-runtime-versions).
TRT_INSTALL_COMMAND = gpu_versions.TRT_INSTALL_COMMAND
#: Engine vs ONNX Runtime CPU gate (MONAI's convert_to_trt uses rtol 1e-2; TF32 convolutions
#: alone move fp32 results by ~1e-3).
TRT_RTOL_ATOL = 1e-2
_CACHE_KEY_VERSION = 1


# ----------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class QueryProfile:
    """The decoder's optimisation profile on the ``num_queries`` axis.

    Attributes:
        min_queries: the fewest queries one call may carry (>= 1).
        opt_queries: the count TensorRT tunes its kernels for (the runtime's usual chunk).
        max_queries: the most queries one call may carry; the runtime's ``max_queries``
            must not exceed it (the scheduler's default chunk is 32768).
    """

    min_queries: int = 1
    opt_queries: int = 16384
    max_queries: int = 32768

    def __post_init__(self) -> None:
        values = (self.min_queries, self.opt_queries, self.max_queries)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values) or not (
            1 <= self.min_queries <= self.opt_queries <= self.max_queries
        ):
            raise InputError(
                describe(
                    None,
                    "invalid TensorRT query profile",
                    expected="integers with 1 <= min_queries <= opt_queries <= max_queries",
                    found=f"min {self.min_queries}, opt {self.opt_queries}, max {self.max_queries}",
                    fix="pass e.g. --min-queries 1 --opt-queries 16384 --max-queries 32768",
                )
            )

    def as_tuple(self) -> tuple[int, int, int]:
        """``(min, opt, max)``."""
        return (self.min_queries, self.opt_queries, self.max_queries)


ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def profile_shapes(io: IOSpec, profile: QueryProfile) -> dict[str, ProfileShapes]:
    """Min/opt/max shape of every input: ``num_queries`` replaced by the profile's counts.

    Static inputs get the same shape three times. Any other symbolic dimension is refused: the
    graphs of the contract have exactly one (``num_queries``).

    Raises:
        ModelFormatError: an input with a symbolic dimension other than ``num_queries``.
    """
    shapes: dict[str, ProfileShapes] = {}
    for spec in io.inputs:
        triple = []
        for count in profile.as_tuple():
            dims = []
            for dim in spec.shape:
                if isinstance(dim, int):
                    dims.append(dim)
                elif dim == NUM_QUERIES:
                    dims.append(count)
                else:
                    raise ModelFormatError(
                        describe(
                            None,
                            f"input {spec.name!r} has an unknown dynamic dimension",
                            expected=f"static sizes or {NUM_QUERIES!r}",
                            found=f"shape {list(spec.shape)}",
                            fix="re-export the graphs with `ossnet-export CHECKPOINT`",
                        )
                    )
            triple.append(tuple(dims))
        shapes[spec.name] = (triple[0], triple[1], triple[2])
    return shapes


def profile_string(shapes: Mapping[str, ProfileShapes], which: int) -> str:
    """The TensorRT EP's profile syntax for one end (0 min, 1 opt, 2 max) of the profile.

    Example: ``"coords:1x3,patches:1x4x7x7x7,latent:1x6x320"`` (inputs in graph order).
    """
    if which not in (0, 1, 2):
        raise ValueError(f"which must be 0 (min), 1 (opt) or 2 (max), got {which}")
    return ",".join(f"{name}:{'x'.join(str(d) for d in triple[which])}" for name, triple in shapes.items())


def _is_dynamic(shapes: Mapping[str, ProfileShapes]) -> bool:
    return any(triple[0] != triple[2] for triple in shapes.values())


# ----------------------------------------------------------------------------------------
# Environment


@dataclass(frozen=True)
class TrtEnvironment:
    """What this machine offers for building engines.

    Attributes:
        providers: ONNX Runtime's available execution providers.
        tensorrt_version: installed ``tensorrt`` version, or None when it is not installed.
        compute_capability: the GPU's compute capability (``"8.9"``), or None without a GPU.
        device_id: the GPU ordinal the engine is built for.
        provider_needs: the needed-library list of onnxruntime-gpu's TensorRT provider
            (:func:`ossnet_deploy.gpu_versions.installed_provider_needs`); None without one.
        tensorrt_distributions: the installed TensorRT distributions (their CUDA flavour and
            what a fix must uninstall).
    """

    providers: tuple[str, ...]
    tensorrt_version: str | None
    compute_capability: str | None
    device_id: int = 0
    provider_needs: ProviderNeeds | None = None
    tensorrt_distributions: tuple[str, ...] = ()

    @property
    def installed_tensorrt(self) -> InstalledTensorrt | None:
        """The installed TensorRT (None when the package is missing)."""
        if self.tensorrt_version is None:
            return None
        return InstalledTensorrt(self.tensorrt_version, self.tensorrt_distributions)

    def version_mismatch(self) -> str | None:
        """Why the installed TensorRT cannot serve the provider, or None (see ``gpu_versions.tensorrt_mismatch``)."""
        return gpu_versions.tensorrt_mismatch(self.provider_needs, self.installed_tensorrt)

    def missing(self) -> list[str]:
        """Phrases naming each missing or mismatched piece (empty when engines can be built)."""
        found = []
        if TRT_PROVIDER not in self.providers:
            found.append(
                "onnxruntime has no TensorrtExecutionProvider (providers: " + ", ".join(self.providers) + ")"
            )
        if self.tensorrt_version is None:
            found.append("the tensorrt package is not installed")
        mismatch = self.version_mismatch()
        if mismatch is not None:
            found.append(mismatch)
        if self.compute_capability is None:
            found.append(f"no NVIDIA GPU {self.device_id} was found")
        return found

    def install_command(self) -> str:
        """The one command that supplies what :meth:`missing` names (the GPU aside).

        With onnxruntime-gpu installed, only TensorRT is (re)installed, at the major its
        provider library links against, replacing any other installed TensorRT; otherwise
        :data:`TRT_INSTALL_COMMAND` (the recommended onnxruntime-gpu and its TensorRT).
        """
        needs = self.provider_needs
        if TRT_PROVIDER in self.providers and needs is not None and needs.tensorrt_major is not None:
            remove = self.tensorrt_distributions if self.version_mismatch() is not None else ()
            return needs.tensorrt_install_command(remove=remove)
        return TRT_INSTALL_COMMAND


def _tensorrt_version() -> str | None:
    """The installed TensorRT version as the runtime reads it (the strings must compare equal)."""
    from ossnet_deploy.backends.trt import tensorrt_version

    try:
        return tensorrt_version()
    except DependencyError:
        return None


def _compute_capability(device_id: int) -> str | None:
    """The GPU's compute capability as the runtime reads it (CUDA driver), or None without one."""
    from ossnet_deploy.backends.trt import compute_capability

    try:
        return compute_capability(device_id)
    except DependencyError:
        return None


def detect_environment(device_id: int = 0) -> TrtEnvironment:
    """Probe ONNX Runtime's providers, the ``tensorrt`` package and the GPU (cheap, no session)."""
    import onnxruntime as ort

    return TrtEnvironment(
        providers=tuple(ort.get_available_providers()),
        tensorrt_version=_tensorrt_version(),
        compute_capability=_compute_capability(device_id),
        device_id=device_id,
        provider_needs=gpu_versions.installed_provider_needs(),
        tensorrt_distributions=gpu_versions.tensorrt_distributions(),
    )


def require_environment(env: TrtEnvironment) -> None:
    """Refuse to build engines on a machine that cannot, in ONE message with the install command.

    A TensorRT of another major than onnxruntime-gpu's TensorRT provider links against counts
    as missing (the provider cannot load it; docs/design.md#gpu-runtime-versions).

    Raises:
        DependencyError: naming every missing piece and :meth:`TrtEnvironment.install_command`.
    """
    missing = env.missing()
    if missing:
        raise DependencyError(
            describe(
                None,
                "--trt cannot build TensorRT engines on this machine; the ONNX graphs were written "
                "and verified, no engine was built",
                expected="onnxruntime-gpu with the TensorRT execution provider, the TensorRT its provider "
                "library links against and an NVIDIA GPU",
                found="; ".join(missing),
                fix=f"on a machine with an NVIDIA GPU run `{env.install_command()}`, then re-run with --trt",
            )
        )


# ----------------------------------------------------------------------------------------
# Cache keys, provider options, file names


def cache_key(
    *,
    role: str,
    onnx_sha256: str,
    tensorrt_version: str,
    compute_capability: str,
    shapes: Mapping[str, ProfileShapes],
) -> str:
    """Engine-cache prefix: ``ossnet_<role>_<16 hex>`` over everything an engine is tied to.

    The digest covers the source ONNX bytes (their sha256), the TensorRT version, the GPU
    compute capability and the profile, so a cache written for any other combination is never
    picked up (ONNX Runtime's own cache names do not include the TensorRT version, microsoft/
    onnxruntime #22139).
    """
    payload = json.dumps(
        {
            "v": _CACHE_KEY_VERSION,
            "onnx": onnx_sha256,
            "trt": tensorrt_version,
            "cc": compute_capability,
            "profile": {name: [list(s) for s in triple] for name, triple in shapes.items()},
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
    safe_role = "".join(ch if ch.isalnum() else "_" for ch in role)
    return f"ossnet_{safe_role}_{digest}"


def context_model_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``decoder.onnx`` -> ``decoder_ctx.onnx``; ``decoder.fp16.onnx`` -> ``decoder.fp16_ctx.onnx``.

    The runtime's rule (``ossnet_deploy.backends.trt.engine_context_path``); the side file is
    :func:`ossnet_deploy.backends.trt_engine.engine_json_path` of it (``decoder_ctx.engine.json``).
    """
    from ossnet_deploy.backends.trt import engine_context_path

    return engine_context_path(onnx_path)


def provider_options(
    *,
    shapes: Mapping[str, ProfileShapes],
    cache_dir: str | os.PathLike[str],
    cache_prefix: str,
    context_path: str | os.PathLike[str] | None,
    device_id: int = 0,
    builder_optimization_level: int = 3,
    max_workspace_bytes: int = 0,
) -> dict[str, str]:
    """TensorRT EP options (all strings, as ONNX Runtime takes them) for one engine build.

    Args:
        shapes: :func:`profile_shapes` of the graph; profile options are set only when some
            input is dynamic (a static graph needs none).
        cache_dir: folder of the engine and timing caches.
        cache_prefix: :func:`cache_key`.
        context_path: where ONNX Runtime writes the EP-context model, or None not to write one
            (e.g. when loading for a parity run).
        device_id: GPU ordinal.
        builder_optimization_level: TensorRT builder level 0-5 (ONNX Runtime's default 3).
        max_workspace_bytes: TensorRT workspace limit; 0 = the EP's default (the device's memory).
    """
    if not 0 <= builder_optimization_level <= 5:
        raise ValueError(f"builder_optimization_level must be 0..5, got {builder_optimization_level}")
    cache = os.fspath(cache_dir)
    options = {
        "device_id": str(device_id),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_engine_cache_prefix": cache_prefix,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        "trt_builder_optimization_level": str(builder_optimization_level),
        # Precision comes from the graph (TensorRT 11 has no FP16 builder flag).
        "trt_fp16_enable": "0",
    }
    if max_workspace_bytes:
        options["trt_max_workspace_size"] = str(int(max_workspace_bytes))
    if _is_dynamic(shapes):
        options["trt_profile_min_shapes"] = profile_string(shapes, 0)
        options["trt_profile_opt_shapes"] = profile_string(shapes, 1)
        options["trt_profile_max_shapes"] = profile_string(shapes, 2)
    if context_path is not None:
        options["trt_dump_ep_context_model"] = "1"
        options["trt_ep_context_file_path"] = os.fspath(context_path)
        # One self-contained file: the engine bytes live inside the context node.
        options["trt_ep_context_embed_mode"] = "1"
    return options


def engine_info(
    metadata: GraphMetadata,
    *,
    env: TrtEnvironment,
    source_onnx_sha256: str,
    shapes: Mapping[str, ProfileShapes],
    precision: str,
    parity: Mapping[str, Any],
) -> EngineInfo:
    """The ``.engine.json`` payload of one engine (docs/design.md#model-files-and-metadata)."""
    if env.tensorrt_version is None or env.compute_capability is None:
        raise ValueError("engine_info needs a TensorRT version and a compute capability (see require_environment)")
    return EngineInfo(
        metadata=metadata,
        tensorrt_version=env.tensorrt_version,
        compute_capability=env.compute_capability,
        source_onnx_sha256=source_onnx_sha256,
        profile_shapes=dict(shapes),
        precision=precision,
        parity=dict(parity),
    )


def verify_engine_side_file(
    context_path: str | os.PathLike[str],
    *,
    source_onnx: str | os.PathLike[str],
    env: TrtEnvironment,
) -> EngineInfo:
    """Read an engine's side file and refuse it unless it matches ``source_onnx`` and ``env``.

    The same check the runtime makes before loading an EP-context model.

    Raises:
        ModelFormatError: a missing or malformed side file, or an engine built from another
            ONNX file, TensorRT version or GPU generation.
    """
    info = read_engine_info(context_path)
    check_engine(
        info,
        onnx_sha256=sha256_file(source_onnx),
        tensorrt_version=env.tensorrt_version or "not installed",
        compute_capability=env.compute_capability or "no GPU",
        path=context_path,
    )
    return info


# ----------------------------------------------------------------------------------------
# Building (needs a GPU)


@dataclass(frozen=True)
class EngineBuild:
    """One engine written by :func:`build_engine`.

    Attributes:
        context_path: the EP-context model (``<graph>_ctx.onnx``).
        side_file: its ``.engine.json``.
        build_seconds: session creation time (engine build) in seconds.
        parity: engine vs ONNX Runtime CPU errors at each profile query count.
    """

    context_path: Path
    side_file: Path
    build_seconds: float
    parity: dict[str, Any]


def profile_feeds(shapes: Mapping[str, ProfileShapes], which: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cut or repeat ``inputs`` along the query axis to one end (0 min, 1 opt, 2 max) of the profile."""
    feed = {}
    for name, triple in shapes.items():
        want = triple[which]
        have = inputs[name]
        if have.shape == want:
            feed[name] = have
        else:
            reps = -(-want[0] // have.shape[0])
            feed[name] = np.ascontiguousarray(np.concatenate([have] * reps, axis=0)[: want[0]])
    return feed


def build_engine(
    onnx_path: str | os.PathLike[str],
    *,
    env: TrtEnvironment,
    profile: QueryProfile,
    inputs: Mapping[str, np.ndarray],
    precision: str,
    cache_dir: str | os.PathLike[str],
    overwrite: bool = False,
    builder_optimization_level: int = 3,
) -> EngineBuild:
    """Build the TensorRT engine of one graph, check it against ONNX Runtime CPU, write it.

    Args:
        onnx_path: a verified ``encoder.onnx`` / ``decoder.onnx`` / ``decoder.fp16.onnx``.
        env: :func:`detect_environment` (must pass :func:`require_environment`).
        profile: the decoder's query profile (ignored for static graphs).
        inputs: input name -> array (the exporter's phantom inputs); the query axis is
            repeated or cut to each profile count.
        precision: ``"fp32"`` or ``"fp16"`` (recorded; the graph decides).
        cache_dir: engine and timing cache folder.
        overwrite: replace an existing context model.
        builder_optimization_level: TensorRT builder level 0-5.

    Returns:
        :class:`EngineBuild`; the context model and its side file are in place (each written
        under a temporary name and renamed).

    Raises:
        DependencyError: see :func:`require_environment`.
        ModelFormatError: the engine disagrees with ONNX Runtime CPU beyond ``TRT_RTOL_ATOL``,
            or ONNX Runtime did not write the context model.
    """
    import onnxruntime as ort

    require_environment(env)
    source = Path(onnx_path)
    metadata = read_graph_metadata(source)
    shapes = profile_shapes(metadata.io, profile)
    source_sha = sha256_file(source)
    prefix = cache_key(
        role=source.stem,
        onnx_sha256=source_sha,
        tensorrt_version=str(env.tensorrt_version),
        compute_capability=str(env.compute_capability),
        shapes=shapes,
    )
    final = context_model_path(source)
    if final.exists() and not overwrite:
        raise OutputExistsError(describe(final, "engine already exists", fix="pass --overwrite"))
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp_ctx = temporary_sibling(final)
    options = provider_options(
        shapes=shapes,
        cache_dir=cache_dir,
        cache_prefix=prefix,
        context_path=tmp_ctx,
        device_id=env.device_id,
        builder_optimization_level=builder_optimization_level,
    )
    try:
        started = time.perf_counter()
        session = ort.InferenceSession(
            os.fspath(source),
            providers=[(TRT_PROVIDER, options), (CUDA_PROVIDER, {"device_id": str(env.device_id)}), CPU_PROVIDER],
        )
        build_seconds = time.perf_counter() - started
        if not tmp_ctx.is_file():
            raise ModelFormatError(
                describe(
                    source,
                    "ONNX Runtime built no EP-context model",
                    expected=f"{tmp_ctx.name} written by the TensorRT EP",
                    found="no file",
                    fix="check that the installed TensorRT is the major onnxruntime-gpu's TensorRT provider links against (docs/gpu.md)",
                )
            )
        cpu = ort.InferenceSession(os.fspath(source), providers=[CPU_PROVIDER])
        parity: dict[str, Any] = {"rtol": TRT_RTOL_ATOL, "atol": TRT_RTOL_ATOL, "checks": []}
        ends = (0, 1, 2) if _is_dynamic(shapes) else (1,)
        for which in ends:
            feed = profile_feeds(shapes, which, inputs)
            got = session.run(None, feed)
            want = cpu.run(None, feed)
            for out, a, b in zip(session.get_outputs(), got, want, strict=True):
                deviation = compare(f"{out.name} (TensorRT vs CPU)", a, b, rtol=TRT_RTOL_ATOL, atol=TRT_RTOL_ATOL)
                parity["checks"].append(deviation.to_dict())
                if not deviation.ok:
                    raise ModelFormatError(
                        describe(source, "the TensorRT engine disagrees with ONNX Runtime CPU",
                                 found=deviation.describe(),
                                 fix="run on CUDA or CPU meanwhile (device='cuda'), and report it with the graph")
                    )
        del session
        os.replace(tmp_ctx, final)
    except BaseException:
        if tmp_ctx.exists():
            tmp_ctx.unlink()
        raise
    info = engine_info(metadata, env=env, source_onnx_sha256=source_sha, shapes=shapes, precision=precision,
                       parity=parity)
    side = write_engine_info(info, final, overwrite=True)
    return EngineBuild(context_path=final, side_file=side, build_seconds=build_seconds, parity=parity)


def build_folder_engines(
    directory: str | os.PathLike[str],
    *,
    env: TrtEnvironment,
    profile: QueryProfile,
    overwrite: bool = False,
    seed: int = 0,
    builder_optimization_level: int = 3,
) -> list[EngineBuild]:
    """Build engines for every graph of an export folder (encoder, decoder, decoder.fp16).

    The parity inputs are the exporter's phantom, prepared with the folder's own metadata;
    the decoders get the fp32 encoder's latent. Caches go to ``<directory>/trt_cache/``.

    Raises:
        DependencyError: see :func:`require_environment` (checked before anything is built).
    """
    from ossnet_deploy.metadata import LATENT, VOLUME
    from ossnet_deploy.preprocess import PreprocessConfig, encoder_input
    from ossnet_export.verify import cpu_session, decoder_feed, make_case
    from ossnet_train.config import ModelConfig

    require_environment(env)
    folder = Path(directory)
    encoder = folder / ENCODER_FILE
    meta = read_graph_metadata(encoder)
    preprocess = PreprocessConfig.from_dict(meta.preprocess)
    config = ModelConfig.from_dict(meta.model_config, source=os.fspath(encoder))
    case = make_case(preprocess, (profile.opt_queries, profile.opt_queries + 1), seed=seed)
    volume = np.ascontiguousarray(encoder_input(case.prepared))
    latent = cpu_session(encoder).run([LATENT], {VOLUME: volume})[0]
    decoder_inputs = decoder_feed(case.prepared, case.queries[0], config, preprocess, latent)
    builds = []
    for name, inputs, precision in (
        (ENCODER_FILE, {VOLUME: volume}, "fp32"),
        (DECODER_FILE, decoder_inputs, "fp32"),
        (DECODER_FP16_FILE, decoder_inputs, "fp16"),
    ):
        if (folder / name).is_file():
            builds.append(
                build_engine(folder / name, env=env, profile=profile, inputs=inputs, precision=precision,
                             cache_dir=folder / "trt_cache", overwrite=overwrite,
                             builder_optimization_level=builder_optimization_level)
            )
    return builds


def engine_paths(onnx_paths: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """``(context model, side file)`` for each graph, in order (what ``--trt`` writes)."""
    return [(context_model_path(p), engine_json_path(context_model_path(p))) for p in onnx_paths]
