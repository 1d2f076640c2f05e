"""The TensorRT engine record: the ``<name>.engine.json`` side file of an engine.

TensorRT plans cannot hold metadata, so ``ossnet-export --trt`` writes beside each engine an
:class:`EngineInfo`: the source graph's :class:`~ossnet_deploy.metadata.GraphMetadata` plus what
the engine is tied to (TensorRT version, GPU compute capability, sha256 of the source ONNX
graph, optimisation profile, precision, measured parity). :func:`check_engine` refuses an
engine built elsewhere. Written by :mod:`ossnet_export.trt`, read by
:mod:`ossnet_deploy.backends.trt`; the schema helpers are those of :mod:`ossnet_deploy.metadata`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_deploy.metadata import (
    GraphMetadata,
    PathLike,
    _canonical,
    _expect_dict,
    _expect_int,
    _expect_str,
    _invalid,
    _json_loads,
    _SchemaError,
    _take,
)

__all__ = [
    "EngineInfo",
    "ProfileShapes",
    "check_engine",
    "engine_json_path",
    "read_engine_info",
    "write_engine_info",
]


def engine_json_path(engine_path: PathLike) -> Path:
    """The side file of an engine: ``decoder.engine`` -> ``decoder.engine.json``.

    Also for an ORT EP-context model: ``decoder_ctx.onnx`` -> ``decoder_ctx.engine.json``.
    """
    return Path(engine_path).with_suffix(".engine.json")


ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class EngineInfo:
    """The ``<name>.engine.json`` payload: graph metadata plus what the engine is tied to.

    Attributes:
        metadata: the source graph's :class:`GraphMetadata`.
        tensorrt_version: TensorRT version that built the engine, e.g. ``"10.13.0.35"``.
        compute_capability: GPU compute capability it was built for, e.g. ``"8.9"``.
        source_onnx_sha256: sha256 of the ONNX file it was built from.
        profile_shapes: input name -> (min, opt, max) shapes of the optimisation profile.
        precision: ``"fp32"`` or ``"fp16"``.
        parity: measured engine vs ONNX Runtime errors.
    """

    metadata: GraphMetadata
    tensorrt_version: str
    compute_capability: str
    source_onnx_sha256: str
    profile_shapes: dict[str, ProfileShapes] = field(default_factory=dict)
    precision: str = "fp32"
    parity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {
            name: tuple(tuple(int(d) for d in shape) for shape in triple)
            for name, triple in self.profile_shapes.items()
        }
        object.__setattr__(self, "profile_shapes", shapes)
        object.__setattr__(self, "parity", _canonical(self.parity, "EngineInfo.parity"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; the graph metadata sits under ``"metadata"``."""
        return {
            "metadata": self.metadata.to_dict(),
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": self.compute_capability,
            "source_onnx_sha256": self.source_onnx_sha256,
            "profile_shapes": {
                name: [list(s) for s in triple] for name, triple in self.profile_shapes.items()
            },
            "precision": self.precision,
            "parity": self.parity,
        }

    def to_json(self) -> str:
        """The side file's text."""
        return (
            json.dumps(self.to_dict(), allow_nan=False, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        )

    @classmethod
    def from_json(cls, text: str, source: PathLike | None = None) -> EngineInfo:
        """Parse a side file's text.

        Raises:
            ModelFormatError: not JSON, missing or malformed fields, or any refusal of
                :meth:`GraphMetadata.from_dict` for the embedded metadata.
        """
        fix = "rebuild the engine with `ossnet-export CHECKPOINT --trt`"
        try:
            data = _expect_dict(_json_loads(text), "engine side file")
            metadata = GraphMetadata.from_dict(
                _expect_dict(_take(data, "metadata", "engine side file"), "metadata"), source
            )
            raw_profiles = _expect_dict(data.get("profile_shapes", {}), "profile_shapes")
            profiles: dict[str, ProfileShapes] = {}
            for name, triple in raw_profiles.items():
                if not isinstance(triple, list) or len(triple) != 3:
                    raise _SchemaError(f"profile_shapes[{name!r}] must be [min, opt, max], found {triple!r}")
                dims = [
                    tuple(
                        _expect_int(d, f"profile_shapes[{name!r}]", minimum=0) for d in _as_list(shape, name)
                    )
                    for shape in triple
                ]
                profiles[name] = (dims[0], dims[1], dims[2])
            return cls(
                metadata=metadata,
                tensorrt_version=_expect_str(_take(data, "tensorrt_version", "engine"), "tensorrt_version"),
                compute_capability=_expect_str(
                    _take(data, "compute_capability", "engine"), "compute_capability"
                ),
                source_onnx_sha256=_expect_str(
                    _take(data, "source_onnx_sha256", "engine"), "source_onnx_sha256"
                ),
                profile_shapes=profiles,
                precision=_expect_str(data.get("precision", "fp32"), "precision"),
                parity=_expect_dict(data.get("parity", {}), "parity"),
            )
        except (ValueError, _SchemaError) as exc:
            if isinstance(exc, ModelFormatError):
                raise
            raise _invalid(source, "malformed engine side file", found=str(exc), fix=fix) from None


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise _SchemaError(f"profile_shapes[{name!r}] entries must be lists, found {value!r}")
    return value


def read_engine_info(engine_path: PathLike) -> EngineInfo:
    """Read the side file of ``engine_path`` (see :func:`engine_json_path`).

    Raises:
        ModelFormatError: the side file is missing, unreadable or malformed.
    """
    side = engine_json_path(engine_path)
    if not side.is_file():
        raise ModelFormatError(
            describe(
                engine_path,
                "engine has no side file",
                expected=f"{side.name} beside it",
                found="none",
                fix="rebuild the engine with `ossnet-export CHECKPOINT --trt`, which writes both",
            )
        )
    try:
        text = side.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(
            describe(side, "cannot be read", found=str(exc), fix="rebuild the engine")
        ) from None
    return EngineInfo.from_json(text, source=side)


def write_engine_info(info: EngineInfo, engine_path: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``info`` to the side file of ``engine_path`` atomically; returns the side file's path."""
    side = engine_json_path(engine_path)
    with atomic_write(side, overwrite=overwrite) as tmp:
        tmp.write_text(info.to_json(), encoding="utf-8")
    return side


def check_engine(
    info: EngineInfo,
    *,
    onnx_sha256: str | None,
    tensorrt_version: str,
    compute_capability: str,
    path: PathLike,
) -> None:
    """Refuse an engine built from another ONNX file, TensorRT version or GPU generation.

    TensorRT plans are not portable: they only load on the TensorRT version and compute
    capability they were built with.

    Args:
        info: the engine's side file.
        onnx_sha256: sha256 of the ONNX graph the runtime expects it to come from; None
            when that graph is not at hand (this check is then skipped).
        tensorrt_version: the installed TensorRT version.
        compute_capability: this GPU's compute capability, e.g. ``"8.9"``.
        path: the engine file, for the message.

    Raises:
        ModelFormatError: naming the engine, each mismatch (expected vs found) and the fix.
    """
    mismatches = []
    if onnx_sha256 is not None and info.source_onnx_sha256 != onnx_sha256:
        mismatches.append(
            f"source ONNX sha256 {info.source_onnx_sha256[:12]}... vs {onnx_sha256[:12]}... here"
        )
    if info.tensorrt_version != tensorrt_version:
        mismatches.append(f"TensorRT {info.tensorrt_version} vs {tensorrt_version} installed")
    if info.compute_capability != compute_capability:
        mismatches.append(f"compute capability {info.compute_capability} vs {compute_capability} on this GPU")
    if mismatches:
        raise ModelFormatError(
            describe(
                path,
                "engine was built for another setup",
                found="; ".join(mismatches),
                fix="rebuild it on this machine with `ossnet-export CHECKPOINT --trt` (or run the .onnx graphs)",
            )
        )
