"""The model-file contract: ONNX IO names, the metadata schema, and its readers and checks.

One schema, torch-free (docs/design.md#model-io and docs/design.md#model-files-and-metadata):
the exporter imports this module to write ``metadata_props`` and engine side files, the
runtime imports it to read and check them.

* IO names (``VOLUME``, ``LATENT``, ...) are the only spelling of the graph signatures; the
  exporter derives its input/output names and dynamic axes from them.
* :class:`GraphMetadata` is the payload of one graph. ``to_props`` gives the ``metadata_props``
  (keys ``ossnet.<field>``, every value JSON); ``from_props`` validates and refuses, with a
  :class:`~ossnet_deploy.errors.ModelFormatError` naming the file, anything it cannot trust.
* :func:`read_onnx_metadata` reads ``metadata_props`` straight from the protobuf bytes, without
  the ``onnx`` package (absent at the edge) and without an onnxruntime session (building one
  for a large encoder takes seconds and its weights' memory). It seeks over the graph, so
  initializers are never read.
* :class:`EngineInfo` is the ``<name>.engine.json`` side file of a TensorRT engine (plans cannot
  hold metadata); :func:`check_engine` refuses an engine built elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import ModelFormatError, describe

__all__ = [
    "COARSE_LOGITS",
    "COORDS",
    "DECODER_OUTPUTS",
    "ENCODER_INPUTS",
    "FORMAT_VERSION",
    "KEY_FORMAT_VERSION",
    "KEY_IO",
    "KEY_LABELS",
    "KEY_MODEL_CONFIG",
    "KEY_PAIR_ID",
    "KEY_PARITY",
    "KEY_PREFIX",
    "KEY_PREPROCESS",
    "KEY_PRESET",
    "KEY_PROVENANCE",
    "KEY_ROLE",
    "KEY_SCHEDULER",
    "KEY_VARIANT",
    "LATENT",
    "LOGITS",
    "METADATA_KEYS",
    "NUM_QUERIES",
    "PATCHES",
    "PRODUCER_NAME",
    "ROLES",
    "ROLE_DECODER",
    "ROLE_ENCODER",
    "VOLUME",
    "EngineInfo",
    "GraphMetadata",
    "IOSpec",
    "OnnxHeader",
    "SchedulerFacts",
    "TensorSpec",
    "check_engine",
    "check_pair",
    "decoder_input_names",
    "encoder_output_names",
    "engine_json_path",
    "read_engine_info",
    "read_graph_metadata",
    "read_onnx_metadata",
    "sha256_file",
    "write_engine_info",
]

# ----------------------------------------------------------------------------------------
# IO names (docs/design.md#model-io)

VOLUME = "volume"
"""Encoder input: (1, C, Dg, Hg, Wg) float32, the normalised global volume (static shape)."""
LATENT = "latent"
"""Encoder output and decoder input: (1, K, L) float32; K = 1 (plain) or 6 (skip encoder)."""
COARSE_LOGITS = "coarse_logits"
"""Encoder output of variants C/D only: (1, 1, d, h, w) float32 logits of the coarse segmentation."""
COORDS = "coords"
"""Decoder input: (N, 3) float32, ``(2 * idx + 1) / shape - 1`` per axis, (i, j, k) order."""
PATCHES = "patches"
"""Decoder input (absent for O-Net): (N, C_p, 7, 7, 7) float32 normalised intensity patches."""
LOGITS = "logits"
"""Decoder output: (N, 1) float32 occupancy logits; the decision threshold is logit 0."""
NUM_QUERIES = "num_queries"
"""The one dynamic dimension: N, the number of queries per decoder call."""

ENCODER_INPUTS: tuple[str, ...] = (VOLUME,)
DECODER_OUTPUTS: tuple[str, ...] = (LOGITS,)


def encoder_output_names(has_coarse: bool) -> tuple[str, ...]:
    """The encoder's outputs in graph order: ``latent`` and, for C/D, ``coarse_logits``."""
    return (LATENT, COARSE_LOGITS) if has_coarse else (LATENT,)


