"""NIfTI training datasets: BraTS 2020, LiTS, the generic nnU-Net layout and the demo cohort.

Every dataset is a :class:`NiftiDataset`: a list of :class:`CaseFiles` (case id, one image
file per channel in model order, one label file) found on disk, checked up front from the
NIfTI headers only, and loaded lazily one case at a time as a :class:`Case`.

Layouts (docs/data.md has the full description):

* ``brats``: ``<root>/BraTS20_Training_XXX/BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii[.gz]``.
  A case whose canonical label name is missing may hold exactly one other ``*seg*`` /
  ``*Segm*`` NIfTI file (BraTS 2020 case 355 ships ``W39_1998.09.19_Segm.nii``).
* ``lits``: ``volume-N.nii[.gz]`` and ``segmentation-N.nii[.gz]`` anywhere under ``<root>``
  (one folder or separate subfolders), paired by N.
* ``generic`` (nnU-Net v2): ``<root>/imagesTr/<case>_0000.nii.gz`` (one file per channel,
  ``_0000``, ``_0001``, ...) and ``<root>/labelsTr/<case>.nii.gz``; ``.nii`` is accepted too.
* ``demo``: the generic layout as written by :func:`ossnet_train.demo_cohort.make_demo_cohort`.

Checks, all raising :class:`~ossnet_deploy.errors.InputError` that names the case and the file:
up front (headers only, fast): every file present and readable, 3D, equal shapes, equal affines
(``atol`` 1e-3), uncompressed files not truncated; at load: non-finite voxels, unreadable or
truncated compressed data, label values outside the dataset's allowed set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.nifti_io import AFFINE_ATOL_MM, check_spatial, load_channels, load_label, load_nifti

__all__ = [
    "AFFINE_ATOL",
    "BRATS_CHANNELS",
    "BRATS_LABEL_VALUES",
    "BRATS_TARGETS",
    "LITS_LABEL_VALUES",
    "LITS_TARGETS",
    "Case",
    "CaseFiles",
    "LabelSpec",
    "NiftiDataset",
    "brats_dataset",
    "brats_split",
    "demo_dataset",
    "generic_dataset",
    "lits_dataset",
    "make_dataset",
]

PathLike = str | os.PathLike[str]
DatasetKind = Literal["brats", "lits", "generic", "demo"]
BratsSplit = Literal["train", "val", "all"]

#: Tolerance (mm) for "the same affine" across the files of one case (the runtime's).
AFFINE_ATOL = AFFINE_ATOL_MM

BRATS_CHANNELS: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
BRATS_LABEL_VALUES: tuple[int, ...] = (0, 1, 2, 4)
#: Target name -> label values counted as foreground (1 necrotic core, 2 oedema, 4 enhancing).
BRATS_TARGETS: Mapping[str, tuple[int, ...]] = {
    "whole_tumour": (1, 2, 4),
    "tumour_core": (1, 4),
    "enhancing": (4,),
}
LITS_LABEL_VALUES: tuple[int, ...] = (0, 1, 2)
#: Target name -> label values counted as foreground (1 liver, 2 tumour).
LITS_TARGETS: Mapping[str, tuple[int, ...]] = {
    "liver_and_tumour": (1, 2),
    "tumour": (2,),
}

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$")
_BRATS_CASE_RE = re.compile(r"^BraTS\d*_[A-Za-z]+_\d+$")
_LITS_FILE_RE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")
_GENERIC_IMAGE_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")
_SPLIT_KEYS: Mapping[str, str] = {"train": "training", "val": "validation"}

_BRATS_LAYOUT = (
    "BraTS 2020: <root>/BraTS20_Training_XXX/BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii[.gz]"
)
_LITS_LAYOUT = "LiTS: volume-N.nii[.gz] and segmentation-N.nii[.gz] under <root> (one folder or subfolders)"
_GENERIC_LAYOUT = (
    "nnU-Net: <root>/imagesTr/<case>_0000.nii.gz (one file per channel: _0000, _0001, ...) "
    "and <root>/labelsTr/<case>.nii.gz"
)


@dataclass(frozen=True)
class LabelSpec:
    """Which label values a dataset may contain and which of them form the binary target.

    Attributes:
        name: the target's name (e.g. ``"whole_tumour"``).
        allowed: every label value the files may hold; anything else is an ``InputError``.
        foreground: the values mapped to target 1 (the rest to 0).
    """

    name: str
    allowed: tuple[int, ...]
    foreground: tuple[int, ...]


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: e.g. ``"BraTS20_Training_001"``, ``"lits-12"``, ``"demo_0003"``.
        channels: one image file per channel, in model order.
        label: the label file.
    """

    case_id: str
    channels: tuple[Path, ...]
    label: Path


