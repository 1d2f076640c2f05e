"""Export of every variant: parity with PyTorch, symbolic query axis, metadata, fp16, atomicity.

Each variant is exported once per session (``tiny_export`` in conftest.py). Tests that need
an export to fail or to be redone replay the already exported graphs instead of re-running the
dynamo exporter (``_replay``): everything after the exporter (checks, verification, metadata,
fp16, the atomic folder) still runs for real.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from ossnet_deploy.errors import ModelFormatError, OutputExistsError
from ossnet_deploy.metadata import (
    COARSE_LOGITS,
    COORDS,
    FORMAT_VERSION,
    LATENT,
    LOGITS,
    NUM_QUERIES,
    PATCHES,
    PRODUCER_NAME,
    VOLUME,
    check_pair,
)
from ossnet_deploy.onnx_metadata import read_graph_metadata, read_onnx_metadata
from ossnet_export import export_onnx
from ossnet_export.export_onnx import (
    DECODER_FILE,
    DECODER_FP16_FILE,
    ENCODER_FILE,
    ExportOptions,
    check_exportable,
    check_query_axis,
    export_model,
    pair_id,
)
from ossnet_export.fp16 import FP32_SCOPES
from ossnet_export.graphs import decoder_io, graph_specs
from ossnet_export.verify import (
    FP32_ATOL,
    FP32_RTOL,
    ParityError,
    cpu_session,
    decoder_feed,
    make_case,
    onnx_decode,
    torch_decode,
    torch_reference,
    verify_pair,
)
from ossnet_train.config import VARIANTS

Exporter = Callable[[str], Any]
ModelFactory = Callable[..., Any]
#: Verification query counts of the replayed exports.
REPLAY_COUNTS = (37, 150)


def _replay(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make the exporter return the graphs already written in ``folder`` (no dynamo run)."""
    files = {"encoder": folder / ENCODER_FILE, "decoder": folder / DECODER_FILE}
    monkeypatch.setattr(export_onnx, "_export_graph", lambda spec, opset, n: onnx.load(files[spec.role]))


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}"))


# ----------------------------------------------------------------------------------------- every variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_pytorch_at_two_query_counts(tiny_export: Exporter, variant: str) -> None:
    exported = tiny_export(variant)
    folder = exported.directory
    assert _entries(folder) == [DECODER_FILE, ENCODER_FILE]
    expected = ["encoder latent", *(["encoder coarse_logits"] if variant in ("c", "d") else []),
                *(f"decoder logits (N={n})" for n in exported.query_counts)]
    recorded = read_graph_metadata(folder / DECODER_FILE).parity["fp32"]
    assert recorded["passed"] is True and recorded["query_counts"] == list(exported.query_counts)
    assert (recorded["rtol"], recorded["atol"]) == (FP32_RTOL, FP32_ATOL)
    assert sorted(recorded["max_abs"]) == sorted(expected) and recorded["worst"]["excess"] <= 1.0
    # Independently of what the exporter recorded: the written files against PyTorch.
    case = make_case(exported.preprocess, exported.query_counts)
    report = verify_pair(folder / ENCODER_FILE, folder / DECODER_FILE, exported.model, exported.preprocess, case)
    assert [d.tensor for d in report.deviations] == expected
    assert report.ok, report.worst.describe()


@pytest.mark.parametrize("variant", VARIANTS)
def test_query_axis_is_symbolic_and_encoder_static(tiny_export: Exporter, variant: str) -> None:
    exported = tiny_export(variant)
    config = exported.model.config
    decoder = onnx.load(exported.directory / DECODER_FILE, load_external_data=False)
    inputs = {v.name: v.type.tensor_type.shape.dim for v in decoder.graph.input}
    assert list(inputs) == ([COORDS, PATCHES, LATENT] if config.uses_patches else [COORDS, LATENT])
    for name in (COORDS, *([PATCHES] if config.uses_patches else [])):
        assert inputs[name][0].dim_param == NUM_QUERIES
        assert all(d.HasField("dim_value") for d in inputs[name][1:])
    assert [d.dim_value for d in inputs[LATENT]] == [1, config.latent_channels, config.latent_size]
    (out,) = decoder.graph.output
    assert out.name == LOGITS and out.type.tensor_type.shape.dim[0].dim_param == NUM_QUERIES
    encoder = onnx.load(exported.directory / ENCODER_FILE, load_external_data=False)
    for value in (*encoder.graph.input, *encoder.graph.output):
        assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), value.name
    assert [v.name for v in encoder.graph.output] == [LATENT, *([COARSE_LOGITS] if config.has_coarse else [])]
    assert not decoder.graph.initializer[0].external_data


