"""The model-file contract: ONNX IO names, the metadata schema, its validators and the pair check.

One schema, torch-free (docs/design.md#model-io and docs/design.md#model-files-and-metadata):
the exporter imports this module to write ``metadata_props`` and engine side files, the
runtime imports it to read and check them.

* IO names (``VOLUME``, ``LATENT``, ...) are the only spelling of the graph signatures; the
  exporter derives its input/output names and dynamic axes from them.
* :class:`GraphMetadata` is the payload of one graph. ``to_props`` gives the ``metadata_props``
  (keys ``ossnet.<field>``, every value JSON); ``from_props`` validates and refuses, with a
  :class:`~ossnet_deploy.errors.ModelFormatError` naming the file, anything it cannot trust.
* :func:`check_pair` refuses an encoder and a decoder that were not exported together.

The readers live beside it: :mod:`ossnet_deploy.onnx_metadata` reads ``metadata_props`` from
the protobuf bytes (no ``onnx`` package, no session) and :mod:`ossnet_deploy.backends.trt_engine`
holds the TensorRT engine side file (:class:`~ossnet_deploy.backends.trt_engine.EngineInfo`).
Their names, once defined here, still resolve from this module with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ossnet_deploy.errors import ModelFormatError, describe

__all__ = [
    "COARSE_LOGITS",
    "COORDS",
    "DECODER_OUTPUTS",
    "ENCODER_INPUTS",
    "FORMAT_VERSION",
    "KEY_DOMAIN",
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
    "OPTIONAL_METADATA_KEYS",
    "PATCHES",
    "PRODUCER_NAME",
    "ROLES",
    "ROLE_DECODER",
    "ROLE_ENCODER",
    "VOLUME",
    "GraphMetadata",
    "IOSpec",
    "SchedulerFacts",
    "TensorSpec",
    "check_pair",
    "decoder_input_names",
    "encoder_output_names",
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
#: Optional (omitted when absent; runtimes that predate it ignore it): the training inputs'
#: profile range, ``ossnet_deploy.domain.ModelDomain.to_dict()``.
KEY_DOMAIN = KEY_PREFIX + "domain"
#: Optional (omitted when absent; runtimes that predate it ignore it): coded meanings of the labels
#: for DICOM SEG, label value -> ``ossnet_deploy.label_codes.LabelCode.to_dict()`` (docs/design.md#dicom).
KEY_LABEL_CODES = KEY_PREFIX + "label_codes"
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

#: Keys a graph may carry or omit (absent = the field's default); readers ignore unknown ones.
OPTIONAL_METADATA_KEYS: tuple[str, ...] = (KEY_DOMAIN, KEY_LABEL_CODES)

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
        domain: what the training inputs looked like (``ModelDomain.to_dict()``), or None; only
            the encoder needs it, and older runtimes ignore the key.
        label_codes: label value -> coded meaning (``LabelCode.to_dict()``: SNOMED CT category
            and type, and where they come from), for DICOM SEG output; None (the key omitted)
            when the model has none, so older runtimes still read it.
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
    domain: dict[str, Any] | None = None
    label_codes: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("model_config", "preprocess", "labels", "parity", "provenance"):
            object.__setattr__(self, name, _canonical(getattr(self, name), f"GraphMetadata.{name}"))
        if self.domain is not None:
            object.__setattr__(self, "domain", _canonical(self.domain, "GraphMetadata.domain"))
        if self.label_codes is not None:
            object.__setattr__(self, "label_codes", _canonical(self.label_codes, "GraphMetadata.label_codes"))

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
            **({} if self.domain is None else {"domain": self.domain}),
            **({} if self.label_codes is None else {"label_codes": self.label_codes}),
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
                domain=None if data.get("domain") is None else _expect_dict(data["domain"], "domain"),
                label_codes=_label_codes(data.get("label_codes"), labels),
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
        if KEY_DOMAIN in ours:
            data["domain"] = _decode_prop(KEY_DOMAIN, ours[KEY_DOMAIN], source)
        if KEY_LABEL_CODES in ours:
            data["label_codes"] = _decode_prop(KEY_LABEL_CODES, ours[KEY_LABEL_CODES], source)
        return cls.from_dict(data, source)


def _label_codes(value: Any, labels: Mapping[str, Any]) -> dict[str, Any] | None:
    """Check ``label_codes`` (None when absent): well formed, and only for the model's own labels."""
    if value is None:
        return None
    from ossnet_deploy.label_codes import parse_label_codes

    try:
        parsed = parse_label_codes(value, "label_codes")
    except ValueError as exc:
        raise _SchemaError(str(exc)) from None
    unknown = sorted(set(parsed) - set(labels))
    if unknown:
        raise _SchemaError(f"label_codes names label values {unknown} that are not in labels")
    return {key: code.to_dict() for key, code in parsed.items()}


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
# Names that lived here before the readers got their own modules

_MOVED = {
    "OnnxHeader": "ossnet_deploy.onnx_metadata",
    "read_onnx_metadata": "ossnet_deploy.onnx_metadata",
    "read_graph_metadata": "ossnet_deploy.onnx_metadata",
    "sha256_file": "ossnet_deploy.onnx_metadata",
    "EngineInfo": "ossnet_deploy.backends.trt_engine",
    "ProfileShapes": "ossnet_deploy.backends.trt_engine",
    "check_engine": "ossnet_deploy.backends.trt_engine",
    "engine_json_path": "ossnet_deploy.backends.trt_engine",
    "read_engine_info": "ossnet_deploy.backends.trt_engine",
    "write_engine_info": "ossnet_deploy.backends.trt_engine",
}


def __getattr__(name: str) -> Any:
    # Imported on first use only: those modules import this one (the schema), never the reverse.
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'ossnet_deploy.metadata' has no attribute {name!r}")
    warnings.warn(f"ossnet_deploy.metadata.{name} moved to {module}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), name)