@dataclass(frozen=True, eq=False)
class Case:
    """One loaded case, on the stored voxel grid (not reoriented; ``prepare_volume`` does that).

    Attributes:
        case_id: the case's id.
        data: ``(C, X, Y, Z)`` float32, channels in model order, axes of the stored array,
            raw intensities (scaling from the header applied).
        affine: ``(4, 4)`` float64 voxel-to-world (mm) affine of the first channel.
        label: ``(X, Y, Z)`` uint8 binary target (1 = the label values of ``LabelSpec.foreground``).
    """

    case_id: str
    data: np.ndarray
    affine: np.ndarray
    label: np.ndarray


class NiftiDataset(Sequence[Case]):
    """A sequence of cases that loads each one on access.

    Args:
        cases: the cases' files, in dataset order.
        channel_names: channel names in model order (length C).
        labels: allowed label values and the target.
        kind: layout name, for messages (``"brats"``, ``"lits"``, ``"generic"``, ``"demo"``).
        root: the dataset folder, for messages.
        validate: check every case's headers now (see :meth:`validate`).
    """

    def __init__(
        self,
        cases: Sequence[CaseFiles],
        *,
        channel_names: Sequence[str],
        labels: LabelSpec,
        kind: str,
        root: PathLike,
        validate: bool = True,
    ) -> None:
        self.cases: tuple[CaseFiles, ...] = tuple(cases)
        self.channel_names: tuple[str, ...] = tuple(channel_names)
        self.labels = labels
        self.kind = kind
        self.root = Path(root)
        self._index = {case.case_id: i for i, case in enumerate(self.cases)}
        if validate:
            self.validate()

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Case:  # type: ignore[override]
        return load_case(self.cases[index], self.labels)

    def __iter__(self) -> Iterator[Case]:
        for case in self.cases:
            yield load_case(case, self.labels)

    def __repr__(self) -> str:
        return (
            f"NiftiDataset(kind={self.kind!r}, root={os.fspath(self.root)!r}, cases={len(self)}, "
            f"channels={self.channel_names}, target={self.labels.name!r})"
        )

    @property
    def case_ids(self) -> tuple[str, ...]:
        """The case ids in dataset order."""
        return tuple(case.case_id for case in self.cases)

    def load(self, case_id: str) -> Case:
        """Load one case by id."""
        if case_id not in self._index:
            raise InputError(
                describe(self.root, f"no case {case_id!r} in this {self.kind} dataset",
                         expected=f"one of {len(self)} case ids", found=_preview(self.case_ids))
            )
        return self[self._index[case_id]]

    def validate(self) -> None:
        """Check every case from the headers only (no voxel data is read).

        Raises:
            InputError: naming the case and the file: a file that is not a readable NIfTI,
                not 3D, truncated (uncompressed files), or whose shape or affine differs from
                the case's first channel.
        """
        for case in self.cases:
            check_case_headers(case, self.channel_names)


def check_case_headers(case: CaseFiles, channel_names: Sequence[str] | None = None) -> None:
    """Check one case's files from their headers (fast: no voxel data is read).

    Args:
        case: the files.
        channel_names: names for messages (defaults to the channel index).

    Raises:
        InputError: naming the case and the file: missing or unreadable, not 3D, truncated
            (uncompressed files), or a shape or affine that differs from the first channel's.
    """
    names = tuple(channel_names) if channel_names is not None else tuple(str(i) for i in range(len(case.channels)))
    first = case.channels[0]
    reference: nib.Nifti1Image | None = None
    for name, path in (*zip(names, case.channels, strict=True), ("label", case.label)):
        what = f"channel {name}" if name != "label" else "label"
        with _naming_case(case.case_id):
            img = load_nifti(path)
            shape, _ = check_spatial(img, path, allow_4d=False)
        _check_size(case.case_id, path, img)
        if reference is None:
            reference = img
            continue
        ref_shape = tuple(int(s) for s in reference.shape[:3])
        if shape != ref_shape:
            raise _case_error(
                case.case_id, path, f"{what} has a different shape from {first.name}",
                expected=f"shape {ref_shape}", found=f"shape {shape}",
                fix="resample every file of the case onto one grid",
            )
        if not np.allclose(img.affine, reference.affine, rtol=0.0, atol=AFFINE_ATOL):
            diff = float(np.max(np.abs(img.affine - reference.affine)))
            raise _case_error(
                case.case_id, path, f"{what} has a different affine from {first.name}",
                expected=f"the same voxel-to-world affine within {AFFINE_ATOL} mm",
                found=f"largest difference {diff:.4g} mm",
                fix="resample every file of the case onto one grid (or fix the header)",
            )