def decoder_input_names(has_patches: bool) -> tuple[str, ...]:
    """The decoder's inputs in graph order: ``coords``, ``patches`` (not O-Net), ``latent``."""
    return (COORDS, PATCHES, LATENT) if has_patches else (COORDS, LATENT)


# ----------------------------------------------------------------------------------------
# metadata_props keys (docs/design.md#model-files-and-metadata)

PRODUCER_NAME = "ossnet-export"
FORMAT_VERSION = 1
"""The newest metadata format this code writes and reads; also written as ``model_version``."""
_KNOWN_FORMAT_VERSIONS = frozenset({1})

KEY_PREFIX = "ossnet."
KEY_FORMAT_VERSION = KEY_PREFIX + "format_version"
KEY_ROLE = KEY_PREFIX + "role"
KEY_PAIR_ID = KEY_PREFIX + "pair_id"
KEY_VARIANT = KEY_PREFIX + "variant"
KEY_PRESET = KEY_PREFIX + "preset"
KEY_MODEL_CONFIG = KEY_PREFIX + "model_config"
KEY_PREPROCESS = KEY_PREFIX + "preprocess"
KEY_LABELS = KEY_PREFIX + "labels"
KEY_IO = KEY_PREFIX + "io"
KEY_SCHEDULER = KEY_PREFIX + "scheduler"
KEY_PARITY = KEY_PREFIX + "parity"
KEY_PROVENANCE = KEY_PREFIX + "provenance"
METADATA_KEYS: tuple[str, ...] = (
    KEY_FORMAT_VERSION,
    KEY_ROLE,
    KEY_PAIR_ID,
    KEY_VARIANT,
    KEY_PRESET,
    KEY_MODEL_CONFIG,
    KEY_PREPROCESS,
    KEY_LABELS,
    KEY_IO,
    KEY_SCHEDULER,
    KEY_PARITY,
    KEY_PROVENANCE,
)

ROLE_ENCODER = "encoder"
ROLE_DECODER = "decoder"
ROLES: tuple[str, ...] = (ROLE_ENCODER, ROLE_DECODER)

_EXPORT_FIX = "export one with `ossnet-export CHECKPOINT`"
_REEXPORT_FIX = "re-export both graphs from one checkpoint with `ossnet-export CHECKPOINT`"
_UPGRADE_FIX = "upgrade: pip install -U ossnet"

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------
# Schema validation helpers


class _SchemaError(Exception):
    """A field of a metadata payload is missing or malformed (wrapped into ModelFormatError)."""


