"""Segmenter on an analytic model (graphs written byte by byte): results, geometry, errors, threads.

The threshold model labels a voxel where its normalised value exceeds the foreground mean, so
for an unresampled input the exact answer is known without running any model code
(:func:`synthetic_models.expected_threshold_labels`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from synthetic_models import (
    expected_threshold_labels,
    threshold_decoder,
    two_level_phantom,
    write_threshold_pair,
)

from ossnet_deploy import SegmentationStats, Segmenter
from ossnet_deploy.errors import InputError, ModelFormatError
from ossnet_deploy.metadata import KEY_FORMAT_VERSION
from ossnet_deploy.metrics import dice
from ossnet_deploy.model import find_model_files
from ossnet_deploy.onnx_metadata import read_onnx_metadata
from ossnet_deploy.scheduler import SchedulerConfig
from ossnet_deploy.segmenter import DEFAULT_MAX_QUERIES

GRID = (32, 32, 24)
PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": list(GRID), "channels": ["t1"],
              "intensity": "zscore_foreground"}
PREPROCESS_2CH = {**PREPROCESS, "channels": ["flair", "t1"], "large_patches": True}
AFFINE = np.array([[1.0, 0, 0, -12], [0, 1.0, 0, -14], [0, 0, 1.0, 8], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("threshold_model")
    write_threshold_pair(folder, PREPROCESS)
    return folder


@pytest.fixture(scope="module")
def segmenter(model_dir: Path) -> Segmenter:
    return Segmenter.from_dir(model_dir, device="cpu", threads=1)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return two_level_phantom()


def _labels(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.dataobj)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


# ------------------------------------------------------------------------------ results


def test_from_dir_reads_the_model(segmenter: Segmenter, model_dir: Path) -> None:
    assert segmenter.channels == ("t1",)
    assert segmenter.labels == {"1": "bright"}
    assert segmenter.device == "cpu"
    assert segmenter.mode == "adaptive"
    assert segmenter.max_queries == DEFAULT_MAX_QUERIES
    assert segmenter.model_dir == model_dir
    assert segmenter.preprocess.shape == GRID


@pytest.mark.parametrize("mode", ["dense", "reference", "adaptive"])
def test_every_mode_gives_the_exact_segmentation(model_dir: Path, phantom: np.ndarray, mode: str) -> None:
    # adaptive is exact with margin 0; the default margin's effect is the next test's.
    seg = Segmenter.from_dir(model_dir, device="cpu", threads=1, mode=mode, interpolation_margin=0.0)
    image = nib.Nifti1Image(phantom, AFFINE)
    out, stats = seg.segment_with_stats(image)
    labels = _labels(out)
    assert out.get_data_dtype() == np.uint8
    assert labels.shape == phantom.shape
    np.testing.assert_array_equal(labels, expected_threshold_labels(phantom))
    assert stats.mode == mode
    assert stats.dense_queries == phantom.size  # the whole input fits in the grid
    if mode == "dense":
        assert stats.total_queries == phantom.size
    else:
        assert 0 < stats.total_queries < phantom.size // 4


def test_default_interpolation_margin_on_a_step_edge(model_dir: Path, phantom: np.ndarray) -> None:
    """The threshold model's logits jump (-1 to +16) at the bright sphere's edge: interpolating
    across it would call half the edge foreground. The margin's one-side rule keeps it exact."""
    exact = Segmenter.from_dir(model_dir, device="cpu", threads=1, interpolation_margin=0.0)
    default = Segmenter.from_dir(model_dir, device="cpu", threads=1)
    image = nib.Nifti1Image(phantom, AFFINE)
    _, exact_stats = exact.segment_with_stats(image)
    labels, stats = default.segment_with_stats(image)
    interpolated = stats.scheduler.stages[-1].interpolated
    assert interpolated > 0
    assert stats.total_queries + interpolated == exact_stats.total_queries
    np.testing.assert_array_equal(_labels(labels), expected_threshold_labels(phantom))


