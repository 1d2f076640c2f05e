"""Tiny ONNX graphs written byte by byte, for runtime tests without the ``onnx`` package.

``tests/deploy`` must run where only ``pip install .`` was done (no torch, no onnx), so the
graphs the backend and segmenter tests need are encoded here with a minimal protobuf writer
(the ONNX schema's field numbers; see onnx/onnx.proto). The graphs are analytic, so tests
know the exact answer:

* :func:`threshold_decoder`: ``logits = gain * (patches[:, 0, 3, 3, 3] - latent[0, 0, 0])``
  (+ 0 * coords): a voxel is foreground where its normalised value exceeds the threshold
  the encoder put in the latent. Dense segmentation = ``normalised > threshold``, exactly.
* :func:`threshold_encoder`: ``latent = threshold`` everywhere (+ 0 * mean(volume)); with a
  coarse grid also ``coarse_logits = gain * (avgpool(volume[:, :1]) - threshold)``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

_FLOAT, _INT64 = 1, 7
_ELEM = {"float32": _FLOAT, "int64": _INT64, "float16": 10}


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_key(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def int_field(field: int, value: int) -> bytes:
    return field_key(field, 0) + varint(value)


def bytes_field(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return field_key(field, 2) + varint(len(data)) + data


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims 1, data_type 2, name 8, raw_data 9 (little-endian)."""
    arr = np.ascontiguousarray(array)
    body = b"".join(int_field(1, d) for d in arr.shape)
    body += int_field(2, _ELEM[arr.dtype.name]) + bytes_field(8, name) + bytes_field(9, arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return body


def _attribute(name: str, value: object) -> bytes:
    """AttributeProto: name 1, f 2, i 3, t 5, ints 8, type 20."""
    body = bytes_field(1, name)
    if isinstance(value, float):
        body += field_key(2, 5) + struct.pack("<f", value) + int_field(20, 1)
    elif isinstance(value, int):
        body += int_field(3, value) + int_field(20, 2)
    elif isinstance(value, np.ndarray):
        body += bytes_field(5, tensor("", value)) + int_field(20, 4)
    else:
        body += b"".join(int_field(8, int(v)) for v in value) + int_field(20, 7)  # type: ignore[union-attr]
    return body


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: object) -> bytes:
    """NodeProto: input 1, output 2, name 3, op_type 4, attribute 5."""
    body = b"".join(bytes_field(1, i) for i in inputs) + b"".join(bytes_field(2, o) for o in outputs)
    body += bytes_field(3, f"{op}_{outputs[0]}") + bytes_field(4, op)
    body += b"".join(bytes_field(5, _attribute(k, v)) for k, v in attrs.items())
    return body


def value_info(name: str, dtype: str, shape: Sequence[int | str]) -> bytes:
    """ValueInfoProto(name 1, type 2 = TypeProto(tensor_type 1 = (elem_type 1, shape 2)))."""
    dims = b"".join(bytes_field(1, bytes_field(2, d) if isinstance(d, str) else int_field(1, d)) for d in shape)
    tensor_type = int_field(1, _ELEM[dtype]) + bytes_field(2, dims)
    return bytes_field(1, name) + bytes_field(2, bytes_field(1, tensor_type))


