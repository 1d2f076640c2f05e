"""The input forms ``Segmenter.segment`` and ``ossnet-segment`` accept, resolved to one shape.

A volume can arrive as

* a path to a NIfTI file (3D, or 4D with channels on the last axis);
* a list of per-channel NIfTI paths in the model's channel order (nnU-Net ``<case>_0000.nii.gz``,
  ``<case>_0001.nii.gz``, ... or any names);
* a case folder: BraTS style (one ``*_<channel>.nii[.gz]`` per model channel, e.g.
  ``*_flair``, ``*_t1``, ``*_t1ce``, ``*_t2``) or one nnU-Net group ``<case>_XXXX``;
* a nibabel image;
* ``(array, affine)``: ``array`` laid out like a NIfTI file's data, ``(X, Y, Z)`` or
  ``(X, Y, Z, C)`` channels last, ``affine`` the ``(4, 4)`` voxel-to-world matrix in mm;
* a DICOM series: a folder of DICOM files (nested, any names) or a ``.zip`` of them, or a
  :class:`DicomSource` (the folder plus the SeriesInstanceUID to read when it holds several);
  one per channel (a list in model order, or a mapping channel name -> source). Reading and
  checking is ``dicom_series``'s job (docs/design.md#dicom).

:func:`resolve_volume` turns any of them into a :class:`VolumeInput`: the ``(C, X, Y, Z)``
float32 data in stored axis order (channels first, as ``prepare_volume`` wants) plus the
reference image whose header the output copies. :func:`discover_cases` lists the cases of a
cohort folder for the CLI. Reading and checking the files is ``nifti_io``'s job; this module
only decides which files form a volume.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ossnet_deploy.dicom_series import DicomSeriesRef, is_dicom_input, list_studies, read_series
from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.geometry import affine_text
from ossnet_deploy.nifti_io import AFFINE_ATOL_MM, NIFTI_SUFFIXES, check_spatial, load_channels, read_array

__all__ = [
    "Case",
    "DicomSource",
    "ImageLike",
    "VolumeInput",
    "case_folder_files",
    "case_name",
    "dicom_cases",
    "discover_cases",
    "is_dicom_zip",
    "is_nifti_name",
    "resolve_volume",
    "shard",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DicomSource:
    """A DICOM input: a folder (nested, any names) or ``.zip``, and which series to read.

    Attributes:
        path: the folder or zip.
        series_uid: the SeriesInstanceUID to read when the input holds several image series
            (None: the input must hold exactly one).
    """

    path: PathLike
    series_uid: str | None = None


ImageLike = (PathLike | DicomSource | Sequence[PathLike | DicomSource] | Mapping[str, PathLike | DicomSource]
             | nib.Nifti1Image | tuple[np.ndarray, np.ndarray])
"""Everything :func:`resolve_volume` accepts (see the module docstring)."""

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_IN_MEMORY = "<in-memory image>"


@dataclass(frozen=True)
class VolumeInput:
    """One volume, ready for ``prepare_volume``.

    Attributes:
        data: ``(C, X, Y, Z)`` float32 raw intensities in the stored axis order (not
            reoriented), channels in model order, all finite.
        reference: the image whose grid and header the output takes (the first channel
            file, the given image, or a fresh image for ``(array, affine)``).
        source: what to name in messages (a path, or ``"<in-memory image>"``).
        dicom: for DICOM input, the first channel's source series (what a DICOM SEG
            references); None otherwise.
    """

    data: np.ndarray
    reference: nib.Nifti1Image
    source: str
    dicom: DicomSeriesRef | None = None

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` float64 voxel-to-world matrix of the stored grid (mm)."""
        return np.asarray(self.reference.affine, dtype=np.float64)


@dataclass(frozen=True)
class Case:
    """One volume of a cohort folder.

    Attributes:
        name: the case name; the output is ``<name>.nii.gz``.
        files: channel files in model order, or one 3D/4D file.
        problem: why the case cannot be processed (e.g. a missing channel file), or None; the
            CLI reports it and goes on with the other cases.
    """

    name: str
    files: tuple[Path, ...]
    problem: str | None = None


def is_nifti_name(path: PathLike) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive), hidden files excluded."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(NIFTI_SUFFIXES)