def load_case(case: CaseFiles, labels: LabelSpec) -> Case:
    """Read a case's voxels and build its binary target.

    Args:
        case: the files (their headers are normally checked first, see :func:`check_case_headers`).
        labels: allowed label values and the target's foreground values.

    Returns:
        The :class:`Case`: data ``(C, X, Y, Z)`` float32, affine ``(4, 4)`` float64,
        label ``(X, Y, Z)`` uint8 in {0, 1}.

    Raises:
        InputError: naming the case and the file: unreadable or truncated data, NaN/inf
            voxels, a grid differing between files, label values outside ``labels.allowed``.
    """
    with _naming_case(case.case_id):
        data, reference = load_channels(case.channels)
        if data.shape[0] != len(case.channels):
            raise InputError(
                describe(case.channels[0], "4D image where one channel was expected",
                         expected=f"{len(case.channels)} channel(s)", found=f"{data.shape[0]} on the last axis",
                         fix="store one 3D file per channel")
            )
        raw = load_label(case.label, reference, allowed_values=frozenset(labels.allowed),
                         reference_path=case.channels[0])
    target = np.isin(raw, labels.foreground).astype(np.uint8)
    return Case(case.case_id, data, np.asarray(reference.affine, dtype=np.float64), target)


@contextlib.contextmanager
def _naming_case(case_id: str) -> Iterator[None]:
    """Prefix the case id to the file-level errors of ``ossnet_deploy.nifti_io``."""
    try:
        yield
    except InputError as exc:
        raise InputError(f"case {case_id}: {exc}") from exc


def _case_error(case_id: str, path: Path, problem: str, **details: str) -> InputError:
    return InputError(f"case {case_id}: " + describe(path, problem, **details))


def _check_size(case_id: str, path: Path, img: nib.Nifti1Image) -> None:
    """An uncompressed file must hold all its voxels; checkable without reading them."""
    if path.name.endswith(".gz"):
        return
    expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    found = path.stat().st_size
    if found < expected:
        raise _case_error(case_id, path, "file is truncated", expected=f"at least {expected} bytes",
                          found=f"{found} bytes", fix="re-copy or re-download the file")


def _preview(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _NIFTI_RE.search(p.name))


