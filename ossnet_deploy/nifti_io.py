"""NIfTI files in and out, with every user-caused failure turned into an ``InputError``.

Used by the runtime and by the training datasets, so both refuse the same broken inputs with
the same messages. Reading is split into :func:`load_nifti` (header only: cheap, lazy) and
:func:`read_array` (voxel data), so a batch can check every header before decoding any data.

Array conventions: arrays are in the file's stored axis order ``(i, j, k)`` (no reorientation
here; that is ``preprocess``'s job), channels first for multi-channel data, ``(C, i, j, k)``.
Affines map voxel indices to scanner millimetres (RAS+), as nibabel reports them.

Output follows docs/design.md#geometry: ``Nifti1Image(labels, None, header=input.header.copy())``
with dtype uint8, so shape, affine and qform/sform codes equal the input's.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.geometry import affine_text, validate_affine

__all__ = [
    "AFFINE_ATOL_MM",
    "NIFTI_SUFFIXES",
    "check_spatial",
    "labels_image",
    "load_channels",
    "load_label",
    "load_nifti",
    "read_array",
    "save_image",
    "save_labels",
]

PathLike = str | os.PathLike[str]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_ATOL_MM = 1e-3
"""Two affines describe the same grid when every entry agrees within this (mm)."""

_RECOPY_FIX = "re-copy or re-export the file"
# nibabel and the decompressors raise all of these for damaged files; none of them means a bug
# in ossnet, so they become InputError.
_READ_ERRORS = (EOFError, zlib.error, OSError, ValueError, struct.error, ImageFileError, HeaderDataError)
# Header fields whose change would move or reshape the output grid; extra_header must not touch them.
_GEOMETRY_FIELDS = frozenset(
    {"dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
     "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "datatype", "bitpix",
     "vox_offset", "scl_slope", "scl_inter", "dim_info", "xyzt_units"}
)  # fmt: skip


def _has_nifti_suffix(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _sniff_header(path: Path) -> str | None:
    """Why ``path`` cannot be a NIfTI file, judged from its first bytes, or None if it may be.

    nibabel answers all of these with "Cannot work out file type"; telling a PNG from a
    truncated download from a misnamed file gives the user the right fix.
    """
    with open(path, "rb") as raw:
        magic = raw.read(2)
    compressed = magic == b"\x1f\x8b"
    if path.name.lower().endswith(".gz") and not compressed:
        return "not gzip-compressed data (a .nii.gz must be gzip)"
    if compressed and not path.name.lower().endswith(".gz"):
        return "gzip-compressed data in a file not named .gz (rename it to .nii.gz)"
    try:
        opener = gzip.open(path, "rb") if compressed else open(path, "rb")
        with opener as stream:
            head = stream.read(548)
    except (OSError, EOFError, zlib.error) as exc:
        return f"damaged gzip data ({exc})"
    if len(head) < 348:
        return f"a truncated header ({len(head)} bytes, a NIfTI header has 348)"
    little, big = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    if 348 in (little, big):
        if head[344:348] not in (b"n+1\x00", b"ni1\x00"):
            return "an Analyze/other header without the NIfTI-1 magic"
        return None
    if 540 in (little, big):
        return None if head[4:8] in (b"n+2\x00", b"ni2\x00") else "a header without the NIfTI-2 magic"
    return f"no NIfTI header (first bytes {head[:8]!r})"


def load_nifti(path: PathLike) -> nib.Nifti1Image:
    """Open a NIfTI-1/2 file and read its header; voxel data stays on disk (lazy).

    Returns:
        The image (``nib.Nifti2Image`` is a subclass); use :func:`read_array` for the data.

    Raises:
        InputError: the file is missing, a folder, not named ``.nii``/``.nii.gz``, not a
            NIfTI file (e.g. a PNG or text renamed ``.nii.gz``) or has a truncated header.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(describe(source, "image not found", fix="check the path"))
    if source.is_dir():
        raise InputError(
            describe(
                source, "is a folder", expected="a .nii or .nii.gz file", fix="pass the image file inside it"
            )
        )
    if not _has_nifti_suffix(source):
        raise InputError(
            describe(
                source,
                "unsupported file type",
                expected="a NIfTI file (.nii or .nii.gz)",
                found=f"suffix {''.join(source.suffixes) or '(none)'}",
                fix="convert it to NIfTI (e.g. dcm2niix for DICOM)",
            )
        )
    try:
        problem = _sniff_header(source)
    except OSError as exc:
        raise InputError(
            describe(source, "cannot be read", found=str(exc), fix="check its permissions")
        ) from None
    if problem is not None:
        raise InputError(
            describe(
                source,
                "not a readable NIfTI file",
                expected="a NIfTI-1/2 header",
                found=problem,
                fix=f"{_RECOPY_FIX}, or convert the image to NIfTI",
            )
        )
    try:
        image = nib.load(source)
    except _READ_ERRORS as exc:
        raise InputError(
            describe(
                source, "not a readable NIfTI file", found=f"{type(exc).__name__}: {exc}", fix=_RECOPY_FIX
            )
        ) from None
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(
            describe(
                source, "not a NIfTI image", found=type(image).__name__, fix="convert the image to NIfTI"
            )
        )
    return image


