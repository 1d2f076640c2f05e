"""Builders of tiny synthetic datasets in the exact on-disk layouts (BraTS 2020, LiTS, nnU-Net).

Reusable by any test: each builder writes the files under a folder (usually ``tmp_path``) and
returns :class:`FixtureCase` records holding the arrays it wrote, so a test can compare what a
loader returns against what is on disk without re-reading the files.

Volumes are tiny (default 12 x 14 x 10 voxels) so a whole dataset is written in milliseconds.
Import as ``from fixtures import ...`` from tests in ``tests/train`` (pytest puts the test
file's folder on ``sys.path``, as ``tests/deploy`` does for ``synthetic_models``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE: tuple[int, int, int] = (12, 14, 10)
BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
#: The real name of BraTS 2020 case 355's label file (no case prefix, uncompressed).
BRATS_355_LABEL = "W39_1998.09.19_Segm.nii"
BRATS_355 = "BraTS20_Training_355"
DEFAULT_BRATS_IDS: tuple[str, ...] = ("BraTS20_Training_001", "BraTS20_Training_002", BRATS_355)


@dataclass
class FixtureCase:
    """What a builder wrote for one case.

    Attributes:
        case_id: the case id the loader should report.
        channels: one ``(X, Y, Z)`` float32 array per channel, in model order.
        label: ``(X, Y, Z)`` uint8 raw label values.
        affine: ``(4, 4)`` float64 affine of every file of the case.
        channel_paths: the image files, in model order.
        label_path: the label file.
    """

    case_id: str
    channels: list[np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    channel_paths: list[Path]
    label_path: Path


def fixture_affine(offset: float = 0.0) -> np.ndarray:
    """A 1 x 1.2 x 1.5 mm LPS-like affine (not RAS, so orientation bugs would show)."""
    affine = np.diag([-1.0, -1.2, 1.5, 1.0])
    affine[:3, 3] = (10.0 + offset, 20.0, -30.0)
    return affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` (its dtype kept) as NIfTI-1; ``.nii`` or ``.nii.gz`` from the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, fixture_affine() if affine is None else affine), path)
    return path


def image_volume(shape: Sequence[int], rng: np.random.Generator, level: float) -> np.ndarray:
    """A float32 volume around ``level`` with a little noise (distinct per channel)."""
    return (level + rng.standard_normal(tuple(shape))).astype(np.float32)


def brats_label(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Nested boxes holding every BraTS value: 2 (oedema) around 1 (necrosis) and 4 (enhancing)."""
    label = np.zeros(tuple(shape), dtype=np.uint8)
    lo = rng.integers(1, 3, size=3)
    label[lo[0]:-2, lo[1]:-2, lo[2]:-2] = 2
    label[lo[0] + 1:-3, lo[1] + 1:-3, lo[2] + 1:-3] = 4
    label[lo[0] + 2:-4, lo[1] + 2:-4, lo[2] + 2:-4] = 1
    return label


def box_label(shape: Sequence[int], rng: np.random.Generator, values: Sequence[int]) -> np.ndarray:
    """A label with nested boxes of the nonzero ``values`` (outermost first) on background 0."""
    label = np.zeros(tuple(shape), dtype=np.uint8)
    lo = rng.integers(1, 3, size=3)
    for depth, value in enumerate(v for v in values if v):
        a = lo + 2 * depth
        label[a[0]:-(2 + 2 * depth), a[1]:-(2 + 2 * depth), a[2]:-(2 + 2 * depth)] = value
    return label