def test_known_label_names_get_coded_meanings_in_the_metadata(tiny_export: Exporter) -> None:
    from ossnet_deploy.label_codes import KNOWN_LABEL_CODES

    exported = tiny_export(VARIANTS[0])
    meta = read_graph_metadata(exported.directory / ENCODER_FILE)
    coded = export_onnx.graph_metadata(meta.role, meta.io, exported.model.config, exported.preprocess,
                                       weights_id=meta.pair_id, labels={"1": "white_matter"}, parity={},
                                       provenance={})
    assert coded.label_codes == {"1": KNOWN_LABEL_CODES["white_matter"].to_dict()}
    assert type(coded).from_props(coded.to_props()) == coded


@pytest.mark.parametrize("variant", VARIANTS)
def test_metadata_round_trips(tiny_export: Exporter, variant: str) -> None:
    exported = tiny_export(variant)
    config, folder = exported.model.config, exported.directory
    encoder_meta = read_graph_metadata(folder / ENCODER_FILE)
    decoder_meta = read_graph_metadata(folder / DECODER_FILE)
    check_pair(encoder_meta, decoder_meta, folder / ENCODER_FILE, folder / DECODER_FILE)
    if exported.result is not None:
        assert encoder_meta == exported.result.metadata["encoder"]
        assert decoder_meta == exported.result.metadata["decoder"]
    for meta, role in ((encoder_meta, "encoder"), (decoder_meta, "decoder")):
        assert meta.role == role and meta.format_version == FORMAT_VERSION
        assert meta.pair_id == pair_id(exported.model)
        assert meta.variant == config.variant and meta.preset == config.preset
        assert meta.model_config == config.to_dict()
        assert meta.preprocess == exported.preprocess.to_dict()
        assert meta.labels == {"1": "foreground"}
        assert meta.label_codes is None  # no code is known for "foreground": the optional key is omitted
        assert meta.scheduler.has_coarse_seg == config.has_coarse
        assert meta.scheduler.grid_shape == (32, 32, 32)
        assert meta.scheduler.coarse_shape == ((8, 8, 8) if config.has_coarse else None)
        assert meta.scheduler.threshold_logit == 0.0
        assert meta.parity["fp32"]["passed"] is True
        assert meta.parity["fp32"]["query_counts"] == list(exported.query_counts)
        assert set(meta.parity["sensitivity"]) == set(decoder_io(config).input_names)
        assert meta.provenance["opset"] == 20 and meta.provenance["torch"] == torch.__version__
        assert meta.provenance["onnx"] == onnx.__version__
        header = read_onnx_metadata(folder / f"{role}.onnx")
        assert header.producer_name == PRODUCER_NAME and header.model_version == FORMAT_VERSION
    assert decoder_meta.io == decoder_io(config)
    assert encoder_meta.io.get(VOLUME).shape == (1, config.in_channels, 16, 16, 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_decoder_input_moves_the_logits_far_beyond_tolerance(tiny_export: Exporter, variant: str) -> None:
    exported = tiny_export(variant)
    sensitivity = read_graph_metadata(exported.directory / DECODER_FILE).parity["sensitivity"]
    assert set(sensitivity) == set(decoder_io(exported.model.config).input_names)
    case = make_case(exported.preprocess, exported.query_counts)
    logits = torch_reference(exported.model, case, exported.preprocess)[1][0]
    tolerance = FP32_ATOL + FP32_RTOL * float(np.abs(logits).max())
    for name, change in sensitivity.items():
        assert change > 100 * tolerance, (name, change, tolerance)
    # The logits also differ across queries, so a decoder returning a constant cannot pass.
    assert float(logits.max() - logits.min()) > 100 * tolerance


@pytest.mark.parametrize("variant", ["onet", "d"])
def test_one_query_and_many_queries_match_pytorch(tiny_export: Exporter, variant: str) -> None:
    exported = tiny_export(variant)
    case = make_case(exported.preprocess, (8, 100), seed=5)
    latent = torch_reference(exported.model, case, exported.preprocess)[0][LATENT]
    session = cpu_session(exported.directory / DECODER_FILE)
    for idx in (case.queries[0][:1], case.queries[1]):
        feed = decoder_feed(case.prepared, idx, exported.model.config, exported.preprocess, latent)
        np.testing.assert_allclose(onnx_decode(session, feed), torch_decode(exported.model, feed),
                                   rtol=FP32_RTOL, atol=FP32_ATOL)


# ----------------------------------------------------------------------------------------- no export needed


def test_wrappers_reference_the_models_own_modules(tiny_model: ModelFactory) -> None:
    model, _ = tiny_model("c")
    encoder, decoder = graph_specs(model)
    assert encoder.module.model is model and decoder.module.model is model
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in decoder.module.parameters()} == ptrs
    assert {p.data_ptr() for p in encoder.module.parameters()} == ptrs
    assert not encoder.module.training and not decoder.module.training