def _stem(path: PathLike) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_name(path: PathLike, channels: Sequence[str] = ()) -> str:
    """The case name of an input file or folder.

    ``BraTS20_001_flair.nii.gz`` -> ``BraTS20_001`` (a model channel suffix is dropped),
    ``case_0000.nii.gz`` -> ``case`` (nnU-Net channel index dropped), ``sub-01.nii`` -> ``sub-01``,
    a folder -> its name.
    """
    p = Path(path)
    if p.is_dir():
        return p.name
    stem = _stem(p)
    match = _NNUNET_CHANNEL.match(stem)
    if match:
        return match.group("case")
    for channel in channels:
        if stem.lower().endswith("_" + channel.lower()) and len(stem) > len(channel) + 1:
            return stem[: -len(channel) - 1]
    return stem


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_name(p))


def case_folder_files(
    folder: PathLike, channels: Sequence[str], *, nnunet: bool = True
) -> tuple[Path, ...] | None:
    """The channel files of a case folder in model order, or None if ``folder`` is not one.

    A case folder holds, for every model channel, exactly one ``*_<channel>.nii[.gz]`` (BraTS:
    ``*_flair``, ``*_t1``, ``*_t1ce``, ``*_t2``; matching is case-insensitive and exact, so
    ``_t1`` does not match ``_t1ce``), or (with ``nnunet``) exactly one nnU-Net group
    ``<case>_0000`` .. ``<case>_{C-1:04d}`` and nothing else. The CLI passes ``nnunet=False``:
    there a folder of ``<case>_XXXX`` files is a folder of cases, as in nnU-Net.
    """
    files = _nifti_files(Path(folder))
    by_suffix = []
    for channel in channels:
        hits = [f for f in files if _stem(f).lower().endswith("_" + channel.lower())]
        if len(hits) != 1:
            break
        by_suffix.append(hits[0])
    else:
        if channels:
            return tuple(by_suffix)
    groups = _nnunet_groups(files) if nnunet else {}
    if len(groups) == 1 and len(files) == len(channels):
        (_, members), = groups.items()
        indices = sorted(members)
        if indices == list(range(len(channels))):
            return tuple(members[i] for i in indices)
    return None


def _nnunet_groups(files: Sequence[Path]) -> dict[str, dict[int, Path]]:
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        match = _NNUNET_CHANNEL.match(_stem(f))
        if match:
            groups.setdefault(match.group("case"), {})[int(match.group("channel"))] = f
    return groups