def test_stats_and_progress(segmenter: Segmenter, phantom: np.ndarray) -> None:
    calls: list[tuple[str, int, int]] = []
    _, stats = segmenter.segment_with_stats((phantom, AFFINE), progress=lambda s, d, t: calls.append((s, d, t)))
    assert isinstance(stats, SegmentationStats)
    names = [name for name, _ in stats.stage_seconds]
    assert names[:3] == ["read", "prepare", "encode"] and names[-1] == "restore"
    assert names[3:-1] == [name for name, _ in stats.stage_queries]
    assert all(seconds >= 0 for _, seconds in stats.stage_seconds)
    assert stats.total_queries == sum(stats.scheduler.stages[i].queries for i in range(len(stats.scheduler.stages)))
    assert stats.peak_rss_bytes is None or stats.peak_rss_bytes > 10 * 2**20
    assert stats.input_shape == phantom.shape
    assert "queries" in stats.summary()
    assert stats.with_stage("write", 0.5).seconds("write") == 0.5
    reported = {c[0] for c in calls}
    assert {"read", "prepare", "encode", "restore"} <= reported
    assert {name for name, _ in stats.stage_queries} <= reported
    # Scheduler progress counts queries: the last report of a stage equals its total.
    last = {stage: done for stage, done, _ in calls}
    for name, queries in stats.stage_queries:
        assert last[name] == queries


def test_chunks_never_exceed_max_queries(model_dir: Path, phantom: np.ndarray) -> None:
    seg = Segmenter.from_dir(model_dir, device="cpu", threads=1, max_queries=100, mode="dense")
    sizes: list[int] = []
    original = seg.decoder.run

    def spy(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(feed["coords"].shape[0])
        return original(feed)

    seg.decoder.run = spy  # type: ignore[method-assign]
    out = seg.segment((phantom, AFFINE))
    assert max(sizes) == 100
    assert sum(sizes) == phantom.size
    np.testing.assert_array_equal(_labels(out), expected_threshold_labels(phantom))


def test_encode_and_query(segmenter: Segmenter, phantom: np.ndarray) -> None:
    prepared, reference, source = segmenter.prepare((phantom, AFFINE))
    assert source == "<in-memory image>" and reference.shape == phantom.shape
    state = segmenter.encode(prepared)
    assert state.latent.shape == (1, 6, 16)
    assert state.coarse_logits is not None and state.coarse_logits.shape == (1, 1, 4, 4, 3)
    region = prepared.region
    idx = np.array([[region[0].start + i, region[1].start + j, region[2].start + k]
                    for i, j, k in [(0, 0, 0), (10, 14, 9), (23, 25, 19), (5, 20, 3)]], dtype=np.int64)
    logits = segmenter.query(state, idx)
    values = prepared.padded[0][idx[:, 0], idx[:, 1], idx[:, 2]]
    np.testing.assert_allclose(logits, 4.0 * values, rtol=1e-6, atol=1e-6)
    # Float coordinates of the same voxel centres give the same logits.
    coords = ((2 * idx + 1) / np.asarray(GRID) - 1).astype(np.float32)
    np.testing.assert_allclose(segmenter.query(state, coords), logits, rtol=1e-6, atol=1e-6)
    # An image (not a prepared volume) is prepared on the way.
    np.testing.assert_array_equal(segmenter.encode((phantom, AFFINE)).latent, state.latent)
    with pytest.raises(InputError, match=r"query indices outside the grid"):
        segmenter.query(state, np.array([[0, 0, GRID[2]]]))
    with pytest.raises(InputError, match=r"query coordinates outside \[-1, 1\]"):
        segmenter.query(state, np.array([[0.0, 1.5, 0.0]]))
    with pytest.raises(InputError, match=r"query points have the wrong shape"):
        segmenter.query(state, np.zeros((4, 2), np.int64))


def test_segment_is_thread_safe(segmenter: Segmenter) -> None:
    volumes = [two_level_phantom(centre=(8.0 + 2 * i, 12.0, 9.0 - i), radius=3.0 + i / 2) for i in range(4)]
    expected = [_labels(segmenter.segment((v, AFFINE))) for v in volumes]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(4)}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i].append(_labels(segmenter.segment((volumes[i], AFFINE))))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert not np.array_equal(expected[i], expected[(i + 1) % 4])  # the volumes really differ
        for labels in results[i]:
            np.testing.assert_array_equal(labels, expected[i])