def test_pair_id_depends_on_every_weight_and_not_on_dict_order(tiny_model: ModelFactory) -> None:
    model, _ = tiny_model("a")
    reference = pair_id(model)
    assert len(reference) == 64 and int(reference, 16) >= 0
    clone = copy.deepcopy(model)
    clone.load_state_dict(dict(reversed(list(model.state_dict().items()))))
    assert pair_id(clone) == reference
    with torch.no_grad():
        weight = clone.decoder.out.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(np.inf))
    assert pair_id(clone) != reference
    clone = copy.deepcopy(model)
    clone.decoder.blocks[0].cbn1.norm.running_var.mul_(2)
    assert pair_id(clone) != reference


def test_model_and_preprocessing_that_do_not_fit_are_refused(tiny_model: ModelFactory) -> None:
    model, preprocess = tiny_model("b")
    from dataclasses import replace

    with pytest.raises(ModelFormatError, match=r"preprocess grid \(64, 64, 64\) vs model grid \(32, 32, 32\)"):
        check_exportable(model.config, replace(preprocess, shape=(64, 64, 64)), "run.pt")
    with pytest.raises(ModelFormatError, match="large_patches=False vs patch_mode 'small_large'"):
        check_exportable(model.config, replace(preprocess, large_patches=False), "run.pt")
    with pytest.raises(ModelFormatError, match="1 preprocess channels vs 2 model channels"):
        check_exportable(model.config, replace(preprocess, channels=("t1",)), "run.pt")


def test_a_static_query_axis_is_refused(tiny_export: Exporter) -> None:
    exported = tiny_export("a")
    decoder = onnx.load(exported.directory / DECODER_FILE)
    decoder.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 13
    with pytest.raises(ModelFormatError, match="input coords axis 0 is static \\(13\\), expected symbolic 'num_queries'"):
        check_query_axis(decoder, decoder_io(exported.model.config), "decoder.onnx")
    renamed = onnx.load(exported.directory / DECODER_FILE)
    renamed.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "s0"
    check_query_axis(renamed, decoder_io(exported.model.config), "decoder.onnx")
    assert renamed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == NUM_QUERIES


# ----------------------------------------------------------------------------------------- replayed exports


