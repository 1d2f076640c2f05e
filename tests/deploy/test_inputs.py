"""Input forms, case folders, cohort discovery and sharding."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ossnet_deploy.errors import InputError
from ossnet_deploy.inputs import (
    Case,
    case_folder_files,
    case_name,
    discover_cases,
    is_nifti_name,
    resolve_volume,
    shard,
)

BRATS = ("flair", "t1", "t1ce", "t2")
AFFINE = np.diag([1.0, 1.2, 1.5, 1.0])


def _volume(seed: int, shape: tuple[int, ...] = (9, 10, 8)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _touch(path: Path) -> Path:
    return _save(path, _volume(0))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("BraTS20_001_flair.nii.gz", "BraTS20_001"), ("BraTS20_001_t1ce.nii.gz", "BraTS20_001"),
     ("case_0000.nii.gz", "case"), ("case_12_0003.nii", "case_12"), ("sub-01.nii", "sub-01"),
     ("sub-01_T1.nii.gz", "sub-01"), ("t1.nii.gz", "t1")],
)
def test_case_name(name: str, expected: str) -> None:
    assert case_name(name, BRATS) == expected


def test_is_nifti_name() -> None:
    assert is_nifti_name("a.nii.gz") and is_nifti_name("A.NII") and not is_nifti_name(".a.nii.gz.tmp-1.nii.gz")
    assert not is_nifti_name("a.png") and not is_nifti_name("a.nii.gz.json")


def test_brats_case_folder_orders_channels_by_the_model(tmp_path: Path) -> None:
    for channel in ("t2", "t1ce", "flair", "t1"):  # written out of order on purpose
        _touch(tmp_path / f"BraTS_7_{channel}.nii.gz")
    _touch(tmp_path / "BraTS_7_seg.nii.gz")  # a label file does not disturb the channels
    files = case_folder_files(tmp_path, BRATS)
    assert files is not None
    assert [f.name for f in files] == [f"BraTS_7_{c}.nii.gz" for c in BRATS]


def test_nnunet_case_folder_and_incomplete_folders(tmp_path: Path) -> None:
    for c in (1, 0):
        _touch(tmp_path / "a" / f"x_{c:04d}.nii.gz")
    files = case_folder_files(tmp_path / "a", ("t1", "t2"))
    assert files is not None and [f.name for f in files] == ["x_0000.nii.gz", "x_0001.nii.gz"]
    _touch(tmp_path / "b" / "x_flair.nii.gz")
    assert case_folder_files(tmp_path / "b", BRATS) is None


def test_discover_cases_mixes_files_groups_and_folders(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    for c in range(2):
        _touch(root / f"nn_{c:04d}.nii.gz")
    _touch(root / "lonely_0000.nii.gz")  # channel 0001 missing
    for channel in ("flair", "t1"):
        _touch(root / "Case9" / f"Case9_{channel}.nii.gz")
    _touch(root / "Empty" / "whatever.nii.gz")  # a folder that is not a case of this model
    (root / "notes.txt").write_text("ignored")
    _touch(root / ".hidden.nii.gz")  # e.g. an unfinished temporary output
    cases = discover_cases(root, ("flair", "t1"))
    by_name = {c.name: c for c in cases}
    assert [c.name for c in cases] == sorted(by_name) == ["Case9", "Empty", "lonely", "nn"]
    assert by_name["nn"].problem is None and [f.name for f in by_name["nn"].files] == ["nn_0000.nii.gz",
                                                                                         "nn_0001.nii.gz"]
    assert by_name["Case9"].problem is None
    assert by_name["lonely"].problem is not None and "incomplete nnU-Net channel group" in by_name["lonely"].problem
    assert by_name["Empty"].problem is not None and "not a case folder of this model" in by_name["Empty"].problem


def test_discover_single_channel_files_and_name_clashes(tmp_path: Path) -> None:
    _touch(tmp_path / "s1.nii.gz")
    _touch(tmp_path / "s2_0000.nii.gz")
    _touch(tmp_path / "s3_t1.nii")
    _touch(tmp_path / "s3.nii.gz")  # also case "s3"
    cases = discover_cases(tmp_path, ("t1",))
    assert [(c.name, len(c.files)) for c in cases] == [("s1", 1), ("s2", 1), ("s3", 1), ("s3", 1)]
    clashes = [c for c in cases if c.name == "s3"]
    assert all(c.problem is not None and "two inputs give the same case name" in c.problem for c in clashes)
    assert all(c.problem is None for c in cases if c.name != "s3")


def test_discover_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope: input folder not found"):
        discover_cases(tmp_path / "nope", ("t1",))


@pytest.mark.parametrize(("num_parts", "part_id"), [(1, 0), (3, 0), (3, 1), (3, 2), (10, 7)])
def test_shard_follows_the_nnunet_rule(num_parts: int, part_id: int) -> None:
    cases = [Case(f"c{i:02d}", ()) for i in (5, 0, 3, 1, 4, 2, 6)]  # unsorted on purpose
    mine = shard(cases, num_parts, part_id)
    ordered = sorted(c.name for c in cases)
    assert [c.name for c in mine] == [n for i, n in enumerate(ordered) if i % num_parts == part_id]
    parts = [{c.name for c in shard(cases, num_parts, k)} for k in range(num_parts)]
    assert set().union(*parts) == set(ordered) and sum(len(p) for p in parts) == len(ordered)


def test_shard_refuses_bad_parts() -> None:
    with pytest.raises(InputError, match=r"invalid shard .*num_parts=2, part_id=2"):
        shard([], 2, 2)


def test_every_form_gives_the_same_volume(tmp_path: Path) -> None:
    flair, t1 = _volume(1), _volume(2)
    stacked = np.stack([flair, t1], axis=-1)
    f_path = _save(tmp_path / "case" / "p_flair.nii.gz", flair)
    t_path = _save(tmp_path / "case" / "p_t1.nii.gz", t1)
    both = _save(tmp_path / "both.nii.gz", stacked)
    forms = [[f_path, t_path], [str(f_path), str(t_path)], tmp_path / "case", both, str(both),
             nib.load(both), (stacked, AFFINE), (stacked.astype(np.float64), AFFINE.tolist())]
    for form in forms:
        volume = resolve_volume(form, ("flair", "t1"))  # type: ignore[arg-type]
        assert volume.data.dtype == np.float32 and volume.data.shape == (2, 9, 10, 8)
        np.testing.assert_array_equal(volume.data[0], flair)
        np.testing.assert_array_equal(volume.data[1], t1)
        np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-6)
        assert volume.reference.shape[:3] == (9, 10, 8)


def test_array_input_keeps_no_second_copy() -> None:
    data = _volume(3)
    volume = resolve_volume((data, AFFINE), ("t1",))
    assert volume.source == "<in-memory image>"
    # The reference only carries the header: its voxels are a zero-stride placeholder.
    assert np.asarray(volume.reference.dataobj).strides == (0, 0, 0)
    np.testing.assert_array_equal(volume.reference.affine, AFFINE)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda tmp: (_volume(1, (9, 10, 6, 2)), AFFINE), r"<in-memory image>: volume is smaller than one patch"),
        (lambda tmp: (_volume(1, (9, 10)), AFFINE), r"wrong number of dimensions"),
        (lambda tmp: (np.zeros((9, 9, 9), np.complex64), AFFINE), r"image is not real-valued"),
        (lambda tmp: (_volume(1), np.eye(4)[:3]), r"affine has the wrong shape"),
        (lambda tmp: [_touch(tmp / "a.nii.gz"), _touch(tmp / "b.nii.gz"), _touch(tmp / "c.nii.gz")],
         r"a\.nii\.gz: wrong number of channels \(expected 2 channel\(s\) \['flair', 't1'\]; found 3 \(channel "
         r"files given\)\)"),
        (lambda tmp: _touch(tmp / "one.nii.gz"), r"one\.nii\.gz: wrong number of channels .*found 1 \(channels in "
         r"the file\)"),
        (lambda tmp: [_touch(tmp / "a.nii.gz"), _save(tmp / "b.nii.gz", _volume(0, (9, 10, 9)))],
         r"b\.nii\.gz: channel shape differs"),
        (lambda tmp: _touch(tmp / "dir" / "x.nii.gz").parent, r"dir: not a case folder of this model"),
        (lambda tmp: 3.5, r"unsupported input .*found float"),
        (lambda tmp: [], r"unsupported input"),
    ],
)
def test_bad_forms(tmp_path: Path, make: object, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        resolve_volume(make(tmp_path), ("flair", "t1"))  # type: ignore[operator]