def _json_dumps(value: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON and other readers (jq, JS, Go) reject them.
    return json.dumps(value, allow_nan=False, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise _SchemaError(f"non-standard JSON constant {name}")


def _json_loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _canonical(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so round trips compare equal."""
    try:
        return _json_loads(_json_dumps(value))
    except (TypeError, ValueError, _SchemaError) as exc:
        raise ValueError(
            f"{what} must be plain JSON data (dict/list/str/int/float/bool/None, finite): {exc}"
        ) from exc


def _take(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise _SchemaError(f"{where} lacks {key!r}")
    return data[key]


def _expect_str(value: Any, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise _SchemaError(f"{where} must be a {'' if empty_ok else 'non-empty '}string, found {value!r}")
    return value


def _expect_int(value: Any, where: str, *, minimum: int) -> int:
    # bool is an int subclass in Python; JSON true must not pass as 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _SchemaError(f"{where} must be an integer >= {minimum}, found {value!r}")
    return value


def _expect_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _SchemaError(f"{where} must be true or false, found {value!r}")
    return value


def _expect_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _SchemaError(f"{where} must be a finite number, found {value!r}")
    return float(value)


def _expect_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _SchemaError(f"{where} must be a JSON object, found {type(value).__name__}")
    return value


def _expect_shape3(value: Any, where: str) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise _SchemaError(f"{where} must be 3 positive integers, found {value!r}")
    i, j, k = (_expect_int(v, where, minimum=1) for v in value)
    return (i, j, k)


def _invalid(
    source: PathLike | None, problem: str, *, found: str | None = None, fix: str = _EXPORT_FIX
) -> ModelFormatError:
    return ModelFormatError(describe(source, problem, found=found, fix=fix))


# ----------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one graph input or output.

    Attributes:
        name: the ONNX tensor name (one of the IO name constants).
        dtype: numpy dtype name, e.g. ``"float32"``.
        shape: one entry per axis: an int for a static size, a str for a symbolic dimension
            (``NUM_QUERIES``; ``""`` for an unnamed dynamic size, as onnxruntime reports it).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"name", "dtype", "shape"}``."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def _from_dict(cls, data: Any, where: str) -> TensorSpec:
        data = _expect_dict(data, where)
        name = _expect_str(_take(data, "name", where), f"{where}.name")
        dtype = _expect_str(_take(data, "dtype", where), f"{where}.dtype")
        raw_shape = _take(data, "shape", where)
        if not isinstance(raw_shape, list | tuple):
            raise _SchemaError(f"{where}.shape must be a list, found {raw_shape!r}")
        shape: list[int | str] = []
        for dim in raw_shape:
            if isinstance(dim, str):
                shape.append(dim)
            else:
                shape.append(_expect_int(dim, f"{where}.shape", minimum=0))
        return cls(name=name, dtype=dtype, shape=tuple(shape))


@dataclass(frozen=True)
class IOSpec:
    """The inputs and outputs of one graph, in graph order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @property
    def input_names(self) -> tuple[str, ...]:
        """Input names in graph order."""
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names in graph order."""
        return tuple(spec.name for spec in self.outputs)

    def get(self, name: str) -> TensorSpec | None:
        """The input or output called ``name``, or None."""
        for spec in (*self.inputs, *self.outputs):
            if spec.name == name:
                return spec
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"inputs": [...], "outputs": [...]}``."""
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}

    @classmethod
    def _from_dict(cls, data: Any, where: str) -> IOSpec:
        data = _expect_dict(data, where)
        lists = {}
        for key in ("inputs", "outputs"):
            items = _take(data, key, where)
            if not isinstance(items, list):
                raise _SchemaError(f"{where}.{key} must be a list, found {items!r}")
            lists[key] = tuple(
                TensorSpec._from_dict(item, f"{where}.{key}[{n}]") for n, item in enumerate(items)
            )
        return cls(inputs=lists["inputs"], outputs=lists["outputs"])


@dataclass(frozen=True)
class SchedulerFacts:
    """What the query scheduler needs to know about the model (not how to schedule).

    Attributes:
        has_coarse_seg: the encoder outputs ``coarse_logits`` (variants C, D).
        grid_shape: (i, j, k) voxels of the padded full-resolution grid that queries index.
        coarse_shape: (d, h, w) of ``coarse_logits``, or None without a coarse segmentation.
        threshold_logit: decision threshold on the decoder's logits (0 = probability 0.5).
    """

    has_coarse_seg: bool
    grid_shape: tuple[int, int, int]
    coarse_shape: tuple[int, int, int] | None = None
    threshold_logit: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid_shape", tuple(self.grid_shape))
        if self.coarse_shape is not None:
            object.__setattr__(self, "coarse_shape", tuple(self.coarse_shape))
        object.__setattr__(self, "threshold_logit", float(self.threshold_logit))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "has_coarse_seg": self.has_coarse_seg,
            "grid_shape": list(self.grid_shape),
            "coarse_shape": None if self.coarse_shape is None else list(self.coarse_shape),
            "threshold_logit": self.threshold_logit,
        }

    @classmethod
    def _from_dict(cls, data: Any, where: str) -> SchedulerFacts:
        data = _expect_dict(data, where)
        has_coarse = _expect_bool(_take(data, "has_coarse_seg", where), f"{where}.has_coarse_seg")
        grid_shape = _expect_shape3(_take(data, "grid_shape", where), f"{where}.grid_shape")
        raw_coarse = data.get("coarse_shape")
        coarse_shape = None if raw_coarse is None else _expect_shape3(raw_coarse, f"{where}.coarse_shape")
        if has_coarse != (coarse_shape is not None):
            raise _SchemaError(
                f"{where}: has_coarse_seg is {has_coarse} but coarse_shape is {raw_coarse!r} "
                "(a coarse shape is given exactly when there is a coarse segmentation)"
            )
        threshold = _expect_float(data.get("threshold_logit", 0.0), f"{where}.threshold_logit")
        return cls(
            has_coarse_seg=has_coarse,
            grid_shape=grid_shape,
            coarse_shape=coarse_shape,
            threshold_logit=threshold,
        )


def _check_io(role: str, io_spec: IOSpec, scheduler: SchedulerFacts) -> None:
    """Refuse IO names that do not follow the contract for ``role``."""
    if role == ROLE_ENCODER:
        expected_in = [ENCODER_INPUTS]
        expected_out = [encoder_output_names(scheduler.has_coarse_seg)]
    else:
        expected_in = [decoder_input_names(True), decoder_input_names(False)]
        expected_out = [DECODER_OUTPUTS]
    for kind, names, options in (
        ("inputs", io_spec.input_names, expected_in),
        ("outputs", io_spec.output_names, expected_out),
    ):
        if sorted(names) not in [sorted(option) for option in options]:
            wanted = " or ".join(str(list(option)) for option in options)
            raise _SchemaError(f"io.{kind} of the {role} are {list(names)}; the contract says {wanted}")


@dataclass(frozen=True)
class GraphMetadata:
    """The ``ossnet.*`` metadata of one exported graph (docs/design.md#model-files-and-metadata).

    The dict-valued fields hold plain JSON data; they are normalised at construction to the
    form they read back as (tuples become lists), so ``from_props(m.to_props()) == m``.

    Attributes:
        format_version: metadata format, ``FORMAT_VERSION`` when written by this code.
        role: ``"encoder"`` or ``"decoder"``.
        pair_id: sha256 of the source checkpoint's weights; equal in both graphs of a pair.
        variant: model variant name (e.g. ``"ossnet_c"``).
        preset: preset name (``"brats"``, ``"lits"``, ``"demo"``).
        model_config: the model configuration as a dict.
        preprocess: the whole ``PreprocessConfig`` as a dict.
        labels: output label value (decimal string) -> name, e.g. ``{"1": "white_matter"}``.
        io: names, dtypes and shapes of the graph's inputs and outputs.
        scheduler: facts about the model that the query scheduler needs.
        parity: measured export errors (torch vs ONNX Runtime).
        provenance: checkpoint sha256, git commit, torch/onnx/opset versions.
    """

    format_version: int
    role: str
    pair_id: str
    variant: str
    preset: str
    model_config: dict[str, Any]
    preprocess: dict[str, Any]
    labels: dict[str, str]
    io: IOSpec
    scheduler: SchedulerFacts
    parity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("model_config", "preprocess", "labels", "parity", "provenance"):
            object.__setattr__(self, name, _canonical(getattr(self, name), f"GraphMetadata.{name}"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: field name -> plain value."""
        return {
            "format_version": self.format_version,
            "role": self.role,
            "pair_id": self.pair_id,
            "variant": self.variant,
            "preset": self.preset,
            "model_config": self.model_config,
            "preprocess": self.preprocess,
            "labels": self.labels,
            "io": self.io.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "parity": self.parity,
            "provenance": self.provenance,
        }

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props``: ``"ossnet.<field>"`` -> JSON text, for every field."""
        return {KEY_PREFIX + name: _json_dumps(value) for name, value in self.to_dict().items()}

    def to_json(self) -> str:
        """The whole payload as one JSON document."""
        return _json_dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: PathLike | None = None) -> GraphMetadata:
        """Validate a payload (the output of :meth:`to_dict`) and build the metadata.

        Raises:
            ModelFormatError: a newer or unknown format version, a missing or malformed field,
                an unknown role, or IO names that break the contract; the message names
                ``source``.
        """
        if not isinstance(data, Mapping):
            raise _invalid(source, "ossnet metadata is not a JSON object", found=type(data).__name__)
        if "format_version" not in data:
            raise _invalid(source, "ossnet metadata has no format_version", fix=_EXPORT_FIX)
        _check_format_version(data["format_version"], source)
        try:
            role = _expect_str(_take(data, "role", "metadata"), "role")
            if role not in ROLES:
                raise _invalid(
                    source,
                    "unknown graph role",
                    found=f"role {role!r}, expected one of {list(ROLES)}",
                    fix="use an encoder.onnx / decoder.onnx written by `ossnet-export CHECKPOINT`",
                )
            io_spec = IOSpec._from_dict(_take(data, "io", "metadata"), "io")
            scheduler = SchedulerFacts._from_dict(_take(data, "scheduler", "metadata"), "scheduler")
            _check_io(role, io_spec, scheduler)
            labels = _expect_dict(_take(data, "labels", "metadata"), "labels")
            for value, name in labels.items():
                if not isinstance(value, str) or not value.isdigit() or not 0 <= int(value) <= 255:
                    raise _SchemaError(f"labels key {value!r} is not a label value 0..255")
                _expect_str(name, f"labels[{value!r}]")
            return cls(
                format_version=data["format_version"],
                role=role,
                pair_id=_expect_str(_take(data, "pair_id", "metadata"), "pair_id"),
                variant=_expect_str(_take(data, "variant", "metadata"), "variant"),
                preset=_expect_str(_take(data, "preset", "metadata"), "preset"),
                model_config=_expect_dict(_take(data, "model_config", "metadata"), "model_config"),
                preprocess=_expect_dict(_take(data, "preprocess", "metadata"), "preprocess"),
                labels=labels,
                io=io_spec,
                scheduler=scheduler,
                parity=_expect_dict(_take(data, "parity", "metadata"), "parity"),
                provenance=_expect_dict(_take(data, "provenance", "metadata"), "provenance"),
            )
        except _SchemaError as exc:
            raise _invalid(source, "malformed ossnet metadata", found=str(exc)) from None

    @classmethod
    def from_json(cls, text: str, source: PathLike | None = None) -> GraphMetadata:
        """Parse :meth:`to_json` output; see :meth:`from_dict` for what is refused."""
        try:
            data = _json_loads(text)
        except (ValueError, _SchemaError) as exc:
            raise _invalid(source, "ossnet metadata is not valid JSON", found=str(exc)) from None
        return cls.from_dict(data, source)

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: PathLike | None = None) -> GraphMetadata:
        """Read the ``ossnet.*`` entries of ONNX ``metadata_props``; other keys are ignored.

        Args:
            props: key -> value strings, as read by :func:`read_onnx_metadata` or from
                ``InferenceSession.get_modelmeta().custom_metadata_map``.
            source: the file the props came from, for messages.

        Raises:
            ModelFormatError: no ossnet keys, a newer format version, missing keys, values
                that are not JSON, or any refusal of :meth:`from_dict`.
        """
        ours = {key: value for key, value in props.items() if key.startswith(KEY_PREFIX)}
        if not ours:
            raise _invalid(source, "is not an ossnet ONNX graph", found="no ossnet.* metadata")
        # The version decides which keys must exist, so it is checked before anything else.
        if KEY_FORMAT_VERSION in ours:
            _check_format_version(_decode_prop(KEY_FORMAT_VERSION, ours[KEY_FORMAT_VERSION], source), source)
        missing = [key for key in METADATA_KEYS if key not in ours]
        if missing:
            raise _invalid(
                source,
                "ossnet metadata is incomplete",
                found=f"missing keys {missing}",
                fix=f"re-export it with `ossnet-export CHECKPOINT` ({_UPGRADE_FIX} if this ossnet is older)",
            )
        data = {key[len(KEY_PREFIX) :]: _decode_prop(key, ours[key], source) for key in METADATA_KEYS}
        return cls.from_dict(data, source)


def _decode_prop(key: str, text: str, source: PathLike | None) -> Any:
    try:
        return _json_loads(text)
    except (ValueError, _SchemaError) as exc:
        raise _invalid(source, f"metadata value {key} is not JSON", found=f"{text[:80]!r} ({exc})") from None


def _check_format_version(version: Any, source: PathLike | None) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise _invalid(source, "ossnet metadata format_version is not an integer", found=repr(version))
    if version > FORMAT_VERSION:
        raise _invalid(
            source,
            "written by a newer ossnet",
            found=f"metadata format {version}, this ossnet reads up to {FORMAT_VERSION}",
            fix=_UPGRADE_FIX,
        )
    if version not in _KNOWN_FORMAT_VERSIONS:
        raise _invalid(
            source,
            "unknown ossnet metadata format_version",
            found=f"{version}, known {sorted(_KNOWN_FORMAT_VERSIONS)}",
        )


# ----------------------------------------------------------------------------------------
# Pair check


def check_pair(
    encoder_meta: GraphMetadata,
    decoder_meta: GraphMetadata,
    encoder_path: PathLike,
    decoder_path: PathLike,
) -> None:
    """Refuse an encoder and a decoder that were not exported together.

    Checks roles, format version, ``pair_id``, variant, preset, model config, preprocessing
    and that the decoder's ``latent`` input has the encoder's ``latent`` output shape.

    Raises:
        ModelFormatError: naming both files, every difference found, and the fix.
    """
    problems: list[str] = []
    if encoder_meta.role != ROLE_ENCODER or decoder_meta.role != ROLE_DECODER:
        swapped = encoder_meta.role == ROLE_DECODER and decoder_meta.role == ROLE_ENCODER
        problems.append(
            f"roles are {encoder_meta.role!r} and {decoder_meta.role!r}, expected 'encoder' and 'decoder'"
            + (" (the two files are swapped)" if swapped else "")
        )
    for name in ("format_version", "pair_id", "variant", "preset", "model_config"):
        enc, dec = getattr(encoder_meta, name), getattr(decoder_meta, name)
        if enc != dec:
            problems.append(f"{name} differs: {_short(enc)} vs {_short(dec)}")
    if encoder_meta.preprocess != decoder_meta.preprocess:
        keys = sorted(
            key
            for key in set(encoder_meta.preprocess) | set(decoder_meta.preprocess)
            if encoder_meta.preprocess.get(key) != decoder_meta.preprocess.get(key)
        )
        problems.append(f"preprocess differs in {keys}")
    enc_latent, dec_latent = encoder_meta.io.get(LATENT), decoder_meta.io.get(LATENT)
    if enc_latent is not None and dec_latent is not None and enc_latent.shape != dec_latent.shape:
        problems.append(f"latent shape differs: {list(enc_latent.shape)} vs {list(dec_latent.shape)}")
    if problems:
        raise ModelFormatError(
            describe(
                f"{os.fspath(encoder_path)} and {os.fspath(decoder_path)}",
                "encoder and decoder are not one exported pair",
                expected="an encoder and a decoder exported from the same checkpoint",
                found="; ".join(problems),
                fix=f"{_REEXPORT_FIX} and pass encoder first, decoder second",
            )
        )


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------
# Reading metadata_props from ONNX protobuf bytes
#
# An ONNX file is one serialised ModelProto: a flat sequence of (tag, payload) fields, where
# tag = field_number << 3 | wire_type. Wire types: 0 varint, 1 fixed 8 bytes, 2 varint length
# + that many bytes, 5 fixed 4 bytes (3/4 are deprecated groups, 6/7 do not exist). The
# top-level fields we want are 2 producer_name (string), 5 model_version (int64) and 14
# metadata_props (repeated StringStringEntryProto {1: key, 2: value}); 1 ir_version is kept
# for messages. The weights live inside field 7 graph, which is skipped with one seek.

_PRODUCER_NAME_FIELD = 2
_MODEL_VERSION_FIELD = 5
_IR_VERSION_FIELD = 1
_METADATA_PROPS_FIELD = 14
_ENTRY_KEY_FIELD = 1
_ENTRY_VALUE_FIELD = 2
# Guards against garbage that happens to parse: real metadata values are a few KB.
_MAX_STRING_FIELD_BYTES = 64 << 20


class _NotProtobuf(Exception):
    """The bytes are not a well-formed protobuf message (message = what is wrong and where)."""


class OnnxHeader(NamedTuple):
    """The top-level facts of an ONNX file that :func:`read_onnx_metadata` decodes.

    Attributes:
        metadata_props: every ``metadata_props`` entry, key -> value.
        producer_name: ``producer_name`` ("" when unset).
        model_version: ``model_version``, or None when unset.
        ir_version: ONNX IR version, or None when unset.
    """

    metadata_props: dict[str, str]
    producer_name: str
    model_version: int | None
    ir_version: int | None


def _read_varint(stream: BinaryIO, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, position after it)."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _NotProtobuf(f"ends inside a varint at byte {pos}")
        byte = stream.read(1)
        if not byte:
            raise _NotProtobuf(f"ends inside a varint at byte {pos}")
        pos += 1
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value, pos
    raise _NotProtobuf(f"varint longer than 10 bytes before byte {pos}")


def _fields(
    stream: BinaryIO, start: int, end: int, wanted: frozenset[int]
) -> Iterator[tuple[int, int | bytes]]:
    """Walk the fields of one message occupying bytes ``[start, end)`` of ``stream``.

    Yields ``(field_number, value)`` for varint fields (value: int) and for length-delimited
    fields in ``wanted`` (value: bytes). Everything else is skipped by seeking, so a
    multi-GB graph field costs one seek.
    """
    pos = start
    while pos < end:
        tag_at = pos
        tag, pos = _read_varint(stream, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _NotProtobuf(f"field number 0 at byte {tag_at}")
        if wire == 0:
            value, pos = _read_varint(stream, pos, end)
            yield number, value
            continue
        if wire == 1:
            length = 8
        elif wire == 5:
            length = 4
        elif wire == 2:
            length, pos = _read_varint(stream, pos, end)
        else:
            raise _NotProtobuf(f"wire type {wire} (field {number}) at byte {tag_at}")
        if length > end - pos:
            raise _NotProtobuf(
                f"field {number} at byte {tag_at} needs {length} bytes but only {end - pos} remain (truncated?)"
            )
        if wire == 2 and number in wanted:
            if length > _MAX_STRING_FIELD_BYTES:
                raise _NotProtobuf(f"field {number} at byte {tag_at} claims {length} bytes")
            data = stream.read(length)
            if len(data) != length:
                raise _NotProtobuf(f"ends inside field {number} at byte {tag_at} (truncated?)")
            yield number, data
        else:
            stream.seek(length, os.SEEK_CUR)
        pos += length


def _utf8(data: bytes | int, what: str) -> str:
    if not isinstance(data, bytes):
        raise _NotProtobuf(f"{what} is not a string")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotProtobuf(f"{what} is not UTF-8 ({exc})") from None


def _parse_header(stream: BinaryIO, size: int) -> OnnxHeader:
    """Decode the top-level ModelProto fields of ``size`` bytes read from ``stream``."""
    props: dict[str, str] = {}
    producer = ""
    model_version: int | None = None
    ir_version: int | None = None
    wanted = frozenset({_PRODUCER_NAME_FIELD, _METADATA_PROPS_FIELD})
    for number, value in _fields(stream, 0, size, wanted):
        if number == _PRODUCER_NAME_FIELD:
            producer = _utf8(value, "producer_name")
        elif number == _METADATA_PROPS_FIELD:
            if not isinstance(value, bytes):
                raise _NotProtobuf("metadata_props is not a message")
            key, text = _parse_entry(value)
            if key in props:
                raise _NotProtobuf(f"metadata key {key!r} appears twice")
            props[key] = text
        elif number == _MODEL_VERSION_FIELD and isinstance(value, int):
            # int64 on the wire: negative values are 10-byte two's complement.
            model_version = value - (1 << 64) if value >= 1 << 63 else value
        elif number == _IR_VERSION_FIELD and isinstance(value, int):
            ir_version = value
    return OnnxHeader(props, producer, model_version, ir_version)


def _parse_entry(data: bytes) -> tuple[str, str]:
    """Decode one StringStringEntryProto {1: key, 2: value} held in memory."""
    key = value = ""
    wanted = frozenset({_ENTRY_KEY_FIELD, _ENTRY_VALUE_FIELD})
    for number, raw in _fields(io.BytesIO(data), 0, len(data), wanted):
        if number == _ENTRY_KEY_FIELD:
            key = _utf8(raw, "metadata key")
        elif number == _ENTRY_VALUE_FIELD:
            value = _utf8(raw, "metadata value")
    return key, value


def _open_model(path: PathLike) -> tuple[Path, BinaryIO]:
    source = Path(path)
    if not source.exists():
        raise ModelFormatError(
            describe(source, "model file not found", fix="check the path, or " + _EXPORT_FIX)
        )
    if source.is_dir():
        raise ModelFormatError(
            describe(
                source,
                "is a folder",
                expected="an .onnx file",
                fix="pass encoder.onnx / decoder.onnx inside it",
            )
        )
    try:
        # Closed by the caller's with-block.
        return source, open(source, "rb")
    except OSError as exc:
        raise ModelFormatError(
            describe(source, "cannot be read", found=str(exc), fix="check its permissions")
        ) from None


def read_onnx_metadata(path: PathLike) -> OnnxHeader:
    """Read ``metadata_props``, ``producer_name`` and ``model_version`` of an ONNX file.

    Needs neither ``onnx`` nor an onnxruntime session, and never reads the graph: memory
    use is the size of the metadata, whatever the size of the weights.

    Raises:
        ModelFormatError: the file is missing, unreadable, or not a well-formed ONNX protobuf
            (random bytes, a NIfTI, a truncated download).
    """
    source, stream = _open_model(path)
    with stream:
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            raise _invalid(source, "is not an ossnet ONNX graph", found="an empty file (0 bytes)")
        try:
            return _parse_header(stream, size)
        except _NotProtobuf as exc:
            raise _invalid(
                source,
                "is not an ossnet ONNX graph",
                found=f"{size} bytes that do not parse as an ONNX model: {exc}",
                fix=f"re-copy it if it was truncated, or {_EXPORT_FIX}",
            ) from None


def read_graph_metadata(path: PathLike) -> GraphMetadata:
    """Read and validate the ossnet metadata of an ONNX graph file.

    Raises:
        ModelFormatError: see :func:`read_onnx_metadata` and :meth:`GraphMetadata.from_props`;
            an ONNX file without ossnet metadata is refused as "not an ossnet ONNX graph".
    """
    header = read_onnx_metadata(path)
    if not any(key.startswith(KEY_PREFIX) for key in header.metadata_props):
        producer = header.producer_name or "unknown"
        raise _invalid(
            path,
            "is not an ossnet ONNX graph",
            found=f"an ONNX model without ossnet metadata (producer {producer!r})",
        )
    return GraphMetadata.from_props(header.metadata_props, source=path)


def sha256_file(path: PathLike, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed in ``chunk_bytes`` pieces (constant memory).

    Raises:
        ModelFormatError: the file is missing or unreadable.
    """
    digest = hashlib.sha256()
    _, stream = _open_model(path)
    with stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# TensorRT engines: the side file


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