def test_failed_verification_writes_nothing(tiny_export: Exporter, tiny_model: ModelFactory, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    exported = tiny_export("a")
    _replay(monkeypatch, exported.directory)
    other, preprocess = tiny_model("a", seed=99)  # same architecture, other weights
    destination = tmp_path / "pair"
    with pytest.raises(ParityError, match=r"the export failed verification .*largest deviation at index \(") as info:
        export_model(other, preprocess, destination, options=ExportOptions(query_counts=REPLAY_COUNTS))
    assert "encoder latent" in str(info.value) or "decoder logits" in str(info.value)
    assert str(destination) in str(info.value)
    assert not destination.exists() and _siblings(destination) == []


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(
    tiny_export: Exporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = tiny_export("onet")
    _replay(monkeypatch, exported.directory)
    destination = tmp_path / "pair"
    destination.mkdir()
    (destination / "keep.txt").write_text("old")
    options = ExportOptions(query_counts=REPLAY_COUNTS)
    with pytest.raises(OutputExistsError, match=r"output already exists.*--overwrite"):
        export_model(exported.model, exported.preprocess, destination, options=options)
    assert (destination / "keep.txt").read_text() == "old"
    export_model(exported.model, exported.preprocess, destination,
                 options=ExportOptions(query_counts=REPLAY_COUNTS, overwrite=True, verify=False))
    assert sorted(p.name for p in destination.iterdir()) == [DECODER_FILE, ENCODER_FILE]
    assert read_graph_metadata(destination / DECODER_FILE).pair_id == pair_id(exported.model)
    assert _siblings(destination) == []


def test_no_verify_says_what_it_skips(tiny_export: Exporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exported = tiny_export("onet")
    _replay(monkeypatch, exported.directory)
    result = export_model(exported.model, exported.preprocess, tmp_path / "pair",
                          options=ExportOptions(query_counts=REPLAY_COUNTS, verify=False))
    assert result.parity is None
    assert any("NOT compared with PyTorch" in note for note in result.warnings)
    meta = read_graph_metadata(tmp_path / "pair" / DECODER_FILE)
    assert meta.parity == {"fp32": None, "skipped": "export ran with --no-verify"}


def _fp32_scoped_tensors(model: onnx.ModelProto) -> tuple[set[str], int]:
    """Outputs of nodes in PAU/normalisation scopes, and how many nodes that is."""
    names: set[str] = set()
    count = 0
    for node in model.graph.node:
        scope = " ".join(p.value for p in node.metadata_props)
        if any(marker in scope for marker in FP32_SCOPES):
            names.update(node.output)
            count += 1
    return names, count


def test_fp16_decoder_passes_its_gate_with_pau_and_normalisation_in_fp32(
    tiny_export: Exporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = tiny_export("d")
    _replay(monkeypatch, exported.directory)
    result = export_model(exported.model, exported.preprocess, tmp_path / "pair",
                          options=ExportOptions(query_counts=REPLAY_COUNTS, fp16=True, dice_box=12, verify=False))
    assert result.fp16_refused is None and result.fp16 is not None and result.fp16.ok
    extra = result.fp16.extra
    # A Dice over an empty or full box would prove nothing.
    assert 0 < extra["dice_foreground_fp32"] < extra["dice_voxels"] == 12**3
    assert extra["dice"] >= 0.999
    path = tmp_path / "pair" / DECODER_FP16_FILE
    meta = read_graph_metadata(path)
    assert meta.role == "decoder" and meta.pair_id == result.metadata["decoder"].pair_id
    assert meta.parity["fp16"]["dice"] == extra["dice"]
    half = onnx.shape_inference.infer_shapes(onnx.load(path))
    io_types = {v.name: v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)}
    assert set(io_types.values()) == {onnx.TensorProto.FLOAT}
    types = {v.name: v.type.tensor_type.elem_type for v in half.graph.value_info}
    scoped, count = _fp32_scoped_tensors(half)
    assert count > 0
    assert {types[name] for name in scoped if name in types} == {onnx.TensorProto.FLOAT}
    matmul_types = {types.get(n.output[0]) for n in half.graph.node if n.op_type in ("MatMul", "Gemm")}
    assert onnx.TensorProto.FLOAT16 in matmul_types
    # Normalisation statistics and the latent's conditioning weights stay fp32 ...
    weights = {i.name: i.data_type for i in half.graph.initializer}
    kept = [name for name in weights if any(k in name for k in ("running_mean", "running_var", ".gamma.", ".beta."))]
    assert kept and {weights[name] for name in kept} == {onnx.TensorProto.FLOAT}
    # ... and no fp32 value is rounded to fp16 on its way between two fp32 nodes.
    producer = {out: node for node in half.graph.node for out in node.output}

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        return None if node is None or node.op_type != "Cast" else node.attribute[0].i

    assert not [n.name for n in half.graph.node
                if cast_to(n) == onnx.TensorProto.FLOAT and cast_to(producer.get(n.input[0])) == onnx.TensorProto.FLOAT16]


def test_fp16_that_disagrees_is_refused_and_not_written(
    tiny_export: Exporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ossnet_export import fp16

    exported = tiny_export("d")
    _replay(monkeypatch, exported.directory)
    real = fp16.convert_decoder

    def corrupted(model: onnx.ModelProto) -> onnx.ModelProto:
        bad = copy.deepcopy(model)
        for init in bad.graph.initializer:
            if init.name.endswith("decoder.blocks.1.fc2.bias"):
                values = onnx.numpy_helper.to_array(init) + 1.0
                init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), init.name))
        return real(bad)

    monkeypatch.setattr(fp16, "convert_decoder", corrupted)
    destination = tmp_path / "pair"
    result = export_model(exported.model, exported.preprocess, destination,
                          options=ExportOptions(query_counts=REPLAY_COUNTS, fp16=True, dice_box=6, verify=False))
    assert result.fp16_refused is not None
    assert f"{destination / DECODER_FP16_FILE}: fp16 decoder refused, not written" in result.fp16_refused
    assert "largest deviation at index" in result.fp16_refused
    assert sorted(p.name for p in destination.iterdir()) == [DECODER_FILE, ENCODER_FILE]
    assert DECODER_FP16_FILE not in result.files


def test_checkpoint_labels_come_from_its_training_target(tiny_model: ModelFactory, tmp_path: Path) -> None:
    from ossnet_train.checkpoint import save_checkpoint

    model, preprocess = tiny_model("a")
    plain = export_onnx.load_checkpoint(save_checkpoint(tmp_path / "plain.pt", model, preprocess))
    assert plain.labels == {"1": "foreground"}
    assert plain.preprocess == preprocess and pair_id(plain.model) == pair_id(model)
    trained = save_checkpoint(tmp_path / "wt.pt", model, preprocess,
                              training={"train_config": {"target": "whole_tumour"}})
    assert export_onnx.load_checkpoint(trained).labels == {"1": "whole_tumour"}


def test_non_finite_pytorch_reference_is_named_as_the_cause() -> None:
    """A diverged checkpoint is refused with a message that blames the weights, not the export."""
    import numpy as np

    from ossnet_export.verify import ParityError, compare

    expected = np.array([[1.0], [np.nan], [np.inf]], dtype=np.float32)
    with pytest.raises(ParityError, match=r"PyTorch itself gives non-finite logits.*2 of 3"):
        compare("logits", expected.copy(), expected, rtol=1e-4, atol=1e-5)
