"""The metadata schema, the dependency-free ONNX metadata reader, pair and engine checks.

Runs without torch and without the ``onnx`` package: ONNX files are built by the small
protobuf writer below and cross-checked against onnxruntime, which reads them independently.
(tests/export/test_metadata_onnx.py does the same against files written by ``onnx`` itself.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime as ort
import pytest
from synthetic_models import bytes_field as _bytes_field
from synthetic_models import field_key as _tag
from synthetic_models import int_field as _int_field

from ossnet_deploy import metadata as md
from ossnet_deploy import onnx_metadata as om
from ossnet_deploy.backends import trt_engine
from ossnet_deploy.errors import ModelFormatError, OutputExistsError

_str_field = _bytes_field  # bytes_field encodes str as UTF-8

# ----------------------------------------------------------------------------------------
# A minimal protobuf writer for ONNX ModelProto (test helper; field numbers from onnx.proto3)


def _value_info(name: str, dims: list[int]) -> bytes:
    # ValueInfoProto{1 name, 2 TypeProto{1 tensor_type{1 elem_type, 2 shape{1 dim{1 dim_value}}}}}
    shape = b"".join(_bytes_field(1, _int_field(1, d)) for d in dims)
    tensor_type = _int_field(1, 1) + _bytes_field(2, shape)  # elem_type 1 = FLOAT
    return _str_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


def _graph(weight_floats: int) -> bytes:
    """GraphProto computing y = x + w, x: float[1], w: float[weight_floats] initializer."""
    node = (
        _str_field(1, "x")
        + _str_field(1, "w")
        + _str_field(2, "y")
        + _str_field(3, "add")
        + _str_field(4, "Add")
    )
    raw = np.arange(weight_floats, dtype="<f4").tobytes()
    # TensorProto{1 dims, 2 data_type, 8 name, 9 raw_data}
    weight = _int_field(1, weight_floats) + _int_field(2, 1) + _str_field(8, "w") + _bytes_field(9, raw)
    return (
        _bytes_field(1, node)
        + _str_field(2, "g")
        + _bytes_field(5, weight)
        + _bytes_field(11, _value_info("x", [1]))
        + _bytes_field(12, _value_info("y", [weight_floats]))
    )


def onnx_bytes(
    props: dict[str, str],
    *,
    producer: str = md.PRODUCER_NAME,
    model_version: int | None = md.FORMAT_VERSION,
    weight_floats: int = 1024,
    props_first: bool = False,
    extra_fields: bytes = b"",
) -> bytes:
    """A valid ONNX model (opset 17) with the given ``metadata_props``."""
    head = _int_field(1, 8) + _str_field(2, producer)  # ir_version 8
    if model_version is not None:
        head += _int_field(5, model_version)
    meta = b"".join(_bytes_field(14, _str_field(1, k) + _str_field(2, v)) for k, v in props.items())
    body = _bytes_field(7, _graph(weight_floats)) + _bytes_field(8, _str_field(1, "") + _int_field(2, 17))
    return head + extra_fields + (meta + body if props_first else body + meta)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------
# Metadata fixtures


def make_meta(
    role: str = md.ROLE_ENCODER, *, coarse: bool = True, patches: bool = True, **changes
) -> md.GraphMetadata:
    if role == md.ROLE_ENCODER:
        outputs = [md.TensorSpec(md.LATENT, "float32", (1, 6, 336))]
        if coarse:
            outputs.append(md.TensorSpec(md.COARSE_LOGITS, "float32", (1, 1, 14, 16, 12)))
        io = md.IOSpec(
            inputs=(md.TensorSpec(md.VOLUME, "float32", (1, 1, 112, 128, 96)),), outputs=tuple(outputs)
        )
    else:
        inputs = [md.TensorSpec(md.COORDS, "float32", (md.NUM_QUERIES, 3))]
        if patches:
            inputs.append(md.TensorSpec(md.PATCHES, "float32", (md.NUM_QUERIES, 2, 7, 7, 7)))
        inputs.append(md.TensorSpec(md.LATENT, "float32", (1, 6, 336)))
        io = md.IOSpec(
            inputs=tuple(inputs), outputs=(md.TensorSpec(md.LOGITS, "float32", (md.NUM_QUERIES, 1)),)
        )
    fields = dict(
        format_version=md.FORMAT_VERSION,
        role=role,
        pair_id="ab" * 32,
        variant="ossnet_d",
        preset="demo",
        model_config={"latent_features": 336, "encoder_channels": (1, 16, 32, 64, 128), "activation": "pau"},
        preprocess={
            "geometry": "fixed_spacing_pad",
            "shape": (224, 256, 192),
            "spacing_mm": 1.0,
            "channels": ("t1",),
        },
        labels={"1": "Weiße Substanz"},
        io=io,
        scheduler=md.SchedulerFacts(
            has_coarse_seg=coarse, grid_shape=(224, 256, 192), coarse_shape=(14, 16, 12) if coarse else None
        ),
        parity={"max_abs_logit": 1.5e-5},
        provenance={"git": "0123abc", "opset": 17},
    )
    fields.update(changes)
    return md.GraphMetadata(**fields)


def props_with(meta: md.GraphMetadata, **raw: str) -> dict[str, str]:
    """``meta.to_props()`` with some keys replaced by raw strings (None-valued keys removed)."""
    props = meta.to_props()
    for name, value in raw.items():
        key = md.KEY_PREFIX + name
        if value is None:
            del props[key]
        else:
            props[key] = value
    return props


# ----------------------------------------------------------------------------------------
# IO names and keys


def test_io_names_follow_the_contract():
    assert (md.VOLUME, md.LATENT, md.COARSE_LOGITS) == ("volume", "latent", "coarse_logits")
    assert (md.COORDS, md.PATCHES, md.LOGITS, md.NUM_QUERIES) == (
        "coords",
        "patches",
        "logits",
        "num_queries",
    )
    assert md.ENCODER_INPUTS == ("volume",)
    assert md.encoder_output_names(True) == ("latent", "coarse_logits")
    assert md.encoder_output_names(False) == ("latent",)
    assert md.decoder_input_names(True) == ("coords", "patches", "latent")
    assert md.decoder_input_names(False) == ("coords", "latent")
    assert md.DECODER_OUTPUTS == ("logits",)


def test_keys_are_prefixed_unique_and_cover_every_field():
    assert len(set(md.METADATA_KEYS)) == len(md.METADATA_KEYS) == 12
    assert all(key.startswith("ossnet.") for key in md.METADATA_KEYS)
    fields = {f.name for f in dataclasses.fields(md.GraphMetadata)}
    keys = (*md.METADATA_KEYS, *md.OPTIONAL_METADATA_KEYS)
    assert {key.removeprefix("ossnet.") for key in keys} == fields
    assert set(make_meta().to_props()) == set(md.METADATA_KEYS)  # optional keys are omitted when absent


def test_the_optional_domain_round_trips_and_is_omitted_when_absent():
    domain = {"channels": ["t1"], "cases": 3}
    with_domain = dataclasses.replace(make_meta(), domain=domain)
    props = with_domain.to_props()
    assert md.KEY_DOMAIN in props
    assert md.GraphMetadata.from_props(props) == with_domain
    assert md.GraphMetadata.from_props(make_meta().to_props()).domain is None


def test_the_optional_label_codes_round_trip_are_omitted_when_absent_and_checked():
    from ossnet_deploy.label_codes import KNOWN_LABEL_CODES, known_codes_metadata

    labels = make_meta().labels
    codes = known_codes_metadata({"1": "white_matter"})
    assert codes == {"1": KNOWN_LABEL_CODES["white_matter"].to_dict()}
    assert codes["1"]["type"] == ["SCT", "389080008", "White Matter"] and "CID 7151" in codes["1"]["source"]
    assert known_codes_metadata({"1": "bright"}) is None  # nothing known: the key is omitted
    with_codes = dataclasses.replace(make_meta(), label_codes={value: codes["1"] for value in labels})
    props = with_codes.to_props()
    assert md.KEY_LABEL_CODES in props and md.KEY_LABEL_CODES not in make_meta().to_props()
    assert md.GraphMetadata.from_props(props) == with_codes
    # an older runtime's reader (only the keys it knows) still reads the model
    older = {k: v for k, v in props.items() if k in md.METADATA_KEYS}
    assert md.GraphMetadata.from_props(older).label_codes is None
    bad = [{"1": {"category": ["SCT", "1"], "type": ["SCT", "2", "x"], "source": "s"}},
           {"1": {"category": ["SCT", "1", "a"], "type": ["SCT", "2", "x"]}},
           {"99": codes["1"]}]
    for value in bad:
        payload = {**props, md.KEY_LABEL_CODES: json.dumps(value)}
        with pytest.raises(ModelFormatError, match="label_codes"):
            md.GraphMetadata.from_props(payload)


# ----------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "meta",
    [
        make_meta(),
        make_meta(coarse=False),
        make_meta(md.ROLE_DECODER),
        make_meta(md.ROLE_DECODER, patches=False),
    ],
    ids=["encoder-coarse", "encoder", "decoder", "decoder-onet"],
)
def test_props_and_json_round_trip(meta):
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props[md.KEY_FORMAT_VERSION]) == md.FORMAT_VERSION
    assert json.loads(props[md.KEY_ROLE]) == meta.role
    assert md.GraphMetadata.from_props(props, "m.onnx") == meta
    assert md.GraphMetadata.from_json(meta.to_json(), "m.json") == meta


def test_payload_tuples_are_normalised_so_round_trips_compare_equal():
    meta = make_meta()
    assert meta.preprocess["shape"] == [224, 256, 192]
    assert meta.scheduler.grid_shape == (224, 256, 192)
    assert md.GraphMetadata.from_props(meta.to_props()).preprocess == meta.preprocess


def test_non_json_payload_is_refused_at_construction():
    with pytest.raises(ValueError, match="parity must be plain JSON"):
        make_meta(parity={"max_abs_logit": float("nan")})


def test_unknown_extra_keys_are_ignored():
    props = make_meta().to_props() | {"ossnet.future_field": "1", "other.tool": "x"}
    assert md.GraphMetadata.from_props(props) == make_meta()


# ----------------------------------------------------------------------------------------
# Refusals of from_props


def test_newer_format_version_is_refused_with_upgrade_hint():
    props = props_with(make_meta(), format_version="2", io=None)  # a newer format may lack keys
    with pytest.raises(
        ModelFormatError, match=r"enc\.onnx: written by a newer ossnet.*pip install -U ossnet"
    ):
        md.GraphMetadata.from_props(props, "enc.onnx")


@pytest.mark.parametrize("raw", ["0", "true", '"1"', "1.0"])
def test_bad_format_version_is_refused(raw):
    with pytest.raises(ModelFormatError, match=r"enc\.onnx: .*format_version"):
        md.GraphMetadata.from_props(props_with(make_meta(), format_version=raw), "enc.onnx")


def test_missing_keys_are_listed():
    props = props_with(make_meta(), labels=None, scheduler=None)
    with pytest.raises(ModelFormatError, match=r"enc\.onnx: ossnet metadata is incomplete.*ossnet\.labels"):
        md.GraphMetadata.from_props(props, "enc.onnx")


def test_non_json_value_is_refused():
    with pytest.raises(ModelFormatError, match=r"enc\.onnx: metadata value ossnet\.io is not JSON"):
        md.GraphMetadata.from_props(props_with(make_meta(), io="{inputs: [}"), "enc.onnx")


def test_nan_constant_is_refused():
    with pytest.raises(ModelFormatError, match=r"enc\.onnx: metadata value ossnet\.parity is not JSON.*NaN"):
        md.GraphMetadata.from_props(props_with(make_meta(), parity='{"x": NaN}'), "enc.onnx")


def test_unknown_role_is_refused():
    with pytest.raises(ModelFormatError, match=r"enc\.onnx: unknown graph role.*'middle'"):
        md.GraphMetadata.from_props(props_with(make_meta(), role='"middle"'), "enc.onnx")


def test_props_without_ossnet_keys_are_refused():
    with pytest.raises(ModelFormatError, match=r"x\.onnx: is not an ossnet ONNX graph"):
        md.GraphMetadata.from_props({"author": "someone"}, "x.onnx")


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("pair_id", "17", "pair_id must be a non-empty string"),
        ("labels", '{"one": "wm"}', "labels key 'one'"),
        ("labels", '{"300": "wm"}', "labels key '300'"),
        ("scheduler", '{"has_coarse_seg": true, "grid_shape": [8, 8, 8]}', "coarse_shape"),
        ("scheduler", '{"has_coarse_seg": false, "grid_shape": [8, 8]}', "grid_shape must be 3 positive"),
        ("io", '{"inputs": [], "outputs": []}', "io.inputs of the encoder"),
        (
            "io",
            '{"inputs": [{"name": "volume", "dtype": "float32", "shape": [1, true]}], "outputs": []}',
            "shape",
        ),
        ("model_config", "[1, 2]", "model_config must be a JSON object"),
    ],
)
def test_malformed_fields_are_refused(name, raw, message):
    with pytest.raises(
        ModelFormatError, match=rf"enc\.onnx: malformed ossnet metadata.*{re.escape(message)}"
    ):
        md.GraphMetadata.from_props(props_with(make_meta(), **{name: raw}), "enc.onnx")


def test_encoder_io_must_agree_with_coarse_fact():
    meta = make_meta(coarse=False)
    facts = md.SchedulerFacts(has_coarse_seg=True, grid_shape=(8, 8, 8), coarse_shape=(2, 2, 2))
    props = props_with(meta, scheduler=json.dumps(facts.to_dict()))
    with pytest.raises(ModelFormatError, match=r"io\.outputs of the encoder.*coarse_logits"):
        md.GraphMetadata.from_props(props, "enc.onnx")


# ----------------------------------------------------------------------------------------
# The protobuf reader


def test_reader_matches_onnxruntime(tmp_path):
    meta = make_meta()
    path = write(tmp_path / "enc.onnx", onnx_bytes(meta.to_props() | {"note": "ünïcode ✓"}, model_version=7))
    header = om.read_onnx_metadata(path)
    model_meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert header.metadata_props == dict(model_meta.custom_metadata_map)
    assert header.producer_name == model_meta.producer_name == md.PRODUCER_NAME
    assert header.model_version == model_meta.version == 7
    assert header.ir_version == 8
    assert om.read_graph_metadata(path) == meta


def test_reader_handles_any_field_order_and_skips_unknown_wire_types(tmp_path):
    # Field 30 fixed32 and field 31 fixed64 do not exist in ModelProto; readers must skip them.
    extra = _tag(30, 5) + struct.pack("<I", 7) + _tag(31, 1) + struct.pack("<Q", 9) + _int_field(32, 300)
    data = onnx_bytes(make_meta().to_props(), props_first=True, model_version=-3, extra_fields=extra)
    header = om.read_onnx_metadata(write(tmp_path / "m.onnx", data))
    assert header.metadata_props == make_meta().to_props()
    assert header.model_version == -3


def test_unset_model_version_reads_as_none(tmp_path):
    header = om.read_onnx_metadata(write(tmp_path / "m.onnx", onnx_bytes({}, model_version=None)))
    assert header.model_version is None
    assert header.metadata_props == {}


def test_reader_skips_the_graph_without_reading_it(tmp_path):
    weight_floats = 2 << 20  # 8 MB of initializer before the metadata
    path = write(tmp_path / "big.onnx", onnx_bytes(make_meta().to_props(), weight_floats=weight_floats))
    assert path.stat().st_size > 8 << 20
    tracemalloc.start()
    try:
        meta = om.read_graph_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert meta == make_meta()
    assert peak < 1 << 20, f"reading metadata allocated {peak} bytes"


def test_file_without_ossnet_metadata_is_refused(tmp_path):
    path = write(tmp_path / "foreign.onnx", onnx_bytes({"author": "x"}, producer="pytorch"))
    with pytest.raises(
        ModelFormatError, match=r"foreign\.onnx: is not an ossnet ONNX graph.*'pytorch'.*ossnet-export"
    ):
        om.read_graph_metadata(path)


def _nifti_bytes(tmp_path: Path) -> bytes:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "v.nii")
    return (tmp_path / "v.nii").read_bytes()


@pytest.mark.parametrize("kind", ["random", "nifti", "gzip", "truncated", "empty", "text"])
def test_foreign_or_damaged_files_are_refused(tmp_path, kind):
    valid = onnx_bytes(make_meta().to_props(), weight_floats=4096)
    data = {
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "nifti": _nifti_bytes(tmp_path),
        "gzip": b"\x1f\x8b\x08\x00" + bytes(200),
        "truncated": valid[: len(valid) // 2],
        "empty": b"",
        "text": b"ir_version: 8\nproducer_name: 'ossnet-export'\n" * 20,
    }[kind]
    path = write(tmp_path / f"{kind}.onnx", data)
    with pytest.raises(
        ModelFormatError, match=rf"{kind}\.onnx: is not an ossnet ONNX graph.*ossnet-export CHECKPOINT"
    ):
        om.read_graph_metadata(path)


def test_missing_model_file_and_folder_are_refused(tmp_path):
    with pytest.raises(ModelFormatError, match=r"nothere\.onnx: model file not found"):
        om.read_onnx_metadata(tmp_path / "nothere.onnx")
    with pytest.raises(ModelFormatError, match=rf"{tmp_path.name}: is a folder"):
        om.read_onnx_metadata(tmp_path)


def test_duplicate_metadata_key_is_refused(tmp_path):
    entry = _bytes_field(14, _str_field(1, md.KEY_ROLE) + _str_field(2, '"encoder"'))
    path = write(tmp_path / "dup.onnx", onnx_bytes(make_meta().to_props()) + entry)
    with pytest.raises(ModelFormatError, match=r"dup\.onnx: .*'ossnet\.role' appears twice"):
        om.read_onnx_metadata(path)


# ----------------------------------------------------------------------------------------
# Pair check


def test_matching_pair_passes():
    md.check_pair(make_meta(), make_meta(md.ROLE_DECODER), "enc.onnx", "dec.onnx")


@pytest.mark.parametrize(
    ("encoder", "decoder", "message"),
    [
        (make_meta(), make_meta(md.ROLE_DECODER, pair_id="cd" * 32), "pair_id differs"),
        (make_meta(md.ROLE_DECODER), make_meta(), "the two files are swapped"),
        (make_meta(), make_meta(), "roles are 'encoder' and 'encoder'"),
        (make_meta(), make_meta(md.ROLE_DECODER, format_version=2), "format_version differs"),
        (
            make_meta(),
            make_meta(md.ROLE_DECODER, preprocess=make_meta().preprocess | {"spacing_mm": 2.0}),
            "preprocess differs in ['spacing_mm']",
        ),
    ],
)
def test_mismatched_pair_is_refused(encoder, decoder, message):
    pattern = (
        rf"a/enc\.onnx and b/dec\.onnx: encoder and decoder are not one exported pair.*{re.escape(message)}"
    )
    with pytest.raises(ModelFormatError, match=pattern + r".*re-export both graphs from one checkpoint"):
        md.check_pair(encoder, decoder, Path("a/enc.onnx"), Path("b/dec.onnx"))


def test_latent_shape_mismatch_is_refused():
    decoder = make_meta(md.ROLE_DECODER)
    inputs = tuple(
        md.TensorSpec(s.name, s.dtype, (1, 1, 336)) if s.name == md.LATENT else s for s in decoder.io.inputs
    )
    decoder = dataclasses.replace(decoder, io=md.IOSpec(inputs, decoder.io.outputs))
    with pytest.raises(ModelFormatError, match=r"latent shape differs: \[1, 6, 336\] vs \[1, 1, 336\]"):
        md.check_pair(make_meta(), decoder, "enc.onnx", "dec.onnx")


# ----------------------------------------------------------------------------------------
# Engine side files


def make_engine_info(**changes) -> trt_engine.EngineInfo:
    fields = dict(
        metadata=make_meta(md.ROLE_DECODER),
        tensorrt_version="10.13.0",
        compute_capability="8.9",
        source_onnx_sha256="0f" * 32,
        profile_shapes={md.COORDS: ((1, 3), (4096, 3), (65536, 3))},
        precision="fp16",
        parity={"max_abs_logit": 2e-3},
    )
    fields.update(changes)
    return trt_engine.EngineInfo(**fields)


def test_engine_json_path():
    assert trt_engine.engine_json_path("m/decoder.engine") == Path("m/decoder.engine.json")
    assert trt_engine.engine_json_path("m/decoder_ctx.onnx") == Path("m/decoder_ctx.engine.json")


def test_engine_info_round_trip_through_side_file(tmp_path):
    info = make_engine_info()
    side = trt_engine.write_engine_info(info, tmp_path / "decoder.engine")
    assert side == tmp_path / "decoder.engine.json"
    assert trt_engine.read_engine_info(tmp_path / "decoder.engine") == info
    assert json.loads(side.read_text())["metadata"]["role"] == "decoder"
    with pytest.raises(OutputExistsError, match=r"decoder\.engine\.json: output already exists"):
        trt_engine.write_engine_info(info, tmp_path / "decoder.engine")


def test_matching_engine_passes():
    info = make_engine_info()
    trt_engine.check_engine(
        info, onnx_sha256="0f" * 32, tensorrt_version="10.13.0", compute_capability="8.9", path="d.engine"
    )
    trt_engine.check_engine(
        info, onnx_sha256=None, tensorrt_version="10.13.0", compute_capability="8.9", path="d.engine"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"onnx_sha256": "aa" * 32}, "source ONNX sha256 0f0f"),
        ({"tensorrt_version": "10.14.1"}, "TensorRT 10.13.0 vs 10.14.1 installed"),
        ({"compute_capability": "9.0"}, "compute capability 8.9 vs 9.0 on this GPU"),
    ],
)
def test_engine_mismatch_is_refused(changes, message):
    here = {"onnx_sha256": "0f" * 32, "tensorrt_version": "10.13.0", "compute_capability": "8.9"} | changes
    with pytest.raises(
        ModelFormatError,
        match=rf"d\.engine: engine was built for another setup.*{re.escape(message)}.*rebuild",
    ):
        trt_engine.check_engine(make_engine_info(), path="d.engine", **here)


def test_missing_or_malformed_side_file_is_refused(tmp_path):
    engine = tmp_path / "dec.engine"
    with pytest.raises(ModelFormatError, match=r"dec\.engine: engine has no side file.*dec\.engine\.json"):
        trt_engine.read_engine_info(engine)
    side = trt_engine.engine_json_path(engine)
    side.write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"dec\.engine\.json: malformed engine side file"):
        trt_engine.read_engine_info(engine)
    payload = make_engine_info().to_dict()
    payload["metadata"]["format_version"] = 5
    side.write_text(json.dumps(payload))
    with pytest.raises(ModelFormatError, match=r"dec\.engine\.json: written by a newer ossnet"):
        trt_engine.read_engine_info(engine)
    del payload["tensorrt_version"]
    payload["metadata"]["format_version"] = 1
    side.write_text(json.dumps(payload))
    with pytest.raises(
        ModelFormatError, match=r"dec\.engine\.json: malformed engine side file.*tensorrt_version"
    ):
        trt_engine.read_engine_info(engine)


# ----------------------------------------------------------------------------------------
# sha256


def test_sha256_file_streams_the_whole_file(tmp_path):
    data = os.urandom(3 * 1024 + 5)
    path = write(tmp_path / "w.bin", data)
    assert om.sha256_file(path, chunk_bytes=1024) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ModelFormatError, match=r"gone\.onnx: model file not found"):
        om.sha256_file(tmp_path / "gone.onnx")


# ----------------------------------------------------------------------------------------
# Names that moved out of this module


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("read_graph_metadata", om),
        ("read_onnx_metadata", om),
        ("OnnxHeader", om),
        ("sha256_file", om),
        ("EngineInfo", trt_engine),
        ("check_engine", trt_engine),
        ("engine_json_path", trt_engine),
        ("read_engine_info", trt_engine),
        ("write_engine_info", trt_engine),
    ],
)
def test_moved_names_still_resolve_with_a_deprecation_warning(name, module):
    with pytest.warns(DeprecationWarning, match=rf"ossnet_deploy\.metadata\.{name} moved to {module.__name__}\.{name}"):
        value = getattr(md, name)
    assert value is getattr(module, name)


def test_the_documented_import_still_works_and_warns():
    # docs/export.md showed `ossnet_deploy.metadata.read_graph_metadata(path)`.
    with pytest.warns(DeprecationWarning, match=r"moved to ossnet_deploy\.onnx_metadata\.read_graph_metadata"):
        from ossnet_deploy.metadata import read_graph_metadata
    assert read_graph_metadata is om.read_graph_metadata


def test_unknown_names_still_raise_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        md.nope  # noqa: B018
    assert not hasattr(md, "_open_model")