def _expected_bytes(img: nib.Nifti1Image) -> int:
    return int(np.prod(img.shape, dtype=np.int64)) * img.get_data_dtype().itemsize


def read_array(img: nib.Nifti1Image, path: PathLike, *, dtype: Any = np.float32) -> np.ndarray:
    """Read the voxel data of ``img`` (scaled by the header's slope/intercept).

    Args:
        img: an image from :func:`load_nifti`.
        path: its file, for messages.
        dtype: dtype of the returned array; None keeps nibabel's dtype for the stored data.

    Returns:
        The data in stored axis order, ``img.shape``; float arrays are checked to be finite.

    Raises:
        InputError: the voxel data is truncated or corrupt, or holds NaN/inf values.
    """
    try:
        array = np.asarray(img.dataobj) if dtype is None else np.asarray(img.dataobj, dtype=dtype)
    except _READ_ERRORS as exc:
        raise InputError(
            describe(
                path,
                "file is truncated or corrupt",
                expected=f"{_expected_bytes(img)} bytes of voxel data for shape {tuple(img.shape)} "
                f"{img.get_data_dtype()}",
                found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                fix=_RECOPY_FIX,
            )
        ) from None
    if array.dtype.kind in "fc" and not _all_finite(array):
        bad = ~np.isfinite(array)
        count = int(np.count_nonzero(bad))
        first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), array.shape))
        raise InputError(
            describe(
                path,
                "image has non-finite voxels",
                expected="finite values",
                found=f"{count} NaN/inf voxels, the first at index {first}",
                fix="replace them (e.g. with 0) before segmenting, or re-export the image",
            )
        )
    return array


def _all_finite(array: np.ndarray) -> bool:
    # min/max propagate NaN and expose inf without a boolean copy of a 512^3 volume.
    if array.size == 0:
        return True
    return bool(np.isfinite(np.min(array)) and np.isfinite(np.max(array)))


def check_spatial(
    img: nib.Nifti1Image, path: PathLike, *, allow_4d: bool
) -> tuple[tuple[int, int, int], int]:
    """Check that ``img`` is a 3D volume (or 4D with channels last) with a usable affine.

    A 4D image whose last axis has size 1 counts as 3D.

    Args:
        img: the image (header only is needed).
        path: its file, for messages.
        allow_4d: accept ``(X, Y, Z, C)`` multi-channel images.

    Returns:
        ``((X, Y, Z), C)``: the spatial shape and the number of channels (1 for 3D).

    Raises:
        InputError: 2D, 5D+ or (without ``allow_4d``) 4D data, an empty axis, or an affine
            that is non-finite or singular.
    """
    shape = tuple(int(s) for s in img.shape)
    wanted = "3D (X, Y, Z) or 4D (X, Y, Z, C) with channels last" if allow_4d else "3D (X, Y, Z)"
    squeezable = len(shape) == 4 and shape[3] == 1
    if len(shape) not in (3, 4) or (len(shape) == 4 and not allow_4d and not squeezable):
        fix = "one channel per file, or a 4D file with the channel on the last axis"
        if len(shape) == 4:
            fix = "pass one 3D file per channel, or a single 4D file as the only input"
        raise InputError(
            describe(path, "wrong number of dimensions", expected=wanted, found=f"shape {shape}", fix=fix)
        )
    if min(shape) < 1:
        raise InputError(describe(path, "image has an empty axis", expected=wanted, found=f"shape {shape}"))
    validate_affine(img.affine, source=os.fspath(path))
    channels = shape[3] if len(shape) == 4 else 1
    return (shape[0], shape[1], shape[2]), channels