def model(
    nodes: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes] = (),
    metadata: Mapping[str, str] | None = None,
    *,
    opset: int = 17,
    producer: str = "ossnet-tests",
) -> bytes:
    """ModelProto bytes: ir_version 1, producer_name 2, model_version 5, graph 7, opset_import 8, metadata_props 14."""
    graph = b"".join(bytes_field(1, n) for n in nodes) + bytes_field(2, "g")
    graph += b"".join(bytes_field(5, t) for t in initializers)
    graph += b"".join(bytes_field(11, v) for v in inputs) + b"".join(bytes_field(12, v) for v in outputs)
    body = int_field(1, 8) + bytes_field(2, producer) + int_field(5, 1) + bytes_field(7, graph)
    body += bytes_field(8, bytes_field(1, "") + int_field(2, opset))
    for key, value in (metadata or {}).items():
        body += bytes_field(14, bytes_field(1, key) + bytes_field(2, value))
    return body


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def threshold_decoder(
    patch_channels: int,
    latent_shape: tuple[int, int],
    *,
    gain: float = 4.0,
    with_patches: bool = True,
    metadata: Mapping[str, str] | None = None,
    coords_name: str = "coords",
    patches_name: str = "patches",
    latent_name: str = "latent",
    logits_name: str = "logits",
) -> bytes:
    """Decoder ``logits (N, 1) = gain * (patches[:, 0, 3, 3, 3] - latent[0, 0, 0])``.

    Without patches (an O-Net-shaped decoder) the first coordinate takes the patch's place:
    ``logits = gain * (coords[:, 0] - latent[0, 0, 0])``.
    """
    k, length = latent_shape
    inits = [
        tensor("zero", np.zeros((), np.float32)), tensor("gain", np.array(gain, np.float32)),
        tensor("axes1", _i64(1)), tensor("flat", _i64(-1, 1)),
        tensor("lat_starts", _i64(0, 0)), tensor("lat_ends", _i64(1, 1)), tensor("lat_axes", _i64(1, 2)),
    ]
    nodes = [
        node("Mul", [coords_name, "zero"], ["coords0"]),
        node("ReduceSum", ["coords0", "axes1"], ["coords_term"], keepdims=1),
        node("Slice", [latent_name, "lat_starts", "lat_ends", "lat_axes"], ["t3"]),
        node("Reshape", ["t3", "flat"], ["threshold"]),
    ]
    inputs = [value_info(coords_name, "float32", ["num_queries", 3])]
    if with_patches:
        inits += [tensor("p_starts", _i64(0, 3, 3, 3)), tensor("p_ends", _i64(1, 4, 4, 4)),
                  tensor("p_axes", _i64(1, 2, 3, 4))]
        nodes += [node("Slice", [patches_name, "p_starts", "p_ends", "p_axes"], ["centre5"]),
                  node("Reshape", ["centre5", "flat"], ["value"])]
        inputs.append(value_info(patches_name, "float32", ["num_queries", patch_channels, 7, 7, 7]))
    else:
        inits += [tensor("c_starts", _i64(0)), tensor("c_ends", _i64(1)), tensor("c_axes", _i64(1))]
        nodes.append(node("Slice", [coords_name, "c_starts", "c_ends", "c_axes"], ["value"]))
    nodes += [node("Sub", ["value", "threshold"], ["diff"]), node("Mul", ["diff", "gain"], ["scaled"]),
              node("Add", ["scaled", "coords_term"], [logits_name])]
    inputs.append(value_info(latent_name, "float32", [1, k, length]))
    return model(nodes, inputs, [value_info(logits_name, "float32", ["num_queries", 1])], inits, metadata)