def discover_cases(folder: PathLike, channels: Sequence[str]) -> list[Case]:
    """The cases of a cohort folder, sorted by name.

    * Subfolders that are case folders (:func:`case_folder_files`) are cases named after the
      subfolder (BraTS cohorts).
    * NIfTI files named ``<case>_XXXX`` form nnU-Net groups; a group must hold channels
      ``0000`` .. ``C-1`` (otherwise the case carries a ``problem``).
    * Any other NIfTI file is a case of its own (3D for single-channel models, or a 4D file
      with channels last); a model channel suffix (``_t1``) is dropped from its name.

    Hidden files (``.name``, e.g. unfinished temporary outputs) and files that are not named
    ``.nii``/``.nii.gz`` are ignored. Two sources with the same case name are both reported.

    Raises:
        InputError: ``folder`` is missing or not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(describe(root, "input folder not found" if not root.exists() else "is not a folder",
                                  expected="a folder of cases", fix="check the path"))
    n_channels = len(channels)
    cases: list[Case] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = case_folder_files(sub, channels)
        if files is not None:
            cases.append(Case(sub.name, files))
        elif _nifti_files(sub):
            cases.append(Case(sub.name, (), _case_folder_problem(sub, channels)))
    files = _nifti_files(root)
    groups = _nnunet_groups(files)
    grouped = {f for members in groups.values() for f in members.values()}
    for name, members in groups.items():
        indices = sorted(members)
        if n_channels > 1 or indices != [0]:
            if indices != list(range(n_channels)):
                found = ", ".join(f"{i:04d}" for i in indices)
                problem = describe(root / f"{name}_XXXX", "incomplete nnU-Net channel group",
                                   expected=f"channels {', '.join(f'{i:04d}' for i in range(n_channels))} "
                                   f"({', '.join(channels)})", found=found,
                                   fix="add the missing channel files or remove the extra ones")
                cases.append(Case(name, tuple(members[i] for i in indices), problem))
                continue
        cases.append(Case(name, tuple(members[i] for i in indices)))
    for f in files:
        if f not in grouped:
            cases.append(Case(case_name(f, channels), (f,)))
    cases.sort(key=lambda c: c.name)
    seen: dict[str, Case] = {}
    result: list[Case] = []
    for case in cases:
        if case.name in seen:
            other = seen[case.name]
            clash = describe(root / case.name, "two inputs give the same case name",
                             found=f"{_files_text(other)} and {_files_text(case)}",
                             fix="rename one of them; outputs are named <case>.nii.gz")
            result = [Case(c.name, c.files, clash) if c.name == case.name else c for c in result]
            result.append(Case(case.name, case.files, clash))
            continue
        seen[case.name] = case
        result.append(case)
    return result


def _files_text(case: Case) -> str:
    return ", ".join(f.name for f in case.files) or "(folder)"


def _case_folder_problem(folder: Path, channels: Sequence[str]) -> str:
    files = [f.name for f in _nifti_files(folder)]
    return describe(folder, "not a case folder of this model",
                    expected=f"one file per channel: {', '.join(f'*_{c}.nii.gz' for c in channels)}, or "
                    f"<case>_0000 .. <case>_{len(channels) - 1:04d}",
                    found=", ".join(files[:8]) + (" ..." if len(files) > 8 else ""),
                    fix="rename the files to the model's channel names")


def shard(cases: Sequence[Case], num_parts: int, part_id: int) -> list[Case]:
    """The cases of part ``part_id`` of ``num_parts``: case ``i`` of the name-sorted list goes to
    part ``i % num_parts`` (nnU-Net's ``-num_parts`` / ``-part_id`` convention).

    Raises:
        InputError: ``num_parts < 1`` or ``part_id`` outside ``0 .. num_parts - 1``.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(describe(None, "invalid shard", expected="num_parts >= 1 and 0 <= part_id < num_parts",
                                  found=f"num_parts={num_parts}, part_id={part_id}",
                                  fix="e.g. --num-parts 4 --part-id 0 .. 3"))
    ordered = sorted(cases, key=lambda c: c.name)
    return [c for i, c in enumerate(ordered) if i % num_parts == part_id]


def _channel_error(source: str, found: int, channels: Sequence[str], what: str) -> InputError:
    return InputError(
        describe(source, "wrong number of channels", expected=f"{len(channels)} channel(s) {list(channels)}",
                 found=f"{found} ({what})",
                 fix=f"pass {len(channels)} file(s) in the order {', '.join(channels)}, a case folder, or a 4D "
                     "image with the channels on the last axis")
    )


def _check_volume(data: np.ndarray, source: str, channels: Sequence[str], min_side: int, what: str) -> None:
    if data.shape[0] != len(channels):
        raise _channel_error(source, data.shape[0], channels, what)
    spatial = tuple(int(s) for s in data.shape[1:])
    if min(spatial) < min_side:
        raise InputError(
            describe(source, "volume is smaller than one patch",
                     expected=f"at least {min_side} voxels on every axis", found=f"spatial shape {spatial}",
                     fix="segment 3D volumes, not single slices or thin slabs")
        )


def _from_image(image: nib.Nifti1Image, source: str) -> np.ndarray:
    spatial, n_channels = check_spatial(image, source, allow_4d=True)
    raw = read_array(image, source)
    if n_channels == 1:
        # A view, not a copy: one float32 copy of the input is all the runtime holds.
        return raw.reshape(1, *spatial)
    data = np.empty((n_channels, *spatial), dtype=np.float32)
    for c in range(n_channels):
        data[c] = raw[..., c]
    return data


def _is_array_pair(image: object) -> bool:
    return isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], np.ndarray)


