"""benchmarks/analyse_errors.py's surface rings on a tiny phantom."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import analyse_errors


def cube(shape: tuple[int, int, int] = (20, 20, 20), lo: int = 5, hi: int = 15) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[lo:hi, lo:hi, lo:hi] = True
    return out


def test_rings_count_6_neighbour_steps_from_the_surface() -> None:
    truth = cube()
    rings = analyse_errors.surface_rings(truth, rings=4)
    # Both sides of the face x = 5 | x = 4 touch the surface (ring 1); then one step per ring.
    assert rings[5, 10, 10] == 1 and rings[4, 10, 10] == 1
    assert rings[6, 10, 10] == 2 and rings[3, 10, 10] == 2
    assert rings[7, 10, 10] == 3 and rings[2, 10, 10] == 3
    assert rings[10, 10, 10] == 4 and rings[0, 0, 0] == 4  # "4 or more"
    # A one-voxel shift of the whole cube is an error made only of ring-1 voxels.
    shifted = np.roll(truth, 1, axis=0)
    errors = shifted != truth
    assert set(np.unique(rings[errors])) == {1}
