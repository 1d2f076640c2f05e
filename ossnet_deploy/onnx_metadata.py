"""Reading an ONNX file's ``metadata_props`` without the ``onnx`` package or a session.

:func:`read_onnx_metadata` decodes the top-level fields of the serialised ``ModelProto``
straight from the protobuf bytes: the ``onnx`` package is absent at the edge, and building an
onnxruntime session for a large encoder takes seconds and its weights' memory. It seeks over
the graph, so initializers are never read. :func:`read_graph_metadata` validates the ossnet
payload with the schema of :mod:`ossnet_deploy.metadata`; :func:`sha256_file` hashes a model
file in constant memory, with the same file errors.

Pure Python (no numpy), like the schema, so light tools can read model files.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_deploy.metadata import _EXPORT_FIX, KEY_PREFIX, GraphMetadata, PathLike, _invalid

__all__ = ["OnnxHeader", "read_graph_metadata", "read_onnx_metadata", "sha256_file"]

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