def _same_grid(
    img: nib.Nifti1Image,
    path: PathLike,
    shape: tuple[int, int, int],
    reference: nib.Nifti1Image,
    reference_path: PathLike,
    what: str,
) -> None:
    """Refuse ``img`` unless its spatial shape and affine equal the reference's."""
    ref_shape = tuple(int(s) for s in reference.shape[:3])
    if shape != ref_shape:
        raise InputError(
            describe(
                path,
                f"{what} shape differs from {os.fspath(reference_path)}",
                expected=f"shape {ref_shape}",
                found=f"shape {shape}",
                fix="resample it onto the same grid",
            )
        )
    if not np.allclose(img.affine, reference.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        diff = float(np.max(np.abs(np.asarray(img.affine) - np.asarray(reference.affine))))
        raise InputError(
            describe(
                path,
                f"{what} affine differs from {os.fspath(reference_path)} by up to {diff:.4g} mm",
                expected=affine_text(np.asarray(reference.affine)),
                found=affine_text(np.asarray(img.affine)),
                fix="resample it onto the same grid (all inputs of a case must be co-registered)",
            )
        )


def load_channels(paths: Sequence[PathLike]) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load a multi-channel image: one 3D file per channel, or one 4D file (channels last).

    Args:
        paths: channel files in model channel order, or a single 3D/4D file.

    Returns:
        ``(volume, reference)``: ``volume`` is ``(C, X, Y, Z)`` float32 in stored axis order;
        ``reference`` is the first file's image (its header and affine describe the grid).

    Raises:
        InputError: no paths, any :func:`load_nifti` / :func:`check_spatial` /
            :func:`read_array` refusal, or channel files whose shapes or affines (atol 1e-3 mm)
            differ from the first file's.
    """
    paths = list(paths)
    if not paths:
        raise InputError(
            describe(None, "no input image files given", expected="at least one .nii/.nii.gz file")
        )
    first_path = paths[0]
    reference = load_nifti(first_path)
    spatial, channels = check_spatial(reference, first_path, allow_4d=len(paths) == 1)
    if len(paths) == 1:
        data = read_array(reference, first_path)
        volume = np.empty((channels, *spatial), dtype=np.float32)
        for c in range(channels):
            volume[c] = data[..., c] if data.ndim == 4 else data
        return volume, reference
    images = [reference]
    for path in paths[1:]:
        img = load_nifti(path)
        shape, _ = check_spatial(img, path, allow_4d=False)
        _same_grid(img, path, shape, reference, first_path, "channel")
        images.append(img)
    volume = np.empty((len(paths), *spatial), dtype=np.float32)
    for c, (img, path) in enumerate(zip(images, paths, strict=True)):
        volume[c] = read_array(img, path).reshape(spatial)
    return volume, reference


def load_label(
    path: PathLike,
    reference_img: nib.Nifti1Image,
    *,
    allowed_values: set[int] | frozenset[int] | None = None,
    reference_path: PathLike | None = None,
) -> np.ndarray:
    """Load a label volume on the grid of ``reference_img``.

    Args:
        path: the label file (3D, integer values; float storage of whole numbers is fine).
        reference_img: the image the labels belong to (3D or 4D; only the spatial grid counts).
        allowed_values: label values that may occur (0 included if background may); None
            accepts any value 0..255.
        reference_path: the image's file, for messages (default: the image's own file name).

    Returns:
        ``(X, Y, Z)`` uint8 labels in stored axis order.

    Raises:
        InputError: any :func:`load_nifti` / :func:`check_spatial` / :func:`read_array`
            refusal, a grid that differs from the image's, non-integer values, values outside
            0..255, or values not in ``allowed_values``.
    """
    img = load_nifti(path)
    shape, _ = check_spatial(img, path, allow_4d=False)
    ref_name = reference_path if reference_path is not None else (reference_img.get_filename() or "the image")
    _same_grid(img, path, shape, reference_img, ref_name, "label")
    data = read_array(img, path, dtype=None).reshape(shape)
    values = _label_values(data)
    if data.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        odd = values[values != np.round(values)][:5].tolist()
        raise InputError(
            describe(
                path,
                "label values are not whole numbers",
                expected="integer labels",
                found=f"values such as {odd}",
                fix="save labels with an integer dtype (nearest-neighbour resampling only)",
            )
        )
    outside = [v for v in values.tolist() if not 0 <= v <= 255]
    unexpected = outside or (
        [v for v in values.tolist() if int(v) not in allowed_values] if allowed_values is not None else []
    )
    if unexpected:
        allowed = sorted(allowed_values) if allowed_values is not None else "0..255"
        raise InputError(
            describe(
                path,
                "unexpected label values",
                expected=f"values in {allowed}",
                found=f"values {[int(v) for v in unexpected[:10]]}",
                fix="check that this is the right label file for this dataset/preset",
            )
        )
    return data.astype(np.uint8, copy=False)


def _label_values(data: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array.

    Integer labels in 0..255 (the usual case) are tallied in a 256-entry table slab by slab,
    which avoids np.unique's full sort and intp copy on a 512^3 volume.
    """
    if data.dtype.kind in "ui" and data.size and int(data.min()) >= 0 and int(data.max()) <= 255:
        present = np.zeros(256, dtype=bool)
        flat = data.reshape(-1)
        step = 1 << 22
        for start in range(0, flat.size, step):
            present[flat[start : start + step]] = True
        return np.flatnonzero(present)
    return np.unique(data)