def _require_folder(root: PathLike, layout: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise InputError(
            describe(path, "dataset folder not found", expected=f"a folder in the layout {layout}",
                     found="nothing" if not path.exists() else "a file", fix="pass the dataset's root folder")
        )
    return path


def _no_cases(root: Path, layout: str) -> InputError:
    return InputError(
        describe(root, "no cases found", expected=f"the layout {layout}", found="no matching files",
                 fix="pass the dataset's root folder (or the right dataset kind)")
    )


# --------------------------------------------------------------------------- BraTS 2020


def brats_split(name: Literal["train", "val"]) -> tuple[str, ...]:
    """Case ids of the OSS-Net reference split of BraTS 2020 (324 train / 45 val).

    Read from the packaged ``ossnet_train/data/brats2020_split.json``.
    """
    if name not in _SPLIT_KEYS:
        raise InputError(describe(None, "unknown BraTS split", expected="'train', 'val' or 'all'", found=repr(name)))
    return tuple(json.loads(_packaged_text("brats2020_split.json"))[_SPLIT_KEYS[name]])


def _packaged_text(name: str) -> str:
    """A file of ``ossnet_train/data`` (package data, so it ships in the wheel)."""
    try:
        return (resources.files("ossnet_train") / "data" / name).read_text(encoding="utf-8")
    except (NotADirectoryError, TypeError):
        # importlib.resources cannot read a namespace package under an editable install's path
        # hook (ossnet_train without __init__.py); the file sits beside this module either way.
        return (Path(__file__).parent / "data" / name).read_text(encoding="utf-8")


def _brats_file(folder: Path, case_id: str, suffix: str) -> Path | None:
    found = [p for p in (folder / f"{case_id}_{suffix}.nii.gz", folder / f"{case_id}_{suffix}.nii") if p.is_file()]
    if len(found) > 1:
        raise _case_error(case_id, folder, f"both .nii and .nii.gz exist for {suffix}",
                          expected="one file", found=", ".join(p.name for p in found), fix="delete one of them")
    return found[0] if found else None


def _brats_label(folder: Path, case_id: str, channels: Sequence[Path]) -> Path:
    canonical = _brats_file(folder, case_id, "seg")
    if canonical is not None:
        return canonical
    # BraTS 2020 case 355 ships its label as W39_1998.09.19_Segm.nii: accept any single other
    # segmentation-looking NIfTI in the folder rather than hard-coding that one name.
    taken = set(channels)
    candidates = [p for p in _nifti_files(folder) if p not in taken and "seg" in p.name.lower()]
    if len(candidates) == 1:
        return candidates[0]
    expected = folder / f"{case_id}_seg.nii.gz"
    if not candidates:
        raise _case_error(case_id, expected, "label file is missing",
                          expected=f"{case_id}_seg.nii[.gz] or one other *seg* / *Segm* NIfTI in {folder}",
                          found="none", fix="restore the label or exclude the case")
    raise _case_error(case_id, folder, "cannot tell which file is the label",
                      expected=f"{case_id}_seg.nii[.gz] or exactly one *seg* / *Segm* NIfTI",
                      found=", ".join(p.name for p in candidates),
                      fix=f"rename the right one to {case_id}_seg.nii.gz or remove the others")


def _brats_case(folder: Path) -> CaseFiles:
    case_id = folder.name
    channels: list[Path] = []
    for modality in BRATS_CHANNELS:
        path = _brats_file(folder, case_id, modality)
        if path is None:
            raise _case_error(case_id, folder / f"{case_id}_{modality}.nii.gz", f"{modality} image is missing",
                              expected=f"{case_id}_{modality}.nii or .nii.gz", found="no such file",
                              fix="restore the file or exclude the case")
        channels.append(path)
    return CaseFiles(case_id, tuple(channels), _brats_label(folder, case_id, channels))


def brats_dataset(
    root: PathLike,
    *,
    split: BratsSplit = "all",
    target: str = "whole_tumour",
    case_ids: Sequence[str] | None = None,
    validate: bool = True,
) -> NiftiDataset:
    """BraTS 2020 training data (4 channels: flair, t1, t1ce, t2).

    Args:
        root: the folder holding ``BraTS20_Training_XXX/`` case folders
            (``MICCAI_BraTS2020_TrainingData``).
        split: ``"train"`` / ``"val"`` (the reference split, 324 / 45 cases, packaged) or
            ``"all"`` (every case folder under ``root``).
        target: ``"whole_tumour"`` (label > 0), ``"tumour_core"`` (1 and 4) or ``"enhancing"`` (4).
        case_ids: an explicit list of cases instead of ``split``.
        validate: check all headers now.

    Raises:
        InputError: no case folders, cases of the split missing (a few are listed), or any
            file problem (naming the case and file).
    """
    folder = _require_folder(root, _BRATS_LAYOUT)
    if target not in BRATS_TARGETS:
        raise InputError(
            describe(None, "unknown BraTS target", expected=" | ".join(BRATS_TARGETS), found=repr(target))
        )
    present = {p.name: p for p in folder.iterdir() if p.is_dir() and _BRATS_CASE_RE.match(p.name)}
    if not present:
        raise _no_cases(folder, _BRATS_LAYOUT)
    if case_ids is not None:
        wanted: tuple[str, ...] = tuple(case_ids)
        source = "the given case list"
    elif split == "all":
        wanted = tuple(sorted(present))
        source = "all"
    else:
        wanted = brats_split(split)
        source = f"the reference '{split}' split"
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputError(
            describe(folder, f"{len(missing)} of the {len(wanted)} cases of {source} are missing",
                     expected="a case folder for each", found=f"missing {_preview(missing)}",
                     fix="point root at the complete MICCAI_BraTS2020_TrainingData folder, or use split='all'")
        )
    cases = [_brats_case(present[c]) for c in wanted]
    labels = LabelSpec(target, BRATS_LABEL_VALUES, BRATS_TARGETS[target])
    return NiftiDataset(cases, channel_names=BRATS_CHANNELS, labels=labels, kind="brats", root=folder,
                        validate=validate)


# --------------------------------------------------------------------------- LiTS


def lits_dataset(root: PathLike, *, target: str = "liver_and_tumour", validate: bool = True) -> NiftiDataset:
    """LiTS CT data (1 channel): ``volume-N`` / ``segmentation-N`` pairs anywhere under ``root``.

    Args:
        root: the LiTS folder (files in one folder, or volumes and segmentations in subfolders).
        target: ``"liver_and_tumour"`` (label > 0, the paper's) or ``"tumour"`` (label 2).
        validate: check all headers now.

    Raises:
        InputError: no pairs, a volume without segmentation (or the reverse), a number present
            twice, or any file problem (naming the case and file).
    """
    folder = _require_folder(root, _LITS_LAYOUT)
    if target not in LITS_TARGETS:
        raise InputError(describe(None, "unknown LiTS target", expected=" | ".join(LITS_TARGETS), found=repr(target)))
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}}
    for path in sorted(folder.rglob("*.nii*")):
        match = _LITS_FILE_RE.match(path.name)
        if match is None or not path.is_file():
            continue
        role, number = match.group(1), int(match.group(2))
        if number in found[role]:
            raise _case_error(f"lits-{number}", path, f"two {role} files for one case",
                              expected="one", found=f"{found[role][number]} and {path}", fix="delete one of them")
        found[role][number] = path
    if not found["volume"] and not found["segmentation"]:
        raise _no_cases(folder, _LITS_LAYOUT)
    for role, other in (("volume", "segmentation"), ("segmentation", "volume")):
        for number, path in sorted(found[role].items()):
            if number not in found[other]:
                raise _case_error(f"lits-{number}", path, f"{role} without a {other}",
                                  expected=f"{other}-{number}.nii[.gz] under {folder}", found="none",
                                  fix=f"restore {other}-{number} or remove this file")
    cases = [
        CaseFiles(f"lits-{n}", (found["volume"][n],), found["segmentation"][n]) for n in sorted(found["volume"])
    ]
    labels = LabelSpec(target, LITS_LABEL_VALUES, LITS_TARGETS[target])
    return NiftiDataset(cases, channel_names=("ct",), labels=labels, kind="lits", root=folder, validate=validate)