def test_multichannel_inputs_agree(tmp_path: Path) -> None:
    folder = tmp_path / "model2"
    write_threshold_pair(folder, PREPROCESS_2CH)
    seg = Segmenter.from_dir(folder, device="cpu", threads=1)
    flair = two_level_phantom()
    t1 = np.where(flair > 0, 80.0, 0.0).astype(np.float32)
    expected = expected_threshold_labels(flair)
    case = tmp_path / "BraTS_001"
    case.mkdir()
    files = [_save(case / "BraTS_001_flair.nii.gz", flair), _save(case / "BraTS_001_t1.nii.gz", t1)]
    stacked = np.stack([flair, t1], axis=-1)
    for image in (files, case, (stacked, AFFINE), _save(tmp_path / "both.nii.gz", stacked)):
        np.testing.assert_array_equal(_labels(seg.segment(image)), expected)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"wrong number of channels \(expected 2 channel\(s\) \['flair', 't1'\]; "
                       r"found 1"):
        seg.segment(files[0])


# ------------------------------------------------------------- the exported tiny pairs
# tests/data/make_tiny_pair.py exports briefly trained tiny models (C: coarse head; A: none)
# and stores PyTorch's answers on a phantom: latent, logits at 200 voxels, dense segmentation.

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("variant", ["c", "a"])
def test_exported_pair_matches_pytorch_golden(variant: str) -> None:
    golden = np.load(DATA / f"tiny_{variant}_golden.npz")
    image = (golden["volume"], golden["affine"])
    dense = Segmenter.from_dir(DATA / f"tiny_{variant}", device="cpu", threads=1, mode="dense")
    out, stats = dense.segment_with_stats(image)
    labels = _labels(out)
    assert 0.01 < labels.mean() < 0.5  # a real object, not a constant
    assert stats.total_queries == golden["dense_region"].size
    assert dice(labels, golden["dense_input"]) >= 0.999
    np.testing.assert_allclose(out.affine, golden["affine"], atol=1e-6)
    # The graphs themselves: fp32 ONNX Runtime vs PyTorch (rtol 1e-4, atol 1e-5, the exporter's gate).
    state = dense.encode(image)
    np.testing.assert_allclose(state.latent, golden["latent"], rtol=1e-4, atol=1e-5)
    if "coarse_logits" in golden.files:
        assert state.coarse_logits is not None
        np.testing.assert_allclose(state.coarse_logits, golden["coarse_logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dense.query(state, golden["query_idx"]), golden["logits"][:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dense.query(state, golden["coords"]), golden["logits"][:, 0], rtol=1e-4, atol=1e-5)
    adaptive, adaptive_stats = Segmenter.from_dir(DATA / f"tiny_{variant}", device="cpu", threads=1,
                                                  mode="adaptive").segment_with_stats(image)
    assert adaptive_stats.total_queries < stats.total_queries / 4
    assert dice(_labels(adaptive), labels) >= 0.999


# ----------------------------------------------------------------------------- geometry


def _reoriented(image: nib.Nifti1Image, axcodes: tuple[str, str, str]) -> nib.Nifti1Image:
    start = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.axcodes2ornt(axcodes)
    return image.as_reoriented(nib.orientations.ornt_transform(start, target))


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("S", "R", "A"), ("P", "I", "L"), ("A", "S", "R")])
def test_orientations_give_identical_labels_in_world_space(segmenter: Segmenter, phantom: np.ndarray,
                                                           tmp_path: Path, axcodes: tuple[str, str, str]) -> None:
    ras = nib.Nifti1Image(phantom, AFFINE)
    other = _reoriented(ras, axcodes)
    assert nib.aff2axcodes(other.affine) == axcodes
    path = tmp_path / "other.nii.gz"
    nib.save(other, path)
    stored = nib.load(path)
    out = segmenter.segment(path)
    np.testing.assert_array_equal(out.affine, stored.affine)
    assert out.shape == stored.shape
    for code in ("qform_code", "sform_code"):
        assert out.header[code] == stored.header[code]
    back = nib.as_closest_canonical(out)
    np.testing.assert_array_equal(back.affine, AFFINE)
    np.testing.assert_array_equal(_labels(back), _labels(segmenter.segment(ras)))
    # Saved and reloaded, the output keeps the input's geometry.
    nib.save(out, tmp_path / "out.nii.gz")
    reloaded = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(reloaded.affine, stored.affine, atol=1e-6)
    assert reloaded.get_data_dtype() == np.uint8


