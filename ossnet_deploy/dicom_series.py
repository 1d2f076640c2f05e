"""DICOM series in: find the one image series of a folder or zip, read it as a checked volume.

The rules (docs/design.md#dicom):

* **Where**: a folder of DICOM files (any names, any order, nested folders), or a ``.zip`` of
  them. Files are recognised by the ``DICM`` magic, never by name; other files are ignored.
  Zips are read in memory; nothing is written next to the input.
* **Which series**: instances are grouped by SeriesInstanceUID. Non-image objects (SR, SEG,
  RTSTRUCT, PR, KO, ...), objects without pixels and localizers (ImageType ``LOCALIZER``) are
  skipped. More than one remaining series is refused with a list of them (UID, number, modality,
  images, matrix, plane; never patient data or free-text descriptions); ``series_uid`` picks one.
* **Checks** on the chosen series, each an :class:`InputError` naming the series, what was found
  and the fix: missing position/orientation/spacing tags, mixed orientation or matrix size,
  enhanced multi-frame objects (refused: not read), several volumes in one series (echoes,
  diffusion, time points: the cause is named), duplicate positions, gantry tilt, missing slices,
  uneven spacing, damaged or truncated files, colour images, Modality LUTs.
* **Geometry** comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing only,
  never from the scan plane: slices are sorted along the normal ``row x column`` and the slice
  step is measured from the positions (so its sign and size are the data's). The array is
  ``(X, Y, Z)`` = (column index, row index, slice index along the normal) and the affine maps
  it to RAS+ millimetres (DICOM's LPS with x and y negated), the NIfTI convention the rest of
  the runtime uses (docs/design.md#geometry).
* **Values**: RescaleSlope/RescaleIntercept applied per slice, float32. Compressed transfer
  syntaxes are decoded where an installed decoder allows (RLE always, JPEG-LS with the
  ``dicom`` extra); otherwise a :class:`DependencyError` names the package to install.

pydicom is imported lazily (the ``dicom`` extra: ``pip install "ossnet[dicom]"``).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ossnet_deploy.errors import DependencyError, InputError, describe

__all__ = [
    "DICOM_INSTALL",
    "DicomSeriesRef",
    "DicomVolume",
    "SeriesSummary",
    "find_series",
    "is_dicom_input",
    "list_studies",
    "read_series",
    "require_pydicom",
]

PathLike = str | os.PathLike[str]

DICOM_INSTALL = 'pip install "ossnet[dicom]"'

# Positions closer than this along the normal are the same slice (DICOM decimal strings carry
# ~1e-5 mm; scanners write positions rounded to 1e-3..1e-2 mm).
_SAME_POSITION_MM = 0.01
# Slice positions may deviate from an even grid by this fraction of the step (plus 1e-3 mm of
# rounding) before the series counts as unevenly spaced; 1 % of a voxel moves no voxel centre
# by more than 1 % of a voxel, far below what nearest-neighbour labels can show.
_SPACING_TOLERANCE = 0.01
# Largest in-plane drift per mm along the normal before the stack counts as tilted (0.06 deg).
_TILT_TOLERANCE = 1e-3
# Orientation cosines equal within this are one orientation.
_ORIENTATION_ATOL = 1e-4

_NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "PR", "KO", "REG",
                                   "DOC", "FID", "RWV", "AU", "ECG", "HD", "PLAN"})
# SOP class prefixes of objects that are not images of the patient (PS3.4 Annex B).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, SEG, fiducials
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture (screenshots) and, as 1.1.77.*, VL photographs
)
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pyjpegls (part of ossnet[dicom])",
    "1.2.840.10008.1.2.4.81": "pyjpegls (part of ossnet[dicom])",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
}


def require_pydicom() -> ModuleType:
    """Import pydicom, or raise :class:`DependencyError` with the install command."""
    try:
        import pydicom
    except ImportError:
        raise DependencyError(describe(None, "reading DICOM needs pydicom", found="pydicom is not installed",
                                       fix=DICOM_INSTALL)) from None
    return pydicom


# --------------------------------------------------------------------------------------------
# Where the files are
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One file of an input: a path, or a member of a zip (``zip_path`` set)."""

    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        """What messages name: the path, or ``archive.zip!member``."""
        return str(self.path) if self.member is None else f"{self.path}!{self.member}"

    def read(self, archive: zipfile.ZipFile | None) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        if archive is None:
            raise ValueError("a zip member needs its open archive")
        return archive.read(self.member)