def resolve_volume(image: ImageLike, channels: Sequence[str], *, min_side: int = 7) -> VolumeInput:
    """Read any accepted input form (module docstring) into a :class:`VolumeInput`.

    Args:
        image: a path, a list of channel paths, a case folder, a nibabel image or
            ``(array, affine)``.
        channels: the model's channel names, in order.
        min_side: smallest spatial side accepted (the patch size, 7).

    Raises:
        InputError: a missing, unreadable or non-NIfTI file; 2D or 5D data; NaN/inf voxels; a
            singular or non-finite affine; a channel count other than the model's; a side
            smaller than ``min_side``; channel files on different grids; an unknown type.
    """
    if _is_array_pair(image):
        array, affine = image  # type: ignore[misc]
        return _resolve_array(array, affine, channels, min_side)
    if isinstance(image, DicomSource):
        return _from_dicom((image,), channels, min_side)
    if isinstance(image, Mapping):
        return _from_mapping(image, channels, min_side)
    if isinstance(image, nib.Nifti1Image):
        source = image.get_filename() or _IN_MEMORY
        data = _from_image(image, source)
        _check_volume(data, source, channels, min_side, "channels of the image")
        return VolumeInput(data, image, source)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if path.is_dir():
            files = case_folder_files(path, channels)
            if files is None:
                if is_dicom_input(path):
                    return _from_dicom((DicomSource(path),), channels, min_side)
                raise InputError(_case_folder_problem(path, channels))
            return _from_files(files, channels, min_side)
        if is_dicom_zip(path):
            return _from_dicom((DicomSource(path),), channels, min_side)
        if is_dicom_input(path):
            raise InputError(describe(path, "one DICOM file is one slice, not a volume",
                                      expected="the folder (or a zip) of the whole series", found="a DICOM file",
                                      fix=f"pass {path.parent} instead"))
        return _from_files((path,), channels, min_side)
    if isinstance(image, Sequence) and image and all(isinstance(p, str | os.PathLike | DicomSource) for p in image):
        if any(_is_dicom_item(p) for p in image):
            return _from_dicom(tuple(p if isinstance(p, DicomSource) else DicomSource(p) for p in image),
                               channels, min_side)
        return _from_files(tuple(Path(p) for p in image), channels, min_side)  # type: ignore[arg-type]
    raise InputError(
        describe(None, "unsupported input", expected="a NIfTI path, a list of channel paths, a case folder, "
                 "a DICOM folder or zip, a channel -> path mapping, a nibabel Nifti1Image or (array, affine)",
                 found=type(image).__name__, fix="pass one of the accepted forms")
    )


def is_dicom_zip(path: PathLike) -> bool:
    """True for an existing file named ``.zip`` (a DICOM input; NIfTI is never zipped)."""
    p = Path(path)
    return p.is_file() and p.name.lower().endswith(".zip")


def _is_dicom_item(item: Any) -> bool:
    if isinstance(item, DicomSource):
        return True
    p = Path(item)
    return is_dicom_zip(p) or (p.is_dir() and is_dicom_input(p))


def _from_mapping(image: Mapping[str, Any], channels: Sequence[str], min_side: int) -> VolumeInput:
    """A channel name -> input mapping, put in model order."""
    names = [str(k) for k in image]
    if sorted(names) != sorted(channels):
        raise InputError(describe(None, "the channel mapping does not name the model's channels",
                                  expected=f"exactly the keys {list(channels)}", found=f"keys {names}",
                                  fix="give one input per model channel, keyed by the channel name"))
    ordered = [image[c] for c in channels]
    return resolve_volume(ordered if len(ordered) > 1 else ordered[0], channels, min_side=min_side)


def _from_dicom(sources: tuple[DicomSource, ...], channels: Sequence[str], min_side: int) -> VolumeInput:
    """One DICOM series per channel, all on one grid (docs/design.md#dicom)."""
    if len(sources) != len(channels):
        raise _channel_error(os.fspath(sources[0].path), len(sources), channels, "DICOM series given")
    volumes = [read_series(s.path, s.series_uid) for s in sources]
    first = volumes[0]
    for source, other in zip(sources[1:], volumes[1:], strict=True):
        if other.data.shape != first.data.shape or not np.allclose(other.affine, first.affine, rtol=0.0,
                                                                   atol=AFFINE_ATOL_MM):
            raise InputError(describe(
                f"{os.fspath(source.path)} (series {other.series.series_uid})",
                f"channel series is not on the grid of {os.fspath(sources[0].path)} (series "
                f"{first.series.series_uid})",
                expected=f"shape {first.data.shape}, {affine_text(first.affine)}",
                found=f"shape {other.data.shape}, {affine_text(other.affine)}",
                fix="all channels of a case must be co-registered series on one grid (resample them first)"))
    if len(volumes) == 1:
        data = first.data[None]
    else:
        data = np.empty((len(volumes), *first.data.shape), dtype=np.float32)
        for c, volume in enumerate(volumes):
            data[c] = volume.data
    source = os.fspath(sources[0].path)
    _check_volume(data, source, channels, min_side, "DICOM series given")
    # A reference header with the series' world geometry (scanner coordinates, codes 1), so the
    # NIfTI output lies where the series lies (docs/design.md#dicom).
    reference = nib.Nifti1Image(np.broadcast_to(np.float32(0), first.data.shape), first.affine)
    reference.header.set_qform(first.affine, code=1)
    reference.header.set_sform(first.affine, code=1)
    reference.header.set_xyzt_units("mm")
    return VolumeInput(data, reference, source, dicom=first.series)