# --------------------------------------------------------------------------- generic (nnU-Net)


def generic_dataset(
    root: PathLike,
    *,
    n_channels: int | None = None,
    label_values: Sequence[int] | None = None,
    foreground: Sequence[int] | None = None,
    validate: bool = True,
    kind: str = "generic",
) -> NiftiDataset:
    """An nnU-Net v2 style dataset: ``imagesTr/<case>_XXXX.nii.gz`` + ``labelsTr/<case>.nii.gz``.

    Args:
        root: the dataset folder holding ``imagesTr/`` and ``labelsTr/``.
        n_channels: the model's channel count; the files' count must equal it when given
            (and must be the same for every case in any case).
        label_values: the allowed label values (default ``(0, 1)``).
        foreground: the values forming the target (default: every nonzero allowed value).
        validate: check all headers now.
        kind: the name used in messages (``"demo"`` for the demo cohort).

    Channel names come from ``<root>/dataset.json`` (``channel_names``) when present,
    otherwise ``"0000"``, ``"0001"``, ...

    Raises:
        InputError: missing folders or no cases, gaps in a case's channel numbers, a channel
            count differing between cases or from ``n_channels``, images without a label (or
            the reverse), or any file problem (naming the case and file).
    """
    folder = _require_folder(root, _GENERIC_LAYOUT)
    allowed = tuple(sorted({int(v) for v in (label_values if label_values is not None else (0, 1))}))
    fg = tuple(sorted({int(v) for v in foreground})) if foreground is not None else tuple(v for v in allowed if v)
    if not set(fg) <= set(allowed) or not fg:
        raise InputError(
            describe(None, "invalid foreground label values", expected=f"a non-empty subset of {list(allowed)}",
                     found=str(list(fg)))
        )
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise _no_cases(folder, _GENERIC_LAYOUT)
    images: dict[str, dict[int, Path]] = {}
    for path in _nifti_files(images_dir):
        match = _GENERIC_IMAGE_RE.match(path.name)
        if match is None:
            raise InputError(
                describe(path, "image file name does not follow the nnU-Net layout",
                         expected="<case>_XXXX.nii.gz with a 4-digit channel number", found=path.name,
                         fix="rename it (e.g. <case>_0000.nii.gz) or move it out of imagesTr")
            )
        channels = images.setdefault(match.group("case"), {})
        channel = int(match.group("channel"))
        if channel in channels:
            raise _case_error(match.group("case"), path, f"channel {channel:04d} exists twice",
                              expected="one file", found=f"{channels[channel].name} and {path.name}", fix="delete one")
        channels[channel] = path
    labels = {_NIFTI_RE.sub("", p.name): p for p in _nifti_files(labels_dir)}
    if not images and not labels:
        raise _no_cases(folder, _GENERIC_LAYOUT)
    cases: list[CaseFiles] = []
    expected_count = n_channels
    count_source = "n_channels" if n_channels is not None else None
    for case_id in sorted(images):
        channels = images[case_id]
        numbers = sorted(channels)
        if numbers != list(range(len(numbers))):
            gap = next(i for i in range(len(numbers) + 1) if i not in channels)
            raise _case_error(case_id, images_dir / f"{case_id}_{gap:04d}.nii.gz", f"channel {gap:04d} is missing",
                              expected=f"channels 0000..{max(numbers):04d} without gaps",
                              found=", ".join(f"{n:04d}" for n in numbers), fix="restore the missing channel file")
        if expected_count is None:
            expected_count, count_source = len(numbers), f"case {case_id}"
        if len(numbers) != expected_count:
            raise _case_error(case_id, images_dir / f"{case_id}_{len(numbers) - 1:04d}.nii.gz",
                              "wrong number of channels", expected=f"{expected_count} (as in {count_source})",
                              found=str(len(numbers)),
                              fix="give every case the same channels (and match the model's channel count)")
        if case_id not in labels:
            raise _case_error(case_id, labels_dir / f"{case_id}.nii.gz", "label file is missing",
                              expected=f"labelsTr/{case_id}.nii[.gz]", found="none",
                              fix="restore the label or remove the case")
        cases.append(CaseFiles(case_id, tuple(channels[n] for n in numbers), labels[case_id]))
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise _case_error(orphans[0], labels[orphans[0]], "label without images",
                          expected=f"imagesTr/{orphans[0]}_0000.nii.gz", found="none",
                          fix="restore the images or remove the label")
    if expected_count is None:  # unreachable (no images means orphans above); narrows the type
        raise _no_cases(folder, _GENERIC_LAYOUT)
    names = _channel_names(folder, expected_count)
    spec = LabelSpec("foreground", allowed, fg)
    return NiftiDataset(cases, channel_names=names, labels=spec, kind=kind, root=folder, validate=validate)