def test_oblique_affine_is_kept(segmenter: Segmenter, phantom: np.ndarray) -> None:
    angle = np.deg2rad(7.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rotation
    oblique[:3, 3] = [3.0, -2.0, 1.0]
    out = segmenter.segment((phantom, oblique))
    np.testing.assert_allclose(out.affine, oblique, atol=1e-6)
    # Obliquity is not resampled away: the labels are those of the stored array.
    np.testing.assert_array_equal(_labels(out), expected_threshold_labels(phantom))


def _half_bright(shape: tuple[int, int, int], box: tuple[slice, slice, slice]) -> np.ndarray:
    """Value 50 everywhere (all foreground, no partial-volume rim at an outer edge) and 100 in
    ``box``, which holds about half the voxels: the threshold (foreground mean) lies near 75,
    well between the values that 2x linear resampling gives the two sides of the box's faces
    (62.5 and 87.5), so the model is not decided by partial-volume voxels."""
    vol = np.full(shape, 50.0, np.float32)
    vol[box] = 100.0
    assert 70.0 < vol.mean() < 80.0
    return vol


def test_resampled_spacing_matches_native(segmenter: Segmenter) -> None:
    # Faces on 2 mm voxel boundaries (even indices), so the 2 mm volume describes the same object.
    native = _half_bright((28, 28, 24), (slice(4, 26), slice(4, 24), slice(2, 22)))
    coarse = native.reshape(14, 2, 14, 2, 12, 2).mean(axis=(1, 3, 5))
    # 2 mm voxel j covers 1 mm voxels 2j and 2j+1: its centre sits half a millimetre further.
    affine_2mm = np.diag([2.0, 2.0, 2.0, 1.0])
    affine_2mm[:3, 3] = 0.5
    labels_native = _labels(segmenter.segment((native, np.eye(4))))
    np.testing.assert_array_equal(labels_native, expected_threshold_labels(native))
    labels_2mm = _labels(segmenter.segment((coarse, affine_2mm)))
    assert labels_2mm.shape == coarse.shape
    upsampled = labels_2mm.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert dice(upsampled, labels_native) >= 0.999


def test_fit_downsample_shrinks_large_inputs(segmenter: Segmenter) -> None:
    big = _half_bright((44, 20, 20), (slice(11, 33), slice(0, 20), slice(0, 20)))
    with pytest.raises(InputError, match=r"the foreground does not fit in the model grid .*found \(44, 20, 20\) voxels"):
        segmenter.segment((big, np.eye(4)))
    labels = _labels(segmenter.segment((big, np.eye(4)), fit="downsample"))
    assert labels.shape == big.shape
    # Shrunk by 32/44 and mapped back by nearest neighbour: only the box's two faces move.
    assert dice(labels, expected_threshold_labels(big)) > 0.95
    with pytest.raises(InputError, match=r"unknown fit 'crop'"):
        segmenter.segment((big, np.eye(4)), fit="crop")


# ---------------------------------------------------------------------------- bad input


def _bad_inputs(tmp: Path, phantom: np.ndarray) -> list[tuple[object, str]]:
    text = tmp / "notes.nii.gz"
    text.write_text("this is not an image")
    truncated = tmp / "truncated.nii.gz"
    _save(truncated, phantom)
    truncated.write_bytes(truncated.read_bytes()[:400])
    nan = phantom.copy()
    nan[3, 4, 5] = np.nan
    singular = AFFINE.copy()
    singular[:, 2] = singular[:, 1]
    return [
        (text, r"notes\.nii\.gz: not a readable NIfTI file"),
        (truncated, r"truncated\.nii\.gz: .*(truncated|corrupt)"),
        (_save(tmp / "flat.nii.gz", phantom[:, :, 0]), r"flat\.nii\.gz: wrong number of dimensions .*found shape "
         r"\(24, 26\)"),
        (_save(tmp / "five.nii.gz", phantom[..., None, None].repeat(2, 4)), r"five\.nii\.gz: wrong number of "
         r"dimensions"),
        (_save(tmp / "nan.nii.gz", nan), r"nan\.nii\.gz: image has non-finite voxels .*1 NaN/inf voxels"),
        (_save(tmp / "three.nii.gz", np.stack([phantom] * 3, -1)), r"three\.nii\.gz: wrong number of channels "
         r"\(expected 1 channel\(s\) \['t1'\]; found 3"),
        ([tmp / "nan.nii.gz", tmp / "flat.nii.gz"], r"wrong number of channels .*found 2 \(channel files given\)"),
        (_save(tmp / "thin.nii.gz", phantom[:, :, :6]), r"thin\.nii\.gz: volume is smaller than one patch "
         r"\(expected at least 7 voxels on every axis; found spatial shape \(24, 26, 6\)\)"),
        (_save(tmp / "singular.nii.gz", phantom, singular), r"singular\.nii\.gz: affine is singular"),
        (tmp / "missing.nii.gz", r"missing\.nii\.gz: image not found"),
        (_save(tmp / "huge.nii.gz", np.full((40, 20, 20), 50, np.float32)), r"huge\.nii\.gz: the foreground does "
         r"not fit in the model grid .*fit='downsample'"),
        ((phantom, np.eye(3)), r"affine has the wrong shape"),
        ("no/such/folder/", r"image not found"),
        (12, r"unsupported input"),
    ]


def test_each_bad_input_raises_input_error_naming_it(segmenter: Segmenter, phantom: np.ndarray,
                                                      tmp_path: Path) -> None:
    for image, pattern in _bad_inputs(tmp_path, phantom):
        with pytest.raises(InputError, match=pattern):
            segmenter.segment(image)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- model folders


def test_mismatched_pair_is_refused(tmp_path: Path) -> None:
    write_threshold_pair(tmp_path, PREPROCESS, pair_id="a" * 64, decoder_pair_id="b" * 64)
    with pytest.raises(ModelFormatError, match=r"encoder and decoder are not one exported pair .*pair_id differs"):
        Segmenter.from_dir(tmp_path, device="cpu")


def test_foreign_graph_is_refused(tmp_path: Path) -> None:
    write_threshold_pair(tmp_path, PREPROCESS)
    (tmp_path / "decoder.onnx").write_bytes(threshold_decoder(1, (6, 16)))  # no ossnet metadata
    with pytest.raises(ModelFormatError, match=r"decoder\.onnx: is not an ossnet ONNX graph"):
        Segmenter.from_dir(tmp_path, device="cpu")
    (tmp_path / "decoder.onnx").write_text("garbage")
    with pytest.raises(ModelFormatError, match=r"decoder\.onnx: is not an ossnet ONNX graph"):
        Segmenter.from_dir(tmp_path, device="cpu")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    write_threshold_pair(tmp_path, PREPROCESS)
    encoder = tmp_path / "encoder.onnx"
    raw = encoder.read_bytes()
    old = f'"{KEY_FORMAT_VERSION}"'.encode()
    assert old not in raw  # keys are stored as protobuf strings, not JSON
    props = read_onnx_metadata(encoder).metadata_props
    assert json.loads(props[KEY_FORMAT_VERSION]) == 1
    # Same byte length, so the protobuf stays well formed.
    patched = raw.replace(KEY_FORMAT_VERSION.encode() + b"\x12\x01" + b"1", KEY_FORMAT_VERSION.encode() + b"\x12\x01"
                          + b"9")
    assert patched != raw
    encoder.write_bytes(patched)
    with pytest.raises(ModelFormatError, match=r"encoder\.onnx: written by a newer ossnet .*pip install -U ossnet"):
        Segmenter.from_dir(tmp_path, device="cpu")


def test_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"model folder not found"):
        Segmenter.from_dir(tmp_path / "nothing")
    write_threshold_pair(tmp_path, PREPROCESS)
    with pytest.raises(ModelFormatError, match=r"decoder\.fp16\.onnx: model file missing .*--fp16"):
        Segmenter.from_dir(tmp_path, precision="fp16")
    with pytest.raises(InputError, match=r"unknown precision 'int8'"):
        Segmenter.from_dir(tmp_path, precision="int8")
    (tmp_path / "decoder.onnx").unlink()
    with pytest.raises(ModelFormatError, match=r"decoder\.onnx: model file missing \(expected decoder\.onnx in"):
        Segmenter.from_dir(tmp_path)


