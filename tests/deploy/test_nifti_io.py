"""NIfTI loading, validation and writing on tiny synthetic volumes."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from ossnet_deploy.errors import InputError, OutputExistsError
from ossnet_deploy.nifti_io import (
    check_spatial,
    labels_image,
    load_channels,
    load_label,
    load_nifti,
    read_array,
    save_labels,
)

SHAPE = (4, 5, 6)
# An oblique affine with 1.5 mm voxels: rotation about k plus a translation.
_ANGLE = np.deg2rad(10.0)
AFFINE = np.array(
    [
        [1.5 * np.cos(_ANGLE), -1.5 * np.sin(_ANGLE), 0.0, -10.0],
        [1.5 * np.sin(_ANGLE), 1.5 * np.cos(_ANGLE), 0.0, 20.0],
        [0.0, 0.0, 2.0, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def save(path, data, affine=AFFINE, **header):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=4)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def truncate(path, keep: int):
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


# ----------------------------------------------------------------------------------------
# load_nifti


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_load_nifti_reads_the_header_lazily(tmp_path, name):
    path = save(tmp_path / name, volume())
    img = load_nifti(path)
    assert isinstance(img, nib.Nifti1Image)
    assert img.shape == SHAPE
    assert not isinstance(img.dataobj, np.ndarray)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.nii\.gz: image not found"):
        load_nifti(tmp_path / "nothere.nii.gz")


def test_folder_and_wrong_suffix(tmp_path):
    (tmp_path / "case.nii.gz").mkdir()
    with pytest.raises(InputError, match=r"case\.nii\.gz: is a folder"):
        load_nifti(tmp_path / "case.nii.gz")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"img\.png: unsupported file type.*\.png"):
        load_nifti(tmp_path / "img.png")


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        ("png.nii.gz", b"\x89PNG\r\n\x1a\n" + bytes(500), "not gzip-compressed"),
        ("text.nii", b"just some text\n" * 40, "no NIfTI header"),
        ("empty.nii", b"", "truncated header"),
    ],
)
def test_not_a_nifti(tmp_path, name, content, found):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=rf"{re.escape(name)}: not a readable NIfTI file.*{found}"):
        load_nifti(tmp_path / name)


def test_gzip_data_named_nii_is_explained(tmp_path):
    path = save(tmp_path / "img.nii.gz", volume())
    path.rename(tmp_path / "img.nii")
    with pytest.raises(InputError, match=r"img\.nii: not a readable NIfTI file.*rename it to \.nii\.gz"):
        load_nifti(tmp_path / "img.nii")


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_truncated_header(tmp_path, name):
    path = truncate(save(tmp_path / name, volume()), 40 if name.endswith(".gz") else 200)
    with pytest.raises(InputError, match=rf"{re.escape(name)}: not a readable NIfTI file"):
        load_nifti(path)


# ----------------------------------------------------------------------------------------
# read_array


def test_read_array_returns_float32_scaled_data(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    path = save(tmp_path / "scaled.nii.gz", raw, scl_slope=0.5, scl_inter=-3.0)
    data = read_array(load_nifti(path), path)
    assert data.dtype == np.float32 and data.shape == SHAPE
    np.testing.assert_allclose(data, raw * 0.5 - 3.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_truncated_voxel_data(tmp_path, name):
    path = save(tmp_path / name, volume(shape=(16, 16, 16)))
    truncate(path, path.stat().st_size // 2)
    img = load_nifti(path)  # the header is intact
    with pytest.raises(
        InputError, match=rf"{re.escape(name)}: file is truncated or corrupt.*16384 bytes.*re-copy"
    ):
        read_array(img, path)


def test_non_finite_voxels_are_counted_and_located(tmp_path):
    data = volume()
    data[1, 2, 3] = np.nan
    data[3, 0, 0] = np.inf
    path = save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError, match=r"nan\.nii\.gz: .*2 NaN/inf voxels, the first at index \(1, 2, 3\)"):
        read_array(load_nifti(path), path)


# ----------------------------------------------------------------------------------------
# check_spatial


def test_check_spatial_accepts_3d_and_4d():
    assert check_spatial(nib.Nifti1Image(volume(), AFFINE), "a.nii", allow_4d=False) == (SHAPE, 1)
    four = nib.Nifti1Image(volume(shape=(*SHAPE, 2)), AFFINE)
    assert check_spatial(four, "a.nii", allow_4d=True) == (SHAPE, 2)
    single = nib.Nifti1Image(volume(shape=(*SHAPE, 1)), AFFINE)
    assert check_spatial(single, "a.nii", allow_4d=False) == (SHAPE, 1)
    tiny_voxels = np.diag([0.05, 0.05, 0.05, 1.0])
    assert check_spatial(nib.Nifti1Image(volume(), tiny_voxels), "a.nii", allow_4d=False) == (SHAPE, 1)


@pytest.mark.parametrize(
    ("shape", "allow_4d"),
    [((4, 5), True), ((4, 5, 6, 2, 3), True), ((4, 5, 6, 2), False)],
    ids=["2d", "5d", "4d"],
)
def test_check_spatial_refuses_dimensions(shape, allow_4d):
    img = nib.Nifti1Image(np.zeros(shape, np.float32), AFFINE)
    with pytest.raises(
        InputError, match=rf"x\.nii\.gz: wrong number of dimensions.*shape {re.escape(str(shape))}"
    ):
        check_spatial(img, "x.nii.gz", allow_4d=allow_4d)


def test_singular_affine_is_refused(tmp_path):
    singular = AFFINE.copy()
    singular[:3, 2] = singular[:3, 0]  # third voxel axis parallel to the first
    path = save(tmp_path / "sing.nii.gz", volume(), affine=singular)
    with pytest.raises(InputError, match=r"sing\.nii\.gz: affine is singular"):
        check_spatial(load_nifti(path), path, allow_4d=False)


def test_non_finite_affine_is_refused():
    affine = AFFINE.copy()
    affine[0, 3] = np.nan
    with pytest.raises(InputError, match=r"nanaff\.nii: affine has non-finite entries"):
        check_spatial(nib.Nifti1Image(volume(), affine), "nanaff.nii", allow_4d=False)


# ----------------------------------------------------------------------------------------
# load_channels


def test_one_file_per_channel(tmp_path):
    paths = [save(tmp_path / f"case_000{c}.nii.gz", volume(c)) for c in range(3)]
    data, reference = load_channels(paths)
    assert data.shape == (3, *SHAPE) and data.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(data[c], volume(c))
    assert reference.get_filename() == str(paths[0])


def test_single_4d_file_is_channels_last(tmp_path):
    four = np.stack([volume(0), volume(1)], axis=-1)
    data, reference = load_channels([save(tmp_path / "multi.nii.gz", four)])
    assert data.shape == (2, *SHAPE)
    np.testing.assert_array_equal(data[1], volume(1))
    assert reference.shape == (*SHAPE, 2)


def test_channel_shape_mismatch_names_the_file(tmp_path):
    first = save(tmp_path / "c0.nii.gz", volume())
    second = save(tmp_path / "c1.nii.gz", volume(shape=(4, 5, 7)))
    with pytest.raises(
        InputError, match=r"c1\.nii\.gz: channel shape differs from .*c0\.nii\.gz.*\(4, 5, 6\).*\(4, 5, 7\)"
    ):
        load_channels([first, second])


def test_channel_affine_tolerance(tmp_path):
    first = save(tmp_path / "c0.nii.gz", volume())
    close = AFFINE.copy()
    close[0, 3] += 1e-4
    load_channels([first, save(tmp_path / "close.nii.gz", volume(), affine=close)])
    far = AFFINE.copy()
    far[0, 3] += 0.5
    with pytest.raises(
        InputError, match=r"far\.nii\.gz: channel affine differs from .*c0\.nii\.gz by up to 0\.5 mm"
    ):
        load_channels([first, save(tmp_path / "far.nii.gz", volume(), affine=far)])


def test_4d_file_among_channel_files_is_refused(tmp_path):
    first = save(tmp_path / "c0.nii.gz", volume())
    four = save(tmp_path / "c1.nii.gz", volume(shape=(*SHAPE, 2)))
    with pytest.raises(InputError, match=r"c1\.nii\.gz: wrong number of dimensions.*one 3D file per channel"):
        load_channels([first, four])


def test_no_paths_is_refused():
    with pytest.raises(InputError, match="no input image files"):
        load_channels([])


# ----------------------------------------------------------------------------------------
# load_label


def test_label_loads_as_uint8(tmp_path):
    reference = nib.Nifti1Image(volume(), AFFINE)
    labels = np.zeros(SHAPE, np.float32)
    labels[1:3, 1:3, 1:3] = 2.0  # float storage of whole numbers is fine
    path = save(tmp_path / "lab.nii.gz", labels)
    out = load_label(path, reference, allowed_values={0, 1, 2})
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels.astype(np.uint8))


def test_unexpected_label_value_is_named(tmp_path):
    labels = np.zeros(SHAPE, np.int16)
    labels[0, 0, 0] = 3
    path = save(tmp_path / "lab.nii.gz", labels)
    with pytest.raises(InputError, match=r"lab\.nii\.gz: unexpected label values.*\[0, 1, 2\].*values \[3\]"):
        load_label(path, nib.Nifti1Image(volume(), AFFINE), allowed_values={0, 1, 2})
    labels[0, 0, 0] = 300
    save(path, labels)
    with pytest.raises(InputError, match=r"lab\.nii\.gz: unexpected label values.*0\.\.255.*values \[300\]"):
        load_label(path, nib.Nifti1Image(volume(), AFFINE), allowed_values=None)


def test_fractional_labels_are_refused(tmp_path):
    labels = np.zeros(SHAPE, np.float32)
    labels[0, 0, 0] = 0.5
    path = save(tmp_path / "soft.nii.gz", labels)
    with pytest.raises(InputError, match=r"soft\.nii\.gz: label values are not whole numbers.*0\.5"):
        load_label(path, nib.Nifti1Image(volume(), AFFINE))


def test_label_on_another_grid_is_refused(tmp_path):
    reference = nib.Nifti1Image(volume(shape=(*SHAPE, 2)), AFFINE)  # a 4D image: its spatial grid counts
    path = save(tmp_path / "lab.nii.gz", np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(InputError, match=r"lab\.nii\.gz: label shape differs from img\.nii\.gz"):
        load_label(path, reference, reference_path="img.nii.gz")


# ----------------------------------------------------------------------------------------
# save_labels


def _reference_file(tmp_path, shape=SHAPE):
    qform_affine = AFFINE.copy()
    qform_affine[:3, 3] += 1.0  # qform and sform disagree on purpose: both must survive
    img = nib.Nifti1Image(volume(shape=shape), AFFINE)
    img.set_qform(qform_affine, code=2)
    img.set_sform(AFFINE, code=4)
    path = tmp_path / "input.nii.gz"
    nib.save(img, path)
    return load_nifti(path)


@pytest.mark.parametrize("shape", [SHAPE, (*SHAPE, 3)], ids=["3d", "4d"])
def test_saved_labels_keep_the_input_geometry(tmp_path, shape):
    reference = _reference_file(tmp_path, shape)
    labels = np.zeros(SHAPE, np.uint8)
    labels[1, 2, 3] = 1
    labels[2, 2, 2] = 255
    out = save_labels(labels, reference, tmp_path / "out" / "seg.nii.gz")
    written = nib.load(out)
    assert written.shape == SHAPE
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, reference.affine)
    ref_qform, ref_qcode = reference.header.get_qform(coded=True)
    qform, qcode = written.header.get_qform(coded=True)
    assert qcode == ref_qcode == 2
    np.testing.assert_allclose(qform, ref_qform, atol=1e-6)
    sform, scode = written.header.get_sform(coded=True)
    assert scode == 4
    np.testing.assert_array_equal(sform, reference.header.get_sform())
    np.testing.assert_array_equal(written.dataobj.get_unscaled(), labels)  # stored exactly, no scaling
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_scaling_of_the_reference_is_not_applied_to_labels(tmp_path):
    reference = nib.Nifti1Image(volume(), AFFINE)
    reference.header.set_slope_inter(2.5, 10.0)
    labels = np.full(SHAPE, 3, np.uint8)
    written = nib.load(save_labels(labels, reference, tmp_path / "seg.nii"))
    np.testing.assert_array_equal(written.dataobj.get_unscaled(), labels)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_save_refuses_to_overwrite(tmp_path):
    reference = nib.Nifti1Image(volume(), AFFINE)
    labels = np.zeros(SHAPE, np.uint8)
    out = save_labels(labels, reference, tmp_path / "seg.nii.gz")
    with pytest.raises(OutputExistsError, match=r"seg\.nii\.gz: output already exists.*overwrite"):
        save_labels(labels, reference, out)
    save_labels(np.ones(SHAPE, np.uint8), reference, out, overwrite=True)
    assert np.asarray(nib.load(out).dataobj).min() == 1


def test_save_refuses_a_non_nifti_name(tmp_path):
    with pytest.raises(InputError, match=r"seg\.png: output must be a NIfTI file"):
        save_labels(np.zeros(SHAPE, np.uint8), nib.Nifti1Image(volume(), AFFINE), tmp_path / "seg.png")


def test_labels_image_checks_its_arguments():
    reference = nib.Nifti1Image(volume(), AFFINE)
    with pytest.raises(ValueError, match=r"spatial shape \(4, 5, 6\), got \(4, 5\)"):
        labels_image(np.zeros((4, 5), np.uint8), reference)
    with pytest.raises(ValueError, match="must be uint8"):
        labels_image(np.zeros(SHAPE, np.int32), reference)
    with pytest.raises(ValueError, match="'sform_code'"):
        labels_image(np.zeros(SHAPE, np.uint8), reference, extra_header={"sform_code": 0})
    img = labels_image(np.zeros(SHAPE, bool), reference, extra_header={"descrip": b"ossnet test"})
    assert img.get_data_dtype() == np.uint8
    assert img.header["descrip"].item() == b"ossnet test"
