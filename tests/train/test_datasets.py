"""Datasets: discovery in the real layouts, lazy loading, targets, and every check's error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fixtures import (
    BRATS_355,
    BRATS_355_LABEL,
    SHAPE,
    fixture_affine,
    make_brats_case,
    make_brats_dataset,
    make_generic_dataset,
    make_lits_dataset,
    write_nifti,
)

from ossnet_deploy.errors import InputError
from ossnet_train.datasets import (
    BRATS_CHANNELS,
    brats_dataset,
    brats_split,
    generic_dataset,
    lits_dataset,
    make_dataset,
)


def _match(case_id: str, problem: str, file: str | None = None) -> str:
    """Regex: the message names the case, then the file (when given), then the problem."""
    named_file = f"{re.escape(file)}.*" if file is not None else ""
    return f"case {re.escape(case_id)}: .*{named_file}{problem}"


# --------------------------------------------------------------------------- BraTS


def test_brats_discovers_mixed_suffixes_and_case_355_label(tmp_path: Path) -> None:
    written = make_brats_dataset(tmp_path)
    ds = brats_dataset(tmp_path)
    assert ds.case_ids == tuple(sorted(c.case_id for c in written))
    assert ds.channel_names == BRATS_CHANNELS
    suffixes = {p.name.endswith(".gz") for case in ds.cases for p in (*case.channels, case.label)}
    assert suffixes == {True, False}
    by_id = {case.case_id: case for case in ds.cases}
    assert by_id[BRATS_355].label.name == BRATS_355_LABEL
    for fixture in written:
        assert list(by_id[fixture.case_id].channels) == fixture.channel_paths


def test_brats_loads_channels_in_model_order_and_whole_tumour(tmp_path: Path) -> None:
    written = {c.case_id: c for c in make_brats_dataset(tmp_path)}
    ds = brats_dataset(tmp_path)
    for case in ds:
        fixture = written[case.case_id]
        assert case.data.shape == (4, *SHAPE) and case.data.dtype == np.float32
        # Channel c of the fixture was written around level 100 * (c + 1): order is checked exactly.
        np.testing.assert_array_equal(case.data, np.stack(fixture.channels))
        np.testing.assert_allclose(case.affine, fixture.affine, atol=1e-6)
        assert case.label.dtype == np.uint8
        np.testing.assert_array_equal(case.label, (fixture.label > 0).astype(np.uint8))
        assert set(np.unique(fixture.label)) == {0, 1, 2, 4}


@pytest.mark.parametrize(("target", "values"), [("tumour_core", (1, 4)), ("enhancing", (4,))])
def test_brats_targets(tmp_path: Path, target: str, values: tuple[int, ...]) -> None:
    fixture = make_brats_dataset(tmp_path, [BRATS_355])[0]
    case = brats_dataset(tmp_path, target=target)[0]
    expected = np.isin(fixture.label, values).astype(np.uint8)
    assert 0 < expected.sum() < (fixture.label > 0).sum()
    np.testing.assert_array_equal(case.label, expected)


def test_brats_reference_split_counts_and_selection(tmp_path: Path) -> None:
    train, val = brats_split("train"), brats_split("val")
    assert (len(train), len(val)) == (324, 45)
    assert not set(train) & set(val)
    make_brats_dataset(tmp_path, val, shape=(6, 6, 6))
    ds = brats_dataset(tmp_path, split="val", validate=False)
    assert ds.case_ids == val
    # The val split holds case 355, whose label has the quirky name.
    assert ds.cases[val.index(BRATS_355)].label.name == BRATS_355_LABEL
    assert len(brats_dataset(tmp_path, split="all", validate=False)) == 45


def test_brats_split_with_missing_cases_lists_them(tmp_path: Path) -> None:
    val = brats_split("val")
    make_brats_dataset(tmp_path, val[1:], shape=(6, 6, 6))
    with pytest.raises(InputError, match=rf"1 of the 45 cases of the reference 'val' split are missing.*{val[0]}"):
        brats_dataset(tmp_path, split="val", validate=False)
    with pytest.raises(InputError, match=r"324 of the 324 cases of the reference 'train' split are missing"):
        brats_dataset(tmp_path, split="train", validate=False)


def test_brats_ambiguous_label_is_refused(tmp_path: Path) -> None:
    fixture = make_brats_case(tmp_path, "BraTS20_Training_007", label_name="first_Segm.nii")
    write_nifti(tmp_path / fixture.case_id / "second_seg.nii.gz", fixture.label)
    with pytest.raises(InputError, match=_match(fixture.case_id, "cannot tell which file is the label")):
        brats_dataset(tmp_path)


def test_brats_missing_label_is_refused(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    fixture.label_path.unlink()
    with pytest.raises(InputError, match=_match(fixture.case_id, "label file is missing")):
        brats_dataset(tmp_path)


def test_brats_missing_modality_names_case_and_file(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[1]
    fixture.channel_paths[2].unlink()
    pattern = _match(fixture.case_id, "t1ce image is missing", f"{fixture.case_id}_t1ce.nii.gz: ")
    with pytest.raises(InputError, match=pattern):
        brats_dataset(tmp_path)


def test_brats_both_suffixes_for_one_modality_is_refused(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    gz = fixture.channel_paths[0]
    shutil.copy(gz, gz.with_name(gz.name.removesuffix(".gz") if gz.name.endswith(".gz") else gz.name + ".gz"))
    with pytest.raises(InputError, match=_match(fixture.case_id, "both .nii and .nii.gz exist for flair")):
        brats_dataset(tmp_path)


def test_shape_mismatch_names_case_and_file(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    write_nifti(fixture.channel_paths[3], np.zeros((12, 14, 9), np.float32), fixture.affine)
    with pytest.raises(InputError, match=_match(fixture.case_id, "channel t2 has a different shape",
                                                fixture.channel_paths[3].name)):
        brats_dataset(tmp_path)


def test_affine_mismatch_beyond_tolerance_is_refused(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    write_nifti(fixture.label_path, fixture.label, fixture_affine(offset=5e-4))
    brats_dataset(tmp_path)  # within atol 1e-3: accepted
    write_nifti(fixture.label_path, fixture.label, fixture_affine(offset=0.01))
    with pytest.raises(InputError, match=_match(fixture.case_id, "label has a different affine")):
        brats_dataset(tmp_path)


def test_4d_file_is_refused(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    write_nifti(fixture.channel_paths[1], np.zeros((*SHAPE, 2), np.float32), fixture.affine)
    with pytest.raises(InputError, match=_match(fixture.case_id, r"wrong number of dimensions.*shape \(12, 14, 10, 2\)",
                                                fixture.channel_paths[1].name)):
        brats_dataset(tmp_path)


def test_nan_voxels_are_refused_at_load(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    data = fixture.channels[1].copy()
    data[3, 4, 5] = np.nan
    data[0, 0, 0] = np.inf
    write_nifti(fixture.channel_paths[1], data, fixture.affine)
    ds = brats_dataset(tmp_path)  # headers only: accepted
    with pytest.raises(InputError, match=_match(fixture.case_id, r"image has non-finite voxels.*2 NaN/inf voxels",
                                                fixture.channel_paths[1].name)):
        ds.load(fixture.case_id)


def test_unexpected_label_value_is_refused_at_load(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[2]
    label = fixture.label.copy()
    label[1, 1, 1] = 3
    write_nifti(fixture.label_path, label, fixture.affine)
    ds = brats_dataset(tmp_path)
    with pytest.raises(InputError, match=_match(fixture.case_id, r"unexpected label values.*found values \[3\]",
                                                fixture.label_path.name)):
        ds.load(fixture.case_id)


def test_truncated_uncompressed_file_is_refused_up_front(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    path = next(p for p in fixture.channel_paths if p.suffix == ".nii")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputError, match=_match(fixture.case_id, "file is truncated", path.name)):
        brats_dataset(tmp_path)


def test_truncated_compressed_file_is_refused_at_load(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    path = next(p for p in fixture.channel_paths if p.name.endswith(".gz"))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    ds = brats_dataset(tmp_path)
    with pytest.raises(InputError, match=_match(fixture.case_id, "file is truncated or corrupt", path.name)):
        ds.load(fixture.case_id)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    fixture = make_brats_dataset(tmp_path)[0]
    fixture.channel_paths[0].write_bytes(b"not a nifti file at all")
    with pytest.raises(InputError, match=_match(fixture.case_id, "not a readable NIfTI file",
                                                fixture.channel_paths[0].name)):
        brats_dataset(tmp_path)


@pytest.mark.parametrize("kind", ["brats", "lits", "generic", "demo"])
def test_empty_folder_names_folder_and_layout(tmp_path: Path, kind: str) -> None:
    with pytest.raises(InputError, match=rf"{re.escape(str(tmp_path))}: no cases found \(expected the layout"):
        make_dataset(kind, tmp_path)  # type: ignore[arg-type]


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset folder not found"):
        brats_dataset(tmp_path / "nope")


# --------------------------------------------------------------------------- LiTS


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_lits_layouts_and_liver_target(tmp_path: Path, layout: str) -> None:
    written = make_lits_dataset(tmp_path, (11, 0, 3), layout=layout)
    ds = lits_dataset(tmp_path)
    assert ds.case_ids == ("lits-0", "lits-3", "lits-11")  # numeric, not lexical, order
    assert ds.channel_names == ("ct",)
    by_id = {c.case_id: c for c in written}
    for case in ds:
        fixture = by_id[case.case_id]
        np.testing.assert_array_equal(case.data[0], fixture.channels[0])
        np.testing.assert_array_equal(case.label, (fixture.label > 0).astype(np.uint8))
    tumour = lits_dataset(tmp_path, target="tumour")[0]
    np.testing.assert_array_equal(tumour.label, (by_id["lits-0"].label == 2).astype(np.uint8))


def test_lits_unpaired_volume_names_case(tmp_path: Path) -> None:
    written = make_lits_dataset(tmp_path)
    written[1].label_path.unlink()
    with pytest.raises(InputError, match=_match("lits-3", "volume without a segmentation")):
        lits_dataset(tmp_path)


def test_lits_label_value_outside_0_1_2_is_refused(tmp_path: Path) -> None:
    fixture = make_lits_dataset(tmp_path, (5,))[0]
    label = fixture.label.copy()
    label[2, 2, 2] = 4
    write_nifti(fixture.label_path, label, fixture.affine)
    with pytest.raises(InputError, match=_match("lits-5", "unexpected label values", "segmentation-5")):
        lits_dataset(tmp_path)[0]


# --------------------------------------------------------------------------- generic / demo


def test_generic_channels_labels_and_names(tmp_path: Path) -> None:
    written = make_generic_dataset(tmp_path, n_channels=3, label_values=(0, 1, 2), channel_names=("t1", "t2", "pd"))
    ds = generic_dataset(tmp_path, n_channels=3, label_values=(0, 1, 2))
    assert ds.channel_names == ("t1", "t2", "pd")
    assert ds.case_ids == ("case_a", "case_b", "case_c")
    for case, fixture in zip(ds, written, strict=True):
        np.testing.assert_array_equal(case.data, np.stack(fixture.channels))
        np.testing.assert_array_equal(case.label, (fixture.label > 0).astype(np.uint8))
    only_two = generic_dataset(tmp_path, label_values=(0, 1, 2), foreground=(2,))[0]
    np.testing.assert_array_equal(only_two.label, (written[0].label == 2).astype(np.uint8))


def test_generic_default_labels_refuse_value_2(tmp_path: Path) -> None:
    make_generic_dataset(tmp_path, label_values=(0, 1, 2))
    ds = generic_dataset(tmp_path)
    with pytest.raises(InputError, match=_match("case_a", r"unexpected label values \(expected values in \[0, 1\]")):
        ds[0]


def test_generic_channel_count_must_match_config(tmp_path: Path) -> None:
    make_generic_dataset(tmp_path, n_channels=2)
    with pytest.raises(InputError, match=_match("case_a", r"wrong number of channels \(expected 4 \(as in n_channels\); found 2")):
        generic_dataset(tmp_path, n_channels=4)


def test_generic_inconsistent_channels_between_cases(tmp_path: Path) -> None:
    written = make_generic_dataset(tmp_path, n_channels=2)
    written[2].channel_paths[1].unlink()
    with pytest.raises(InputError, match=_match("case_c", r"wrong number of channels \(expected 2 \(as in case case_a\)")):
        generic_dataset(tmp_path)


def test_generic_channel_gap_and_missing_label(tmp_path: Path) -> None:
    written = make_generic_dataset(tmp_path, n_channels=3)
    written[1].channel_paths[1].unlink()
    with pytest.raises(InputError, match=_match("case_b", "channel 0001 is missing", "case_b_0001.nii.gz: ")):
        generic_dataset(tmp_path)
    written[1].channel_paths[2].unlink()
    written[0].label_path.unlink()
    with pytest.raises(InputError, match=_match("case_a", "label file is missing")):
        generic_dataset(tmp_path)


def test_generic_label_without_images(tmp_path: Path) -> None:
    make_generic_dataset(tmp_path)
    write_nifti(tmp_path / "labelsTr" / "stray.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match=_match("stray", "label without images")):
        generic_dataset(tmp_path)


def test_demo_kind_reads_the_generic_layout_with_one_channel(tmp_path: Path) -> None:
    make_generic_dataset(tmp_path, ("demo_0000", "demo_0001"), n_channels=1, channel_names=("T1",))
    ds = make_dataset("demo", tmp_path)
    assert (ds.kind, ds.channel_names, len(ds)) == ("demo", ("T1",), 2)
    assert ds[1].data.shape == (1, *SHAPE)
    shutil.rmtree(tmp_path / "imagesTr")
    make_generic_dataset(tmp_path, ("demo_0000", "demo_0001"), n_channels=2)
    with pytest.raises(InputError, match=r"wrong number of channels \(expected 1"):
        make_dataset("demo", tmp_path)


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown dataset kind"):
        make_dataset("kits", tmp_path)  # type: ignore[arg-type]


def test_loading_reads_scaled_integer_images(tmp_path: Path) -> None:
    """int16 files with a header slope come back as float32 physical values."""
    make_generic_dataset(tmp_path, ("s",), n_channels=1)
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    img = nib.Nifti1Image(raw, fixture_affine())
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "imagesTr" / "s_0000.nii.gz")
    case = generic_dataset(tmp_path)[0]
    np.testing.assert_allclose(case.data[0], raw * 0.5 + 10.0, rtol=0, atol=1e-3)
