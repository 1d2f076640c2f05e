"""``decoder.fp16.onnx``: the decoder in half precision, with fp32 IO, PAU and normalisation.

Why: TensorRT 11 has no FP16 builder flag (precision must be in the ONNX graph) and the CUDA EP
only runs fp16 from an fp16 graph. The decoder dominates inference cost (it runs per query), so
only the decoder gets an fp16 twin; the encoder runs once per volume.

Conversion: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True,
node_block_list=...)``. The block list holds every node the dynamo exporter emitted for a PAU
(``x**5`` overflows fp16 for |x| >= 10) or a normalisation (CBN scale/shift, BatchNorm). The
exporter records, per ONNX node, the module scope it came from in the node's
``metadata_props``: ``pkg.torch.onnx.class_hierarchy`` (the classes from the root module down,
e.g. ``[..., 'ossnet_train.decoder.DecoderBlock', 'ossnet_train.pau.PAU', 'aten.mul.Tensor']``)
and ``namespace`` (the same path with attribute names). A node is kept in fp32 when either
names one of :data:`FP32_SCOPES`; per-volume nodes (not depending on ``coords``/``patches``)
and casts to float stay fp32 too (:func:`fp32_node_names`). Exported files keep ``namespace``
so the conversion can be redone from a written ``decoder.onnx``. :func:`convert_decoder` also
closes two gaps of the converter (weights of blocked nodes converted anyway; blocked nodes'
outputs rounded to fp16 between blocked nodes), without which "PAU in fp32" would not hold.

Gate (every ``--fp16`` export): against the fp32 decoder in ONNX Runtime, logits within
``atol = rtol = 1e-2`` at both verification query counts, and Dice >= 0.999 between the two
dense segmentations of a box of the phantom (or ``--reference-volume``). Otherwise the fp16
file is not written and the measured figures are reported.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from ossnet_deploy.metadata import COORDS, LATENT, PATCHES, VOLUME
from ossnet_deploy.metrics import dice
from ossnet_deploy.preprocess import PreprocessConfig, encoder_input
from ossnet_export.verify import (
    ParityError,
    ParityReport,
    VerificationCase,
    compare,
    cpu_session,
    decoder_feed,
    dense_labels,
    gate_box,
    onnx_decode,
)
from ossnet_train.config import ModelConfig

__all__ = [
    "FP16_ATOL",
    "FP16_RTOL",
    "FP32_SCOPES",
    "MIN_DICE",
    "convert_decoder",
    "fp16_gate",
    "fp32_node_names",
]

FP16_RTOL = 1e-2
FP16_ATOL = 1e-2
MIN_DICE = 0.999
#: Module classes whose nodes stay fp32 (matched as substrings of the node's scope metadata).
FP32_SCOPES: tuple[str, ...] = (
    "ossnet_train.pau.PAU",
    "ossnet_train.decoder.ConditionalBatchNorm",
    "torch.nn.modules.batchnorm.",
)
_SCOPE_KEYS = ("pkg.torch.onnx.class_hierarchy", "namespace")


def _per_query_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that change per query (``coords``, ``patches``); the rest is per volume."""
    return {value.name for value in model.graph.input if value.name in (COORDS, PATCHES)}


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay fp32.

    * nodes in PAU and normalisation scopes (:data:`FP32_SCOPES`);
    * per-volume nodes, which do not depend on ``coords`` or ``patches`` (the latent's channel
      selection, the CBN ``gamma``/``beta`` Linears, block 0's latent term): they run once per
      call whatever the query count, so fp16 would save nothing and only round the latent;
    * ``Cast(to=FLOAT)`` nodes (the exporter's casts of bool/integer tensors, e.g.
      ``torch.eye`` in the patch encoder's matrix form): onnxconverter-common retypes their
      outputs but not their ``to`` attribute, which ONNX Runtime refuses.

    Raises:
        ParityError: the graph carries no scope metadata, or no node matched (an exporter
            change; converting blindly could put PAU in fp16, so nothing is converted).
    """
    names = []
    scoped = 0
    matched = 0
    per_query = _per_query_inputs(model)
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scope = " ".join(props.get(key, "") for key in _SCOPE_KEYS)
        if scope.strip():
            scoped += 1
        in_scope = any(marker in scope for marker in FP32_SCOPES)
        matched += in_scope
        to_float = node.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute
        )
        # Nodes are in topological order, so one pass finds everything downstream of a query input.
        depends_on_query = any(name in per_query for name in node.input)
        if depends_on_query:
            per_query.update(node.output)
        if in_scope or to_float or not depends_on_query:
            if not node.name:
                raise ParityError(f"an fp32 node ({node.op_type}) has no name; onnxconverter-common blocks nodes by name")
            names.append(node.name)
    if scoped == 0 or matched == 0:
        raise ParityError(
            "the decoder graph carries no module-scope metadata for PAU/normalisation nodes "
            f"(scoped nodes: {scoped}, matched: {matched}); re-export it with this ossnet-export"
        )
    return names


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _drop_round_trips(model: onnx.ModelProto) -> None:
    """Remove ``Cast(fp16) -> Cast(fp32)`` pairs: the fp32 consumer reads the original tensor.

    onnxconverter-common casts the output of every blocked node to fp16 and back to fp32 before
    the next blocked node, so a PAU "kept in fp32" would still round each of its intermediate
    results to fp16. Casts that still feed fp16 nodes stay; unused nodes are removed.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    rename = {}
    for node in graph.node:
        if _cast_to(node) == onnx.TensorProto.FLOAT:
            source = producer.get(node.input[0])
            if source is not None and _cast_to(source) == onnx.TensorProto.FLOAT16:
                rename[node.output[0]] = source.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    outputs = {value.name for value in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        kept = [node for node in graph.node if any(out in used for out in node.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)


def convert_decoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 twin of an fp32 decoder (``model`` is not modified).

    Inputs and outputs stay fp32; the nodes of :func:`fp32_node_names` compute in fp32 on fp32
    weights. Two gaps of onnxconverter-common are closed here: it converts initializers that only
    blocked nodes read (it looks them up after renaming those nodes' inputs), so they are put
    back in fp32; and it rounds every blocked node's output to fp16 between blocked nodes, which
    :func:`_drop_round_trips` undoes.
    """
    from onnxconverter_common import float16

    source = copy.deepcopy(model)
    block = fp32_node_names(source)
    blocked = set(block)
    consumers: dict[str, list[str]] = {}
    for node in source.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    fp32_weights = {
        init.name: copy.deepcopy(init)
        for init in source.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT
        and consumers.get(init.name)
        and all(user in blocked for user in consumers[init.name])
    }
    with warnings.catch_warnings():
        # One warning per weight below fp16's smallest normal (clamped to 1e-7); expected, and
        # the gate measures the effect.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(source, keep_io_types=True, node_block_list=block)
    for init in converted.graph.initializer:
        if init.name in fp32_weights and init.data_type == onnx.TensorProto.FLOAT16:
            init.CopyFrom(fp32_weights[init.name])
    for value in converted.graph.value_info:
        # The converter also retyped these weights' value_info; they are fp32 again.
        if value.name in fp32_weights:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    _drop_round_trips(converted)
    del converted.metadata_props[:]
    return converted


def fp16_gate(
    encoder_path: str | os.PathLike[str],
    fp32_path: str | os.PathLike[str],
    fp16_path: str | os.PathLike[str],
    case: VerificationCase,
    config: ModelConfig,
    preprocess: PreprocessConfig,
    *,
    dice_box: int = 24,
) -> ParityReport:
    """Compare the fp16 decoder with the fp32 decoder (both in ONNX Runtime CPU).

    Logits at every query set of ``case`` within ``FP16_ATOL``/``FP16_RTOL``, and the Dice of
    the dense segmentations of a ``dice_box``^3 box around the object >= ``MIN_DICE``. Both
    decoders get the fp32 encoder's latent.

    Returns:
        the report; ``extra`` holds ``dice``, ``dice_voxels``, ``dice_foreground`` and
        ``dice_box``. Raise with :meth:`ParityReport.raise_if_failed` or :func:`check_gate`.
    """
    latent = cpu_session(encoder_path).run([LATENT], {VOLUME: np.ascontiguousarray(encoder_input(case.prepared))})[0]
    full = cpu_session(fp32_path)
    half = cpu_session(fp16_path)
    deviations = []
    for idx in case.queries:
        feed = decoder_feed(case.prepared, idx, config, preprocess, latent)
        deviations.append(
            compare(f"fp16 decoder logits (N={len(idx)})", onnx_decode(half, feed), onnx_decode(full, feed),
                    rtol=FP16_RTOL, atol=FP16_ATOL)
        )
    box = gate_box(case, dice_box)
    labels32 = dense_labels(lambda feed: onnx_decode(full, feed), case, config, preprocess, latent, box)
    labels16 = dense_labels(lambda feed: onnx_decode(half, feed), case, config, preprocess, latent, box)
    extra: dict[str, Any] = {
        "dice": dice(labels16, labels32),
        "dice_min": MIN_DICE,
        "dice_voxels": int(labels32.size),
        "dice_foreground_fp32": int(np.count_nonzero(labels32)),
        "dice_box": [[s.start, s.stop] for s in box],
        "against": "fp32 decoder.onnx (ONNX Runtime CPU)",
    }
    return ParityReport(tuple(deviations), case.reference, tuple(len(q) for q in case.queries), extra)


def check_gate(report: ParityReport, path: str | os.PathLike[str]) -> None:
    """Raise :class:`ParityError` with the measured figures unless the fp16 gate passed."""
    failures: Sequence[str] = []
    if not report.ok:
        failures = [report.worst.describe()]
    if report.extra["dice"] < MIN_DICE:
        failures = [
            *failures,
            f"Dice {report.extra['dice']:.5f} < {MIN_DICE} between fp16 and fp32 dense segmentations of "
            f"{report.extra['dice_voxels']} voxels",
        ]
    if failures:
        raise ParityError(
            f"{os.fspath(path)}: fp16 decoder refused, not written (expected logits within "
            f"atol = rtol = {FP16_ATOL:g} of fp32 and Dice >= {MIN_DICE}; found {'; '.join(failures)}). "
            "Fix: use the fp32 decoder (the runtime's default precision)"
        )
