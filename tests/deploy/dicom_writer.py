"""DICOM series written by the tests themselves (pydicom), for the DICOM reader and SEG writer tests.

:func:`write_series` turns a volume and its RAS+ affine (the NIfTI convention) into a series of
single-frame MR or CT images: one file per slice, random names, optionally shuffled into nested
folders, optionally compressed, optionally re-quantised with a rescale slope. The geometry tags
are derived from the affine exactly as a scanner writes them (LPS, ImagePositionPatient of each
slice, ImageOrientationPatient row then column cosines, PixelSpacing row then column spacing).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
FOR_UID = "1.2.826.0.1.3680043.8.498.2"
PATIENT_NAME = "Doe^Jane"  # tests check this never reaches a log or an output name
PATIENT_ID = "PID-SECRET-4711"


@dataclass(frozen=True)
class Written:
    """What :func:`write_series` wrote."""

    folder: Path
    files: tuple[Path, ...]
    series_uid: str
    stored: np.ndarray  # (X, Y, Z) the stored integers
    slope: float
    intercept: float


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def oblique_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], angles: tuple[float, float, float],
                   centre_mm: tuple[float, float, float] = (3.0, -7.0, 11.0)) -> np.ndarray:
    """A RAS+ affine: rotations (degrees, about x then y then z) of a grid of ``spacing`` centred at ``centre_mm``."""
    ax, ay, az = np.radians(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    linear = rz @ ry @ rx @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre_mm) - linear @ ((np.asarray(shape) - 1) / 2)
    return affine


def write_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    series_uid: str | None = None,
    series_number: int = 3,
    modality: str = "MR",
    slope: float = 1.0,
    intercept: float = 0.0,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    shuffle_seed: int | None = 0,
    nested: bool = True,
    study_uid: str = STUDY_UID,
    edit: Callable[[Any, int], None] | None = None,
) -> Written:
    """Write ``volume`` (``(X, Y, Z)``, RAS+ ``affine``) as a series of single-frame images.

    Stored value = ``round((volume - intercept) / slope)`` as int16 (uint16 if non-negative), so
    ``stored * slope + intercept`` is the value a reader must give back. Slice ``k`` of the
    volume is one file; file names are random, and with ``nested`` spread over two sub-folders.
    ``edit(ds, k)`` may change each dataset before it is written (malformed-series tests).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, generate_uid

    rng = np.random.default_rng(shuffle_seed)
    series_uid = series_uid or generate_uid()
    stored = np.rint((np.asarray(volume, np.float64) - intercept) / slope)
    dtype = np.uint16 if stored.min() >= 0 else np.int16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_cos = col_step / np.linalg.norm(col_step)
    col_cos = row_step / np.linalg.norm(row_step)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    nx, ny, nz = stored.shape
    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = "t1 for " + PATIENT_NAME  # free text may hold patient data
        ds.Modality = modality
        ds.Manufacturer = "tests"
        ds.FrameOfReferenceUID = FOR_UID
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ContentDate = datetime.date(2024, 1, 2).strftime("%Y%m%d")
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * slice_step]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [_ds(np.linalg.norm(row_step)), _ds(np.linalg.norm(col_step))]
        ds.SliceThickness = _ds(np.linalg.norm(slice_step))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if dtype == np.int16 else 0
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        if modality == "MR":
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = "3.0"
            ds.EchoTrainLength = 1
            ds.RepetitionTime = "2000"
            ds.RescaleType = "US"
        else:
            ds.KVP = "120"
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        if transfer_syntax != "1.2.840.10008.1.2.1":
            plugin = "pyjpegls" if transfer_syntax.startswith("1.2.840.10008.1.2.4.8") else ""
            ds.compress(transfer_syntax, np.ascontiguousarray(stored[:, :, k].T), encoding_plugin=plugin)
        if edit is not None:
            edit(ds, k)
        sub = folder / (f"part{int(rng.integers(2))}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{rng.integers(1 << 40):x}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return Written(folder, tuple(files), series_uid, stored, slope, intercept)


def world_resample_to(src_data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                      dst_shape: tuple[int, ...]) -> np.ndarray:
    """``src_data`` read at the voxel centres of ``dst`` when the two grids are one grid up to an
    axis permutation and flips (the matrix between them must be a signed permutation with integer
    offsets; otherwise AssertionError, since then the two readers disagree about the geometry)."""
    m = np.linalg.inv(src_affine) @ dst_affine
    rounded = np.rint(m)
    np.testing.assert_allclose(m, rounded, atol=1e-3)
    idx = np.indices(dst_shape).reshape(3, -1)
    src_idx = (rounded[:3, :3] @ idx + rounded[:3, 3:4]).astype(np.int64)
    for axis in range(3):
        assert src_idx[axis].min() >= 0 and src_idx[axis].max() < src_data.shape[axis], "grids do not overlap"
    return src_data[src_idx[0], src_idx[1], src_idx[2]].reshape(dst_shape)