def make_brats_case(
    root: Path,
    case_id: str,
    *,
    shape: Sequence[int] = SHAPE,
    rng: np.random.Generator | None = None,
    compressed: Sequence[bool] = (True, False, True, False, True),
    label_name: str | None = None,
) -> FixtureCase:
    """Write one BraTS case folder ``root/<case_id>/``.

    Args:
        compressed: per file (flair, t1, t1ce, t2, seg): ``.nii.gz`` if True else ``.nii``
            (BraTS 2020 mixes both).
        label_name: a non-canonical label file name (e.g. :data:`BRATS_355_LABEL`).
    """
    rng = rng or np.random.default_rng(0)
    folder = root / case_id
    affine = fixture_affine()
    channels, paths = [], []
    for c, (modality, gz) in enumerate(zip(BRATS_MODALITIES, compressed[:4], strict=True)):
        data = image_volume(shape, rng, level=100.0 * (c + 1))
        channels.append(data)
        paths.append(write_nifti(folder / f"{case_id}_{modality}.nii{'.gz' if gz else ''}", data, affine))
    label = brats_label(shape, rng)
    name = label_name or f"{case_id}_seg.nii{'.gz' if compressed[4] else ''}"
    label_path = write_nifti(folder / name, label, affine)
    return FixtureCase(case_id, channels, label, affine, paths, label_path)


def make_brats_dataset(
    root: Path,
    case_ids: Sequence[str] = DEFAULT_BRATS_IDS,
    *,
    shape: Sequence[int] = SHAPE,
    seed: int = 0,
) -> list[FixtureCase]:
    """Write BraTS case folders under ``root`` (mixed .nii / .nii.gz; case 355 with its quirk)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i, case_id in enumerate(case_ids):
        compressed = tuple(bool((i + f) % 2) for f in range(5))
        label_name = BRATS_355_LABEL if case_id == BRATS_355 else None
        cases.append(make_brats_case(root, case_id, shape=shape, rng=rng, compressed=compressed, label_name=label_name))
    return cases


def make_lits_dataset(
    root: Path,
    numbers: Sequence[int] = (0, 3, 11),
    *,
    layout: str = "flat",
    shape: Sequence[int] = SHAPE,
    seed: int = 0,
) -> list[FixtureCase]:
    """Write LiTS pairs ``volume-N`` / ``segmentation-N``.

    Args:
        layout: ``"flat"`` (all in ``root``) or ``"split"`` (``root/volumes/`` and
            ``root/segmentations/``); files alternate between ``.nii`` and ``.nii.gz``.
    """
    rng = np.random.default_rng(seed)
    vol_dir = root / "volumes" if layout == "split" else root
    seg_dir = root / "segmentations" if layout == "split" else root
    affine = fixture_affine()
    cases = []
    for i, n in enumerate(numbers):
        ext = ".nii.gz" if i % 2 else ".nii"
        ct = np.round(rng.normal(40.0, 30.0, size=tuple(shape))).astype(np.int16)
        label = box_label(shape, rng, (1, 2))
        vol = write_nifti(vol_dir / f"volume-{n}{ext}", ct, affine)
        seg = write_nifti(seg_dir / f"segmentation-{n}{ext}", label, affine)
        cases.append(FixtureCase(f"lits-{n}", [ct.astype(np.float32)], label, affine, [vol], seg))
    return cases


def make_generic_dataset(
    root: Path,
    case_ids: Sequence[str] = ("case_a", "case_b", "case_c"),
    *,
    n_channels: int = 2,
    label_values: Sequence[int] = (0, 1),
    shape: Sequence[int] = SHAPE,
    seed: int = 0,
    channel_names: Sequence[str] | None = None,
) -> list[FixtureCase]:
    """Write an nnU-Net layout: ``imagesTr/<case>_XXXX.nii.gz`` and ``labelsTr/<case>.nii.gz``.

    ``channel_names`` also writes a ``dataset.json`` naming the channels.
    """
    rng = np.random.default_rng(seed)
    affine = fixture_affine()
    cases = []
    for case_id in case_ids:
        channels, paths = [], []
        for c in range(n_channels):
            data = image_volume(shape, rng, level=50.0 * (c + 1))
            channels.append(data)
            paths.append(write_nifti(root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", data, affine))
        label = box_label(shape, rng, label_values)
        label_path = write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, affine)
        cases.append(FixtureCase(case_id, channels, label, affine, paths, label_path))
    if channel_names is not None:
        meta = {"channel_names": {str(i): name for i, name in enumerate(channel_names)}, "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return cases