def test_default_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ossnet_deploy import model as model_module

    if not (model_module.DEFAULT_MODEL_DIR / "encoder.onnx").is_file():
        with pytest.raises(ModelFormatError, match=r"the default model is not bundled"):
            Segmenter.from_dir()
    monkeypatch.setattr(model_module, "DEFAULT_MODEL_DIR", tmp_path)
    write_threshold_pair(tmp_path, PREPROCESS)
    assert find_model_files(None).folder == tmp_path
    assert Segmenter.from_dir(device="cpu").model_dir == tmp_path


def test_bad_settings(model_dir: Path) -> None:
    with pytest.raises(InputError, match=r"unknown mode 'fast'"):
        Segmenter.from_dir(model_dir, mode="fast")
    with pytest.raises(InputError, match=r"invalid max_queries .*found 0"):
        Segmenter.from_dir(model_dir, max_queries=0)
    with pytest.raises(InputError, match=r"invalid scheduler setting interpolation_margin .*-1"):
        Segmenter.from_dir(model_dir, interpolation_margin=-1.0)
    assert Segmenter.from_dir(model_dir, interpolation_margin=0.0).scheduler_config.interpolation_margin == 0.0
    assert Segmenter.from_dir(model_dir).scheduler_config.interpolation_margin == SchedulerConfig().interpolation_margin
    with pytest.raises(InputError, match=r"unknown device 'tpu'"):
        Segmenter.from_dir(model_dir, device="tpu")


# ------------------------------------------------------------------------- torch-free


def test_segmenting_imports_neither_torch_nor_training_code(model_dir: Path, phantom: np.ndarray,
                                                            tmp_path: Path) -> None:
    image = _save(tmp_path / "p.nii.gz", phantom)
    script = (
        "import sys\n"
        "from ossnet_deploy import Segmenter\n"
        f"seg = Segmenter.from_dir({os.fspath(model_dir)!r}, device='cpu', threads=1)\n"
        f"seg.segment({os.fspath(image)!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ossnet_train', 'ossnet_export', 'onnx'))\n"
        "print('BAD', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "BAD []" in result.stdout, result.stdout + result.stderr