def threshold_encoder(
    channels: int,
    global_shape: tuple[int, int, int],
    latent_shape: tuple[int, int],
    *,
    threshold: float = 0.0,
    coarse_shape: tuple[int, int, int] | None = None,
    gain: float = 4.0,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Encoder ``latent (1, K, L) = threshold``; optional ``coarse_logits`` by average pooling."""
    k, length = latent_shape
    inits = [tensor("zero", np.zeros((), np.float32)), tensor("thr", np.array(threshold, np.float32)),
             tensor("lat_shape", _i64(1, k, length))]
    nodes = [
        node("ReduceMean", ["volume"], ["mean"], keepdims=0),
        node("Mul", ["mean", "zero"], ["mean0"]),
        node("Add", ["mean0", "thr"], ["t0"]),
        node("Expand", ["t0", "lat_shape"], ["latent"]),
    ]
    outputs = [value_info("latent", "float32", [1, k, length])]
    if coarse_shape is not None:
        stride = [g // c for g, c in zip(global_shape, coarse_shape, strict=True)]
        inits += [tensor("gain", np.array(gain, np.float32)), tensor("v_starts", _i64(0)),
                  tensor("v_ends", _i64(1)), tensor("v_axes", _i64(1))]
        nodes += [
            node("Slice", ["volume", "v_starts", "v_ends", "v_axes"], ["vol0"]),
            node("AveragePool", ["vol0"], ["pooled"], kernel_shape=stride, strides=stride),
            node("Sub", ["pooled", "thr"], ["pdiff"]),
            node("Mul", ["pdiff", "gain"], ["coarse_logits"]),
        ]
        outputs.append(value_info("coarse_logits", "float32", [1, 1, *coarse_shape]))
    inputs = [value_info("volume", "float32", [1, channels, *global_shape])]
    return model(nodes, inputs, outputs, inits, metadata)


def threshold_pair_metadata(
    preprocess: dict[str, object],
    *,
    latent_shape: tuple[int, int] = (6, 16),
    coarse_shape: tuple[int, int, int] | None = None,
    pair_id: str = "0" * 64,
    variant: str = "ossnet_c",
    with_patches: bool = True,
    domain: dict[str, object] | None = None,
    labels: dict[str, str] | None = None,
    label_codes: dict[str, object] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """``metadata_props`` of an encoder and a decoder exported together (ossnet metadata schema)."""
    from ossnet_deploy.metadata import FORMAT_VERSION, GraphMetadata, IOSpec, SchedulerFacts, TensorSpec
    from ossnet_deploy.preprocess import PreprocessConfig

    config = PreprocessConfig.from_dict(preprocess)
    k, length = latent_shape
    latent = TensorSpec("latent", "float32", (1, k, length))
    enc_out = [latent]
    if coarse_shape is not None:
        enc_out.append(TensorSpec("coarse_logits", "float32", (1, 1, *coarse_shape)))
    enc_io = IOSpec(inputs=(TensorSpec("volume", "float32", (1, len(config.channels), *config.global_shape)),),
                    outputs=tuple(enc_out))
    dec_in = [TensorSpec("coords", "float32", ("num_queries", 3))]
    if with_patches:
        dec_in.append(TensorSpec("patches", "float32", ("num_queries", config.patch_channels(), 7, 7, 7)))
    dec_in.append(latent)
    dec_io = IOSpec(inputs=tuple(dec_in), outputs=(TensorSpec("logits", "float32", ("num_queries", 1)),))
    facts = SchedulerFacts(has_coarse_seg=coarse_shape is not None, grid_shape=config.shape,
                           coarse_shape=coarse_shape, threshold_logit=0.0)
    common = dict(format_version=FORMAT_VERSION, pair_id=pair_id, variant=variant, preset="test",
                  model_config={"latent": list(latent_shape)}, preprocess=config.to_dict(),
                  labels=labels or {"1": "bright"}, scheduler=facts, parity={}, provenance={"note": "synthetic"},
                  label_codes=label_codes)
    encoder = GraphMetadata(role="encoder", io=enc_io, domain=domain, **common)  # type: ignore[arg-type]
    decoder = GraphMetadata(role="decoder", io=dec_io, **common)  # type: ignore[arg-type]
    return encoder.to_props(), decoder.to_props()


def write_threshold_pair(
    folder: object,
    preprocess: dict[str, object],
    *,
    coarse: bool = True,
    pair_id: str = "0" * 64,
    decoder_pair_id: str | None = None,
    threshold: float = 0.0,
    latent_shape: tuple[int, int] = (6, 16),
    domain: dict[str, object] | None = None,
    labels: dict[str, str] | None = None,
    label_codes: dict[str, object] | None = None,
) -> None:
    """Write ``encoder.onnx`` + ``decoder.onnx`` of the threshold model into ``folder``.

    The model labels a voxel 1 where its normalised first-channel value exceeds ``threshold``.
    ``decoder_pair_id`` gives the decoder another ``pair_id`` (a mismatched pair); ``labels`` and
    ``label_codes`` replace the metadata's ``{"1": "bright"}`` and its (absent) codes.
    """
    from pathlib import Path

    from ossnet_deploy.preprocess import PreprocessConfig

    config = PreprocessConfig.from_dict(preprocess)
    coarse_shape = tuple(g // 4 for g in config.global_shape) if coarse else None
    enc_props, _ = threshold_pair_metadata(preprocess, latent_shape=latent_shape, coarse_shape=coarse_shape,
                                           pair_id=pair_id, domain=domain, labels=labels,
                                           label_codes=label_codes)  # type: ignore[arg-type]
    _, dec_props = threshold_pair_metadata(preprocess, latent_shape=latent_shape, coarse_shape=coarse_shape,
                                           pair_id=decoder_pair_id or pair_id, labels=labels,
                                           label_codes=label_codes)  # type: ignore[arg-type]
    out = Path(str(folder))
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.onnx").write_bytes(threshold_encoder(
        len(config.channels), config.global_shape, latent_shape, threshold=threshold,
        coarse_shape=coarse_shape, metadata=enc_props))  # type: ignore[arg-type]
    (out / "decoder.onnx").write_bytes(threshold_decoder(config.patch_channels(), latent_shape, metadata=dec_props))


def two_level_phantom(
    shape: tuple[int, int, int] = (24, 26, 20),
    *,
    centre: tuple[float, float, float] | None = None,
    radius: float = 4.0,
    head: float = 50.0,
    bright: float = 100.0,
) -> np.ndarray:
    """``(X, Y, Z)`` float32: an ellipsoidal "head" of value ``head`` holding a bright sphere.

    Background is 0, so ``zscore_foreground`` normalises over the head; the sphere is small
    enough that the foreground mean lies between ``head`` and ``bright``, where the threshold
    model puts its boundary: the expected segmentation is ``vol > vol[vol > 0].mean()``.
    """
    x, y, z = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    vol = np.zeros(shape, np.float32)
    inside = ((x - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.45 * shape[1])) ** 2 + (
        (z - c[2]) / (0.45 * shape[2])) ** 2 < 1
    vol[inside] = head
    sc = centre if centre is not None else (c[0] - 2, c[1] + 1, c[2] - 1)
    vol[(x - sc[0]) ** 2 + (y - sc[1]) ** 2 + (z - sc[2]) ** 2 < radius**2] = bright
    return vol


def expected_threshold_labels(vol: np.ndarray) -> np.ndarray:
    """What the threshold model gives for an unresampled volume: value above the foreground mean."""
    fg = vol[vol > 0].astype(np.float64)
    return (vol.astype(np.float64) > fg.mean()).astype(np.uint8)
