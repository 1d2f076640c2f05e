"""Tiny synthetic datasets for tests and the end-to-end smoke demo.

:func:`write_ellipsoid_dataset` writes a generic-layout (nnU-Net style) dataset of small
volumes, each holding one bright ellipsoid of random centre and radii in Gaussian noise, so a
model must look at the image (coordinates alone cannot solve it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["write_ellipsoid_dataset"]


def write_ellipsoid_dataset(
    root: str | os.PathLike[str], seeds: Iterable[int], *, grid: int = 32, noise: float = 0.25
) -> Path:
    """Write ``imagesTr/ell_SSS_0000.nii.gz`` and ``labelsTr/ell_SSS.nii.gz`` for every seed.

    Args:
        root: dataset folder (created).
        seeds: one case per seed (numpy ``default_rng(seed)``), deterministic.
        grid: side of the cubic volumes (voxels, 1 mm, identity affine).
        noise: standard deviation of the Gaussian noise; the ellipsoid has intensity 1 above 0.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    index = np.indices((grid, grid, grid), dtype=np.float32)
    affine = np.eye(4)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        centre = rng.uniform(grid * 11 / 32, grid * 21 / 32, size=3)
        radii = rng.uniform(grid * 4 / 32, grid * 9 / 32, size=3)
        inside = sum(((index[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0
        image = inside.astype(np.float32) + rng.normal(0, noise, size=inside.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"ell_{seed:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(inside.astype(np.uint8), affine), root / "labelsTr" / f"ell_{seed:03d}.nii.gz")
    return root
