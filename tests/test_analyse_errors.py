"""scripts/analyse_errors.py's geometry on tiny phantoms: surface rings, the filled hull, the threshold ceiling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "analyse_errors.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("analyse_errors", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cube(shape: tuple[int, int, int] = (20, 20, 20), lo: int = 5, hi: int = 15) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[lo:hi, lo:hi, lo:hi] = True
    return out


def test_rings_count_6_neighbour_steps_from_the_surface(script) -> None:
    truth = cube()
    rings = script.surface_rings(truth, rings=4)
    # Both sides of the face x = 5 | x = 4 touch the surface (ring 1); then one step per ring.
    assert rings[5, 10, 10] == 1 and rings[4, 10, 10] == 1
    assert rings[6, 10, 10] == 2 and rings[3, 10, 10] == 2
    assert rings[7, 10, 10] == 3 and rings[2, 10, 10] == 3
    assert rings[10, 10, 10] == 4 and rings[0, 0, 0] == 4  # "4 or more"
    # A one-voxel shift of the whole cube is an error made only of ring-1 voxels.
    shifted = np.roll(truth, 1, axis=0)
    errors = shifted != truth
    assert set(np.unique(rings[errors])) == {1}


def test_hull_fills_holes_and_keeps_the_outline(script) -> None:
    shell = cube((30, 30, 30), 6, 24) & ~cube((30, 30, 30), 9, 21)  # a hollow box, wall 3 voxels
    filled = script.hull(shell, closing=2)
    np.testing.assert_array_equal(filled, cube((30, 30, 30), 6, 24))


def test_threshold_ceiling_is_one_for_a_separable_image(script) -> None:
    rng = np.random.default_rng(0)
    truth = cube()
    image = np.where(truth, 2.0, 1.0) + rng.normal(0, 0.05, truth.shape)
    score, t = script.best_threshold_dice(image, truth, np.ones_like(truth))
    assert score == pytest.approx(1.0, abs=1e-3) and 1.2 < t < 1.9
    noisy = np.where(truth, 2.0, 1.0) + rng.normal(0, 1.0, truth.shape)  # classes overlap: far from 1
    assert script.best_threshold_dice(noisy, truth, np.ones_like(truth))[0] < 0.8