def dicom_cases(folder: PathLike) -> list[Case]:
    """The cases of a DICOM folder (docs/design.md#dicom, "Folder runs").

    One study (one StudyInstanceUID among all DICOM files below ``folder``) and no zip in it:
    ``folder`` is one case, named after it. Otherwise every sub-folder holding DICOM files and
    every ``.zip`` directly in ``folder`` is a case (one study each), named after the sub-folder
    or zip; DICOM files lying directly in such a folder are reported as a problem case.

    Raises:
        InputError: a damaged DICOM header (the scan reads one tag of every file).
    """
    root = Path(folder)
    zips = sorted(p for p in root.iterdir() if is_dicom_zip(p) and not p.name.startswith("."))
    studies = list_studies(root)
    if not zips and len(studies) <= 1:
        return [Case(root.resolve().name or "dicom", (root,))]
    cases = [Case(p.name[: -len(".zip")], (p,)) for p in zips]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_dicom_input(sub):
            cases.append(Case(sub.name, (sub,)))
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_input(p)
             and not is_dicom_zip(p)]
    if loose:
        cases.append(Case(root.name, (), describe(root, "DICOM files lie directly in a folder of several studies",
                                                 expected="one sub-folder or zip per study",
                                                 found=f"{len(loose)} DICOM file(s) beside {len(cases)} case(s)",
                                                 fix="move each study into its own sub-folder")))
    cases.sort(key=lambda c: c.name)
    return cases


def _from_files(files: tuple[Path, ...], channels: Sequence[str], min_side: int) -> VolumeInput:
    if len(files) > 1 and len(files) != len(channels):
        raise _channel_error(os.fspath(files[0]), len(files), channels, "channel files given")
    data, reference = load_channels(files)
    what = "channel files given" if len(files) > 1 else "channels in the file"
    _check_volume(data, os.fspath(files[0]), channels, min_side, what)
    return VolumeInput(data, reference, os.fspath(files[0]))


def _resolve_array(array: np.ndarray, affine: object, channels: Sequence[str], min_side: int) -> VolumeInput:
    aff = np.asarray(affine, dtype=np.float64) if isinstance(affine, np.ndarray | list | tuple) else None
    if aff is None or aff.shape != (4, 4):
        raise InputError(
            describe(_IN_MEMORY, "affine has the wrong shape", expected="a (4, 4) voxel-to-world matrix",
                     found=f"{type(affine).__name__} {getattr(aff, 'shape', '')}", fix="pass (array, img.affine)")
        )
    if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
        raise InputError(describe(_IN_MEMORY, "image is not real-valued", expected="integer or float voxels",
                                  found=f"dtype {array.dtype}", fix="convert it to float32"))
    if array.ndim not in (3, 4):
        raise InputError(
            describe(_IN_MEMORY, "wrong number of dimensions", expected="3D (X, Y, Z) or 4D (X, Y, Z, C) channels "
                     "last", found=f"shape {array.shape}", fix="pass one 3D volume, or stack channels on the last axis")
        )
    # The header is built from the affine (sform and qform), exactly what saving and reloading
    # the pair would give; the image then takes the same path as a file.
    image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), aff)
    data = _from_image(image, _IN_MEMORY)
    _check_volume(data, _IN_MEMORY, channels, min_side, "channels of the array")
    # Only the header of the reference is used later: keep it, not a second copy of the voxels.
    placeholder = np.broadcast_to(np.float32(0), image.shape)
    reference = nib.Nifti1Image(placeholder, image.affine, header=image.header)
    return VolumeInput(data, reference, _IN_MEMORY)
