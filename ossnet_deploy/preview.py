"""A PNG preview of a segmentation: three orthogonal slices with the label outline.

The slices pass through the segmentation's centre of mass (the volume centre when it is
empty) and are shown in the RAS+ frame, neurological convention (patient right on the right):
axial (superior view, anterior up), coronal (anterior view, superior up), sagittal (from the
right, anterior right, superior up). Pixels are scaled by the voxel sizes, so anisotropic
volumes keep their proportions. The grey values are windowed to the 0.5th-99.5th percentile of
the image (background included); each label's outline (its voxels with a 4-neighbour of another
label in the slice) is drawn in colour over them.

pillow and numpy only; the file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, io_orientation

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import InputError, describe

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["GreyLevels", "grey_levels", "render_preview", "write_preview"]

# Label k is drawn in _PALETTE[(k - 1) % len(_PALETTE)].
_PALETTE = ((255, 40, 40), (40, 220, 40), (60, 120, 255), (255, 220, 0), (255, 0, 255), (0, 230, 230))
_PANEL_HEIGHT = 256
_GAP = 4


def _outline(labels2d: np.ndarray) -> np.ndarray:
    """Voxels of a label whose 4-neighbourhood (in the slice, or the slice's edge) holds another value."""
    padded = np.pad(labels2d, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels2d.shape, dtype=bool)
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        edge |= padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc] != centre
    return edge & (labels2d > 0)


def _centre_of_mass(mask: np.ndarray) -> tuple[int, int, int]:
    """Rounded centre of mass of a 3D mask from its per-axis projections (no (N, 3) index
    array on large volumes); the volume centre when the mask is empty."""
    total = int(np.count_nonzero(mask))
    if total == 0:
        return (mask.shape[0] // 2, mask.shape[1] // 2, mask.shape[2] // 2)
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = np.count_nonzero(mask, axis=others)
        centre.append(round(float(np.dot(counts, np.arange(mask.shape[axis]))) / total))
    return (centre[0], centre[1], centre[2])


def _window(image: np.ndarray) -> tuple[float, float]:
    """Grey window: the 0.5th to 99.5th percentile of all voxels (the maximum when they agree)."""
    values = image.reshape(-1)
    # A subsample keeps the percentile cheap on 512^3 volumes; the window need not be exact.
    step = max(1, values.size // 1_000_000)
    lo, hi = (float(v) for v in np.percentile(values[::step], (0.5, 99.5)))
    if hi <= lo:
        hi = float(values.max())
    return lo, hi if hi > lo else lo + 1.0


@dataclass(frozen=True, eq=False)
class GreyLevels:
    """An image windowed to 8-bit grey levels: ``levels`` ``(X, Y, Z)`` uint8 on the stored grid.

    A quarter of a float32 image's memory, so a caller may keep it while the image itself is
    released (the CLI takes it when the input is read and draws the preview after segmenting).
    """

    levels: np.ndarray


_LEVEL_SLAB = 16  # stored slices windowed at a time: a float64 slab, never a whole-volume copy


def grey_levels(image: np.ndarray) -> GreyLevels:
    """Window ``image`` ``(X, Y, Z)`` to the 0.5th-99.5th percentile and map it to 0..255.

    Raises:
        InputError: ``image`` is not 3D.
    """
    img = np.asarray(image)
    if img.ndim != 3:
        raise InputError(describe(None, "preview needs a 3D image", expected="an (X, Y, Z) array",
                                  found=f"shape {img.shape}", fix="pass one channel of the input"))
    lo, hi = _window(img)
    levels = np.empty(img.shape, dtype=np.uint8)
    for start in range(0, img.shape[0], _LEVEL_SLAB):
        slab = img[start : start + _LEVEL_SLAB].astype(np.float64)
        levels[start : start + _LEVEL_SLAB] = (np.clip((slab - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    return GreyLevels(levels)


def _panel(levels: np.ndarray, labels2d: np.ndarray, size_rc: tuple[float, float]) -> PILImage:
    from PIL import Image

    rgb = np.repeat(levels[..., None], 3, axis=2)
    edge = _outline(labels2d)
    for value in np.unique(labels2d[edge]):
        rgb[edge & (labels2d == value)] = _PALETTE[(int(value) - 1) % len(_PALETTE)]
    rows_mm, cols_mm = size_rc
    height = _PANEL_HEIGHT
    width = max(1, round(height * cols_mm / rows_mm))
    return Image.fromarray(rgb, mode="RGB").resize((width, height), Image.Resampling.NEAREST)


def render_preview(image: np.ndarray | GreyLevels, labels: np.ndarray, affine: np.ndarray) -> PILImage:
    """Render the preview as a ``PIL.Image.Image`` (RGB).

    Args:
        image: ``(X, Y, Z)`` grey values on the stored grid (e.g. the first input channel), or
            their :func:`grey_levels`.
        labels: ``(X, Y, Z)`` uint8 segmentation on the same grid.
        affine: ``(4, 4)`` voxel-to-world matrix of that grid (mm).

    Raises:
        InputError: the arrays are not 3D or their shapes differ.
    """
    from PIL import Image

    img = (image if isinstance(image, GreyLevels) else grey_levels(image)).levels
    lab = np.asarray(labels)
    if img.ndim != 3 or img.shape != lab.shape:
        raise InputError(describe(None, "preview needs a 3D image and labels of the same shape",
                                  expected="two (X, Y, Z) arrays", found=f"{img.shape} and {lab.shape}",
                                  fix="pass one channel of the input and its segmentation"))
    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    img = apply_orientation(img, ornt)
    lab = apply_orientation(lab, ornt)
    sizes = voxel_sizes(np.asarray(affine, dtype=np.float64))
    spacing = [0.0, 0.0, 0.0]
    for stored_axis, (canonical_axis, _) in enumerate(ornt):
        spacing[int(canonical_axis)] = float(sizes[stored_axis])
    sx, sy, sz = spacing
    ci, cj, ck = _centre_of_mass(lab > 0)
    # Each view: rows top->bottom, columns left->right (see the module docstring).
    views = [
        (img[:, :, ck].T[::-1], lab[:, :, ck].T[::-1], (sy, sx)),  # axial: rows = -j, cols = +i
        (img[:, cj, :].T[::-1], lab[:, cj, :].T[::-1], (sz, sx)),  # coronal: rows = -k, cols = +i
        (img[ci, :, :].T[::-1], lab[ci, :, :].T[::-1], (sz, sy)),  # sagittal: rows = -k, cols = +j
    ]
    panels = []
    for grey, lab2d, (row_mm, col_mm) in views:
        rows, cols = grey.shape
        panels.append(_panel(grey, lab2d, (rows * row_mm, cols * col_mm)))
    width = sum(p.width for p in panels) + _GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, _PANEL_HEIGHT))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + _GAP
    return canvas


def write_preview(
    path: str | os.PathLike[str],
    image: np.ndarray | GreyLevels,
    labels: np.ndarray,
    affine: np.ndarray,
    *,
    overwrite: bool = False,
) -> Path:
    """Render :func:`render_preview` and write it as PNG, atomically.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        InputError: see :func:`render_preview`.
    """
    target = Path(path)
    picture = render_preview(image, labels, affine)
    with atomic_write(target, overwrite=overwrite) as tmp:
        picture.save(tmp, format="PNG")
    return target