def _is_zip_name(path: Path) -> bool:
    return path.name.lower().endswith(".zip") and not path.name.startswith(".")


def _has_dicom_magic(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _walk_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` (recursive, sorted), hidden files and folders skipped."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(folder) / name


def _file_is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return _has_dicom_magic(f.read(132))
    except OSError:
        return False


def is_dicom_input(path: PathLike) -> bool:
    """True for a ``.zip`` file, or a folder with a DICOM file (``DICM`` magic) in it or below it.

    Cheap: stops at the first DICOM file found.
    """
    p = Path(path)
    if p.is_file():
        return _is_zip_name(p) or _file_is_dicom(p)
    if not p.is_dir():
        return False
    return any(_file_is_dicom(f) for f in _walk_files(p))



@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[tuple[list[_Member], zipfile.ZipFile | None]]:
    """The candidate files of a folder (recursive) or a zip, and the open archive for a zip.

    Raises:
        InputError: a missing path, a file that is neither a zip nor a folder, a damaged zip.
    """
    if not path.exists():
        raise InputError(describe(path, "DICOM input not found", expected="a folder of DICOM files or a .zip",
                                  fix="check the path"))
    if path.is_dir():
        yield [_Member(f) for f in _walk_files(path)], None
        return
    if not zipfile.is_zipfile(path):
        raise InputError(describe(path, "not a DICOM input", expected="a folder of DICOM files or a .zip of them",
                                  found="a file that is not a zip archive",
                                  fix="pass the folder that holds the series (or a zip of it)"))
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(describe(path, "damaged zip archive", found=str(exc), fix="re-copy or re-create it")) from None
    with archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        names = sorted(n for n in names if not any(part.startswith(".") or part == "__MACOSX"
                                                   for part in n.split("/")))
        yield [_Member(path, n) for n in names], archive


# --------------------------------------------------------------------------------------------
# Scanning headers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instance:
    """One image object: where it is and its header (no pixel data)."""

    member: _Member
    header: Any  # pydicom.Dataset


@dataclass
class _Scan:
    """What a folder or zip holds: image instances by series, and what was skipped and why."""

    series: dict[str, list[_Instance]]
    skipped: Counter[str]
    other_files: int

    def skipped_text(self) -> str:
        parts = [f"{count} {what}" for what, count in sorted(self.skipped.items())]
        if self.other_files:
            parts.append(f"{self.other_files} non-DICOM file(s)")
        return ", ".join(parts) or "nothing"


_READ_ERRORS = (EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError,
                RuntimeError, NotImplementedError)


def _damaged(label: str, exc: BaseException) -> InputError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return InputError(describe(label, "damaged or truncated DICOM file", found=f"{type(exc).__name__}: {first}",
                               fix="re-copy or re-export the series (the file is incomplete or corrupt)"))


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings while reading.

    pydicom warns about odd values by quoting them, and those may be patient data: none of it may
    reach the logs (docs/design.md#dicom). Real problems raise instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _skip_reason(header: Any) -> str | None:
    """Why an object is not an image of a volume (None: it is one)."""
    modality = str(getattr(header, "Modality", "") or "").upper()
    sop = str(getattr(header, "SOPClassUID", "") or "")
    if modality in _NON_IMAGE_MODALITIES:
        return f"{modality} object(s)"
    if sop.startswith(_NON_IMAGE_SOP_PREFIXES):
        return "non-image, secondary-capture or photographic object(s)"
    if "Rows" not in header or "Columns" not in header:
        return "object(s) without pixel data"
    image_type = [str(v).upper() for v in (getattr(header, "ImageType", None) or [])]
    if "LOCALIZER" in image_type:
        return "localizer image(s)"
    return None


def _scan(members: Sequence[_Member], archive: zipfile.ZipFile | None, *, tags: Sequence[str] | None = None,
          keep_all: bool = False) -> _Scan:
    """Read every DICOM header (stopping before the pixels) and sort the objects into series.

    Raises:
        InputError: a file with the DICOM magic whose header cannot be parsed.
    """
    pydicom = require_pydicom()
    series: dict[str, list[_Instance]] = {}
    skipped: Counter[str] = Counter()
    other = 0
    with _quiet_pydicom():
        for member in members:
            try:
                if member.member is None:
                    with open(member.path, "rb") as f:
                        if not _has_dicom_magic(f.read(132)):
                            other += 1
                            continue
                    source: Any = member.path
                else:
                    raw = member.read(archive)
                    if not _has_dicom_magic(raw[:132]):
                        other += 1
                        continue
                    source = io.BytesIO(raw)
            except (OSError, zipfile.BadZipFile) as exc:
                raise _damaged(member.label, exc) from None
            try:
                header = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=tags)
            except (*_READ_ERRORS, pydicom.errors.InvalidDicomError) as exc:
                raise _damaged(member.label, exc) from None
            reason = None if keep_all else _skip_reason(header)
            if reason is not None:
                skipped[reason] += 1
                continue
            uid = str(getattr(header, "SeriesInstanceUID", "") or "")
            series.setdefault(uid, []).append(_Instance(member, header))
    return _Scan(series, skipped, other)


def list_studies(path: PathLike) -> Counter[str]:
    """StudyInstanceUID -> number of DICOM files, for every DICOM file in a folder (recursive, zips
    not opened) or a zip. Reads one tag per file.

    Raises:
        InputError: a missing input or a damaged DICOM header.
    """
    with _open_input(Path(path)) as (members, archive):
        if archive is None:
            members = [m for m in members if not _is_zip_name(m.path)]
        scan = _scan(members, archive, tags=["StudyInstanceUID"], keep_all=True)
    return Counter({uid: len(items) for uid, items in _by_study(scan).items()})


def _by_study(scan: _Scan) -> dict[str, list[_Instance]]:
    out: dict[str, list[_Instance]] = {}
    for items in scan.series.values():
        for inst in items:
            out.setdefault(str(getattr(inst.header, "StudyInstanceUID", "") or ""), []).append(inst)
    return out


# --------------------------------------------------------------------------------------------
# Series summaries and choice
# --------------------------------------------------------------------------------------------


def _floats(header: Any, keyword: str, count: int) -> np.ndarray | None:
    value = getattr(header, keyword, None)
    if value is None:
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (count,) and np.isfinite(out).all() else None


def _plane(orientation: np.ndarray | None) -> str:
    """A descriptive name of the plane (for listing series only; geometry never uses it)."""
    if orientation is None:
        return "no orientation"
    normal = np.abs(np.cross(orientation[:3], orientation[3:]))
    axis = int(np.argmax(normal))
    if normal[axis] < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class SeriesSummary:
    """One candidate series, as listed to the user (no patient data, no free text).

    Attributes:
        uid: SeriesInstanceUID.
        number: SeriesNumber, or None.
        modality: e.g. ``"MR"``.
        images: number of image objects.
        matrix: ``"rows x columns"`` (several when mixed).
        plane: axial / sagittal / coronal / oblique (descriptive only).
        frames: total frames (differs from ``images`` for multi-frame objects).
    """

    uid: str
    number: int | None
    modality: str
    images: int
    matrix: str
    plane: str
    frames: int

    def text(self) -> str:
        number = "" if self.number is None else f"series {self.number}, "
        frames = "" if self.frames == self.images else f" holding {self.frames} frames"
        return f"{self.uid} ({number}{self.modality}, {self.images} image(s){frames}, {self.matrix}, {self.plane})"


def _summary(uid: str, items: Sequence[_Instance]) -> SeriesSummary:
    first = items[0].header
    matrices = sorted({f"{int(i.header.Rows)}x{int(i.header.Columns)}" for i in items})
    frames = sum(max(1, int(getattr(i.header, "NumberOfFrames", 1) or 1)) for i in items)
    try:
        number: int | None = int(first.SeriesNumber)
    except (AttributeError, TypeError, ValueError):
        number = None
    return SeriesSummary(uid or "(no SeriesInstanceUID)", number, str(getattr(first, "Modality", "") or "?"),
                         len(items), "/".join(matrices), _plane(_floats(first, "ImageOrientationPatient", 6)), frames)


def find_series(path: PathLike) -> list[SeriesSummary]:
    """The image series of a folder or zip (after skipping non-images and localizers), by UID.

    Raises:
        InputError: a missing input or a damaged DICOM header.
    """
    with _open_input(Path(path)) as (members, archive):
        scan = _scan(members, archive)
    return [_summary(uid, items) for uid, items in sorted(scan.series.items())]


def _choose(source: Path, scan: _Scan, series_uid: str | None) -> tuple[str, list[_Instance]]:
    if not scan.series:
        raise InputError(describe(source, "no DICOM image series found", expected="the files of one CT/MR series",
                                  found=f"skipped {scan.skipped_text()}",
                                  fix="pass the folder (or zip) that holds the image series"))
    listing = "; ".join(_summary(uid, items).text() for uid, items in sorted(scan.series.items()))
    if series_uid is not None:
        if series_uid not in scan.series:
            raise InputError(describe(source, f"series {series_uid} not found", expected="one of the image series",
                                      found=listing, fix="pass --series-uid with one of the UIDs listed"))
        return series_uid, scan.series[series_uid]
    if len(scan.series) > 1:
        raise InputError(describe(source, f"{len(scan.series)} image series found, which one is meant is unclear",
                                  expected="one image series", found=listing,
                                  fix="choose one with --series-uid UID (Python: series_uid=...)"))
    ((uid, items),) = scan.series.items()
    return uid, items


# --------------------------------------------------------------------------------------------
# Geometry checks
# --------------------------------------------------------------------------------------------


_MULTI_VOLUME_TAGS = (
    # (keyword or (group, element), cause); the first tag whose values differ between the images at
    # one position names the cause.
    ("EchoNumbers", "several echoes"),
    ("EchoTime", "several echoes"),
    ("DiffusionBValue", "diffusion weighting (several b-values or directions)"),
    ((0x0019, 0x100C), "diffusion weighting (several b-values or directions)"),  # Siemens b-value
    ((0x0043, 0x1039), "diffusion weighting (several b-values or directions)"),  # GE b-value
    ("DiffusionGradientOrientation", "diffusion weighting (several b-values or directions)"),
    ("TemporalPositionIdentifier", "several time points"),
    ("TriggerTime", "several time points (cardiac phases)"),
    ("InversionTime", "several inversion times"),
    ("ImageType", "several image types (e.g. magnitude and phase)"),
    ("AcquisitionNumber", "several acquisitions"),
)


def _tag_value(header: Any, tag: Any) -> str:
    # A keyword gives the value, a (group, element) tag the data element.
    found = header.get(tag)
    if found is None:
        return ""
    return str(getattr(found, "value", found))


def _multi_volume_cause(groups: Sequence[Sequence[_Instance]]) -> str:
    for tag, cause in _MULTI_VOLUME_TAGS:
        if any(len({_tag_value(i.header, tag) for i in group}) > 1 for group in groups):
            return cause
    return "several volumes whose images differ in no echo, diffusion, time or acquisition tag"


@dataclass(frozen=True)
class _Geometry:
    """The sorted stack and its grid."""

    instances: tuple[_Instance, ...]
    affine: np.ndarray  # (4, 4) RAS+
    spacing: tuple[float, float, float]


def _series_error(where: str, problem: str, *, expected: str | None = None, found: str | None = None,
                  fix: str | None = None) -> InputError:
    return InputError(describe(where, problem, expected=expected, found=found, fix=fix))


def _check_stack(where: str, items: Sequence[_Instance]) -> _Geometry:
    """Validate one series' images as one evenly spaced, untilted stack; sort it along the normal.

    Raises:
        InputError: each refusal listed in the module docstring.
    """
    multi = [i for i in items if int(getattr(i.header, "NumberOfFrames", 1) or 1) > 1]
    if multi:
        sop = str(getattr(multi[0].header, "SOPClassUID", ""))
        raise _series_error(where, "enhanced or multi-frame DICOM objects are not read by ossnet",
                            expected="a series of single-frame images (one file per slice)",
                            found=f"{len(multi)} multi-frame object(s) (SOP class {sop}, "
                                  f"{int(multi[0].header.NumberOfFrames)} frames in {multi[0].member.label})",
                            fix="convert it to single-frame images (e.g. dcm2niix to NIfTI, then segment the NIfTI, "
                                "or the scanner's 'classic/single-frame' export)")
    colour = [i for i in items if int(getattr(i.header, "SamplesPerPixel", 1) or 1) != 1
              or not str(getattr(i.header, "PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")]
    if colour:
        raise _series_error(where, "colour images cannot be segmented", expected="greyscale (MONOCHROME1/2) images",
                            found=f"PhotometricInterpretation {getattr(colour[0].header, 'PhotometricInterpretation', '?')}",
                            fix="pass the original CT/MR series, not a rendered or colour-mapped one")
    if any("ModalityLUTSequence" in i.header for i in items):
        raise _series_error(where, "a Modality LUT is not supported", expected="RescaleSlope/RescaleIntercept",
                            found="ModalityLUTSequence", fix="export the series with linear rescaling")
    missing = []
    for inst in items:
        for keyword, count in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
            if _floats(inst.header, keyword, count) is None:
                missing.append((keyword, inst.member.label))
    if missing:
        keywords = sorted({k for k, _ in missing})
        raise _series_error(where, "images without the position tags a volume needs",
                            expected="ImagePositionPatient, ImageOrientationPatient and PixelSpacing on every image",
                            found=f"{len(missing)} missing value(s) of {', '.join(keywords)}, e.g. in {missing[0][1]}",
                            fix="re-export the series from the scanner or PACS with its geometry; ossnet never guesses "
                                "where a slice lies")
    orientations: dict[tuple[float, ...], int] = {}
    for inst in items:
        key = tuple(np.round(_floats(inst.header, "ImageOrientationPatient", 6) / _ORIENTATION_ATOL).astype(np.int64))
        orientations[key] = orientations.get(key, 0) + 1
    if len(orientations) > 1:
        found = ", ".join(f"{n} image(s) with {np.array2string(np.asarray(k) * _ORIENTATION_ATOL, precision=4)}"
                          for k, n in orientations.items())
        raise _series_error(where, "images of mixed orientation in one series",
                            expected="one ImageOrientationPatient for all images", found=found,
                            fix="pass a series of parallel slices (a localizer or multi-plane series is not a volume)")
    matrices = Counter((int(i.header.Rows), int(i.header.Columns)) for i in items)
    spacings = Counter(tuple(np.round(_floats(i.header, "PixelSpacing", 2), 5)) for i in items)
    if len(matrices) > 1 or len(spacings) > 1:
        raise _series_error(where, "images of different size or pixel spacing in one series",
                            expected="one Rows x Columns and one PixelSpacing",
                            found=f"matrices {sorted(matrices)}, pixel spacings {sorted(spacings)}",
                            fix="pass a series whose images share one grid")
    cosines = _floats(items[0].header, "ImageOrientationPatient", 6)
    row, col = cosines[:3], cosines[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise _series_error(where, "ImageOrientationPatient is not two orthogonal unit vectors",
                            expected="orthonormal row and column cosines", found=np.array2string(cosines, precision=5),
                            fix="repair the header or re-export the series")
    normal = np.cross(row, col)
    positions = np.stack([_floats(i.header, "ImagePositionPatient", 3) for i in items])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    sorted_items = [items[i] for i in order]
    positions, along = positions[order], along[order]
    # Images at the same position: several volumes in one series, or duplicates.
    groups: list[list[int]] = [[0]]
    for k in range(1, len(along)):
        if along[k] - along[groups[-1][0]] <= _SAME_POSITION_MM:
            groups[-1].append(k)
        else:
            groups.append([k])
    crowded = [g for g in groups if len(g) > 1]
    if crowded:
        sizes = {len(g) for g in groups}
        if len(sizes) == 1 and len(groups) > 1:
            cause = _multi_volume_cause([[sorted_items[k] for k in g] for g in groups])
            raise _series_error(where, f"the series holds {len(groups[0])} volumes, not one ({cause})",
                                expected="one image per slice position",
                                found=f"{len(sorted_items)} images at {len(groups)} positions, "
                                      f"{len(groups[0])} at each",
                                fix="split it into one series per volume (e.g. dcm2niix writes one NIfTI per "
                                    "echo/b-value/time point) and segment the one you need")
        g = crowded[0]
        files = ", ".join(sorted_items[k].member.label for k in g[:3])
        raise _series_error(where, "duplicate slice positions",
                            expected="one image per slice position",
                            found=f"{sum(len(g) for g in crowded)} images share {len(crowded)} position(s); e.g. "
                                  f"{len(g)} at {along[g[0]]:.3f} mm along the normal: {files}",
                            fix="remove duplicate copies of slices, or re-export the series")
    n = len(sorted_items)
    if n < 2:
        raise _series_error(where, "a single slice is not a volume", expected="a 3D series (several slices)",
                            found="1 image", fix="pass the whole series")
    span = along[-1] - along[0]
    relative = positions - positions[0]
    drift = relative - np.outer(relative @ normal, normal)
    worst = float(np.max(np.linalg.norm(drift, axis=1)))
    if worst > _TILT_TOLERANCE * span + 1e-3:
        angle = float(np.degrees(np.arctan2(np.linalg.norm(drift[-1]), span)))
        raise _series_error(where, "gantry tilt or sheared stack: the slices do not lie straight along their normal",
                            expected="slice positions along the normal of the image plane",
                            found=f"{worst:.2f} mm of in-plane drift over {span:.1f} mm (about {angle:.2f} degrees)",
                            fix="convert with dcm2niix, which resamples tilted CT onto an untilted grid, and "
                                "segment its NIfTI; ossnet does not resample DICOM silently")
    steps = np.diff(along)
    median = float(np.median(steps))
    tolerance = _SPACING_TOLERANCE * median + 1e-3
    ratios = np.rint(steps / median)
    gaps = np.flatnonzero((ratios >= 2) & (np.abs(steps - ratios * median) <= tolerance * ratios))
    if gaps.size:
        lost = int(np.sum(ratios[gaps] - 1))
        where_text = "; ".join(f"between {along[k]:.2f} and {along[k + 1]:.2f} mm (files "
                               f"{sorted_items[k].member.label}, {sorted_items[k + 1].member.label})"
                               for k in gaps[:3])
        raise _series_error(where, f"{lost} slice(s) missing", expected=f"slices every {median:.3f} mm",
                            found=f"{gaps.size} gap(s): {where_text}",
                            fix="copy the complete series (a slice file was lost in transfer)")
    step = span / (n - 1)
    residual = np.abs(along - (along[0] + step * np.arange(n)))
    if float(residual.max()) > tolerance:
        raise _series_error(where, "uneven slice spacing", expected=f"one step between all slices (within "
                            f"{tolerance:.3f} mm)", found=f"steps from {steps.min():.3f} to {steps.max():.3f} mm",
                            fix="re-export the series with even spacing, or resample it (e.g. with dcm2niix) and "
                                "segment the NIfTI")
    pixel = _floats(items[0].header, "PixelSpacing", 2)  # (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = row * pixel[1]  # X: along a row, column index increasing
    lps[:3, 1] = col * pixel[0]  # Y: down a column, row index increasing
    lps[:3, 2] = (positions[-1] - positions[0]) / (n - 1)
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return _Geometry(tuple(sorted_items), affine, (float(pixel[1]), float(pixel[0]), float(step)))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomSeriesRef:
    """The source series of a volume: what a DICOM SEG must reference.

    Attributes:
        source: the folder or zip it was read from (for messages).
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID (may be empty).
        modality: e.g. ``"MR"``.
        headers: the images' pydicom Datasets without pixel data, in array order (slice ``k`` of
            the volume is ``headers[k]``).
        shape: ``(X, Y, Z)`` = (Columns, Rows, slices).
    """

    source: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    headers: tuple[Any, ...]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class DicomVolume:
    """One DICOM series as a volume.

    Attributes:
        data: ``(X, Y, Z)`` float32 values after RescaleSlope/RescaleIntercept; ``X`` = column
            index, ``Y`` = row index, ``Z`` = slice index sorted along the normal.
        affine: ``(4, 4)`` float64 voxel ``(X, Y, Z)`` -> RAS+ mm.
        series: the source series.
    """

    data: np.ndarray
    affine: np.ndarray
    series: DicomSeriesRef


def _check_decoders(where: str, instances: Sequence[_Instance]) -> None:
    from pydicom.pixels import get_decoder

    syntaxes = {str(getattr(getattr(i.header, "file_meta", None), "TransferSyntaxUID", "") or "") for i in instances}
    for uid in sorted(s for s in syntaxes if s):
        try:
            available = get_decoder(uid).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            package = _DECODER_PACKAGES.get(uid, "python-gdcm")
            raise DependencyError(describe(where, f"no installed decoder for the transfer syntax {uid}",
                                           expected="a decoder for the series' compression",
                                           found="none installed", fix=f"pip install {package}"))


def _read_pixels(geometry: _Geometry, archive: zipfile.ZipFile | None) -> np.ndarray:
    pydicom = require_pydicom()
    first = geometry.instances[0].header
    rows, cols = int(first.Rows), int(first.Columns)
    data = np.empty((cols, rows, len(geometry.instances)), dtype=np.float32)
    with _quiet_pydicom():
        for k, inst in enumerate(geometry.instances):
            label = inst.member.label
            try:
                raw = inst.member.read(archive)
                ds = pydicom.dcmread(io.BytesIO(raw))
                if "PixelData" not in ds:
                    raise ValueError("no PixelData element (the file ends before the pixels)")
                pixels = ds.pixel_array
            except (*_READ_ERRORS, pydicom.errors.InvalidDicomError, zipfile.BadZipFile) as exc:
                raise _damaged(label, exc) from None
            if pixels.shape != (rows, cols):
                raise _damaged(label, ValueError(f"pixel array {pixels.shape}, header says {(rows, cols)}"))
            slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
            intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
            # float64 arithmetic, one rounding to float32: the same values NIfTI's scl_slope gives.
            data[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    if not np.isfinite(data).all():
        raise InputError(describe(geometry.instances[0].member.label, "image has non-finite values",
                                  expected="finite values", fix="re-export the series"))
    return data


def read_series(path: PathLike, series_uid: str | None = None) -> DicomVolume:
    """Read the one image series of a folder or zip (or the one ``series_uid`` names), checked.

    Args:
        path: a folder of DICOM files (nested folders, any names) or a ``.zip`` of them.
        series_uid: the SeriesInstanceUID to read when the input holds several image series.

    Returns:
        A :class:`DicomVolume` (``(X, Y, Z)`` float32, RAS+ affine, the source headers).

    Raises:
        InputError: no image series, several without ``series_uid``, an unknown ``series_uid``,
            or any geometry/file refusal of the module docstring.
        DependencyError: pydicom missing, or no installed decoder for the series' compression.
    """
    source = Path(path)
    with _open_input(source) as (members, archive):
        scan = _scan(members, archive)
        uid, items = _choose(source, scan, series_uid)
        where = f"{source} (series {uid})"
        geometry = _check_stack(where, items)
        _check_decoders(where, geometry.instances)
        data = _read_pixels(geometry, archive)
    first = geometry.instances[0].header
    ref = DicomSeriesRef(
        source=str(source), series_uid=uid, study_uid=str(getattr(first, "StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "") or ""),
        modality=str(getattr(first, "Modality", "") or ""),
        headers=tuple(i.header for i in geometry.instances),
        shape=(int(data.shape[0]), int(data.shape[1]), int(data.shape[2])),
    )
    return DicomVolume(data, geometry.affine, ref)
