"""The dependency-free metadata reader against ONNX files written by the real ``onnx`` package.

The ground truth is onnxruntime's ``get_modelmeta()``; the files carry a 20 MB initializer so
the reader's seek over the graph is exercised on a realistic layout (``onnx`` serialises the
graph, field 7, before ``metadata_props``, field 14).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

from ossnet_deploy import metadata as md
from ossnet_deploy import onnx_metadata as om
from ossnet_deploy.errors import ModelFormatError

WEIGHT_FLOATS = 5 * (1 << 20)  # 20 MB of float32


def make_meta() -> md.GraphMetadata:
    return md.GraphMetadata(
        format_version=md.FORMAT_VERSION,
        role=md.ROLE_DECODER,
        pair_id="5e" * 32,
        variant="ossnet_b",
        preset="brats",
        model_config={"latent_features": 320, "large_patches": True},
        preprocess={
            "geometry": "fixed_spacing_pad",
            "shape": [256, 256, 160],
            "channels": ["flair", "t1", "t1ce", "t2"],
        },
        labels={"1": "tumour", "2": "Ödem ✓"},
        io=md.IOSpec(
            inputs=(
                md.TensorSpec(md.COORDS, "float32", (md.NUM_QUERIES, 3)),
                md.TensorSpec(md.PATCHES, "float32", (md.NUM_QUERIES, 8, 7, 7, 7)),
                md.TensorSpec(md.LATENT, "float32", (1, 1, 320)),
            ),
            outputs=(md.TensorSpec(md.LOGITS, "float32", (md.NUM_QUERIES, 1)),),
        ),
        scheduler=md.SchedulerFacts(has_coarse_seg=False, grid_shape=(256, 256, 160)),
        parity={"max_abs_logit": 3e-6},
        provenance={"onnx": onnx.__version__, "opset": 17},
    )


def make_model(props: dict[str, str] | None, *, producer: str = md.PRODUCER_NAME) -> onnx.ModelProto:
    """y = x + w with a 20 MB initializer w."""
    weight = onh.from_array(np.arange(WEIGHT_FLOATS, dtype=np.float32), name="w")
    graph = oh.make_graph(
        [oh.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [WEIGHT_FLOATS])],
        initializer=[weight],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], producer_name=producer)
    model.ir_version = 8
    model.model_version = md.FORMAT_VERSION
    if props is not None:
        oh.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
    onnx.save(make_model(make_meta().to_props()), path)
    return path


def test_reader_equals_onnxruntime_on_onnx_written_file(big_model):
    assert big_model.stat().st_size > 20 << 20
    header = om.read_onnx_metadata(big_model)
    model_meta = ort.InferenceSession(str(big_model), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert header.metadata_props == dict(model_meta.custom_metadata_map)
    assert header.producer_name == model_meta.producer_name == md.PRODUCER_NAME
    assert header.model_version == model_meta.version == md.FORMAT_VERSION
    assert header.ir_version == 8
    assert om.read_graph_metadata(big_model) == make_meta()


def test_onnx_loader_sees_the_same_props(big_model):
    model = onnx.load(big_model, load_external_data=False)
    assert {p.key: p.value for p in model.metadata_props} == om.read_onnx_metadata(big_model).metadata_props


def test_reader_does_not_load_the_20mb_graph(big_model):
    tracemalloc.start()
    try:
        om.read_graph_metadata(big_model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"reading metadata allocated {peak} bytes"


def test_external_data_model(tmp_path):
    path = tmp_path / "decoder.onnx"
    onnx.save(
        make_model(make_meta().to_props()),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="decoder.onnx.data",
        size_threshold=1024,
    )
    assert path.stat().st_size < 1 << 20
    assert om.read_graph_metadata(path) == make_meta()


def test_onnx_model_without_ossnet_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    onnx.save(make_model({"author": "someone"}, producer="pytorch"), path)
    assert om.read_onnx_metadata(path).metadata_props == {"author": "someone"}
    with pytest.raises(ModelFormatError, match=r"plain\.onnx: is not an ossnet ONNX graph.*'pytorch'"):
        om.read_graph_metadata(path)


def test_truncated_onnx_file_is_refused(big_model, tmp_path):
    path = tmp_path / "cut.onnx"
    with open(big_model, "rb") as src:
        path.write_bytes(src.read(5 << 20))
    with pytest.raises(ModelFormatError, match=r"cut\.onnx: is not an ossnet ONNX graph.*truncated"):
        om.read_graph_metadata(path)