def _channel_names(folder: Path, count: int) -> tuple[str, ...]:
    default = tuple(f"{i:04d}" for i in range(count))
    path = folder / "dataset.json"
    if not path.is_file():
        return default
    try:
        meta: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            describe(path, "dataset.json is not valid JSON", found=f"{type(exc).__name__}: {exc}",
                     fix="repair or remove dataset.json")
        ) from exc
    names = meta.get("channel_names") if isinstance(meta, dict) else None
    if not isinstance(names, dict):
        return default
    try:
        return tuple(str(names[str(i)]) for i in range(count))
    except KeyError as exc:
        raise InputError(
            describe(path, "channel_names does not match the image files",
                     expected=f"keys '0'..'{count - 1}'", found=str(sorted(names)), fix="repair dataset.json")
        ) from exc


def demo_dataset(root: PathLike, *, validate: bool = True) -> NiftiDataset:
    """The demo cohort (``make-demo-data``): generic layout, 1 channel (T1), labels {0, 1} (white matter)."""
    return generic_dataset(root, n_channels=1, label_values=(0, 1), validate=validate, kind="demo")


def make_dataset(kind: DatasetKind, root: PathLike, **kwargs: Any) -> NiftiDataset:
    """Build a dataset by layout name.

    Args:
        kind: ``"brats"`` (:func:`brats_dataset`), ``"lits"`` (:func:`lits_dataset`),
            ``"generic"`` (:func:`generic_dataset`) or ``"demo"`` (:func:`demo_dataset`).
        root: the dataset folder.
        **kwargs: passed to the builder (e.g. ``split="train"``, ``target="tumour_core"``).
    """
    builders = {"brats": brats_dataset, "lits": lits_dataset, "generic": generic_dataset, "demo": demo_dataset}
    if kind not in builders:
        raise InputError(describe(None, "unknown dataset kind", expected=" | ".join(builders), found=repr(kind)))
    return builders[kind](root, **kwargs)  # type: ignore[operator]