def labels_image(
    labels: np.ndarray,
    reference: nib.Nifti1Image,
    *,
    extra_header: Mapping[str, Any] | None = None,
) -> nib.Nifti1Image:
    """Build the output image of a segmentation on the grid of ``reference``.

    The header is a copy of the reference's (``Nifti1Image(labels, None, header=...)``), so
    shape, affine and qform/sform codes equal the input's; a 4D reference gives a 3D output
    with the same spatial affine. The data type becomes uint8 with scaling reset, so label
    values are stored exactly; intent is set to "label" and the display range to the labels.

    Args:
        labels: ``(X, Y, Z)`` uint8 (or bool) labels on the reference's spatial grid, in
            stored axis order.
        reference: the input image.
        extra_header: header fields to set afterwards (e.g. ``{"descrip": "ossnet demo"}``);
            geometry and data-type fields are refused.

    Raises:
        ValueError: ``labels`` has the wrong shape or dtype, or ``extra_header`` names a
            geometry field (programming errors, not user input).
    """
    labels = np.asarray(labels)
    spatial = tuple(int(s) for s in reference.shape[:3])
    if labels.shape != spatial:
        raise ValueError(f"labels must have the reference's spatial shape {spatial}, got {labels.shape}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 (or bool), got {labels.dtype}")
    header = reference.header.copy()
    klass = nib.Nifti2Image if isinstance(reference, nib.Nifti2Image) else nib.Nifti1Image
    image = klass(labels, None, header=header)
    image.set_data_dtype(np.uint8)
    # Slope NaN means "no scaling": stored values are the labels themselves.
    image.header.set_slope_inter(np.nan, np.nan)
    image.header.set_intent("label")
    image.header["cal_min"] = 0
    image.header["cal_max"] = int(labels.max()) if labels.size else 0
    for key, value in (extra_header or {}).items():
        if key in _GEOMETRY_FIELDS:
            raise ValueError(f"extra_header may not set the geometry/data field {key!r}")
        image.header[key] = value
    # ``Nifti1Image(data, None, header=...)`` keeps the header's geometry (codes included) but
    # leaves ``image.affine`` None until saved and reloaded; passing the header's own best
    # affine back keeps the codes and makes ``affine`` usable in memory.
    return klass(image.dataobj, image.header.get_best_affine(), header=image.header)


def save_labels(
    labels: np.ndarray,
    reference: nib.Nifti1Image,
    path: PathLike,
    *,
    overwrite: bool = False,
    extra_header: Mapping[str, Any] | None = None,
) -> Path:
    """Write a uint8 segmentation on the grid of ``reference`` atomically.

    See :func:`labels_image` for the header rules and :func:`save_image` for the writing.

    Args:
        labels: ``(X, Y, Z)`` uint8 labels on the reference's spatial grid.
        reference: the input image.
        path: output file, ``.nii`` or ``.nii.gz``.
        overwrite: replace an existing file.
        extra_header: see :func:`labels_image`.

    Returns:
        The written path.

    Raises:
        InputError: ``path`` is not named ``.nii``/``.nii.gz``.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return save_image(labels_image(labels, reference, extra_header=extra_header), path, overwrite=overwrite)


def save_image(image: nib.Nifti1Image, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write a NIfTI image atomically: the project's one NIfTI writer.

    The file is written under a temporary name in the destination folder and renamed into
    place (missing folders are created), so a reader never sees a partial file.

    Raises:
        InputError: ``path`` is not named ``.nii``/``.nii.gz``.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    target = Path(path)
    if not _has_nifti_suffix(target):
        raise InputError(
            describe(
                target,
                "output must be a NIfTI file",
                expected="a name ending in .nii.gz or .nii",
                found=f"suffix {''.join(target.suffixes) or '(none)'}",
                fix="name the output e.g. case_seg.nii.gz",
            )
        )
    with atomic_write(target, overwrite=overwrite) as tmp:
        nib.save(image, tmp)
    return target
