"""Dice / IoU over the foreground, with hand-computed fixtures."""

from __future__ import annotations

import numpy as np
import pytest

from ossnet_deploy import metrics
from ossnet_deploy.metrics import confusion, dice, iou


def test_one_dimensional_hand_fixture():
    pred = np.array([1, 1, 0, 0, 1], dtype=np.uint8)
    target = np.array([1, 0, 1, 0, 1], dtype=np.uint8)
    # tp at 0 and 4, fp at 1, fn at 2.
    assert confusion(pred, target) == (2, 1, 1)
    assert dice(pred, target) == pytest.approx(4 / 6, abs=1e-12)
    assert iou(pred, target) == pytest.approx(2 / 4, abs=1e-12)


def test_shifted_cubes():
    pred = np.zeros((4, 4, 4), dtype=bool)
    target = np.zeros((4, 4, 4), dtype=bool)
    pred[0:2, 0:2, 0:2] = True  # 8 voxels
    target[1:3, 0:2, 0:2] = True  # 8 voxels, overlapping in the slab i == 1 (4 voxels)
    assert confusion(pred, target) == (4, 4, 4)
    assert dice(pred, target) == pytest.approx(0.5, abs=1e-12)
    assert iou(pred, target) == pytest.approx(1 / 3, abs=1e-12)


def test_background_does_not_inflate_agreement():
    # 1 foreground voxel right and 1 wrong in a large empty volume: Dice 0.5, not ~1.
    pred = np.zeros((10, 10, 10), dtype=bool)
    target = np.zeros((10, 10, 10), dtype=bool)
    pred[0, 0, 0] = pred[5, 5, 5] = True
    target[0, 0, 0] = True
    assert dice(pred, target) == pytest.approx(2 / 3, abs=1e-12)
    assert iou(pred, target) == pytest.approx(1 / 2, abs=1e-12)


def test_empty_vs_empty_is_perfect_and_empty_vs_full_is_zero():
    empty = np.zeros((3, 3, 3), dtype=bool)
    full = np.ones((3, 3, 3), dtype=bool)
    assert dice(empty, empty) == iou(empty, empty) == 1.0
    assert dice(empty, full) == iou(empty, full) == 0.0
    assert dice(full, empty) == iou(full, empty) == 0.0
    assert dice(full, full) == iou(full, full) == 1.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64])
def test_zero_one_arrays_of_any_dtype_equal_bool(dtype):
    rng = np.random.default_rng(1)
    pred = rng.random((5, 6, 7)) < 0.4
    target = rng.random((5, 6, 7)) < 0.5
    assert confusion(pred.astype(dtype), target.astype(dtype)) == confusion(pred, target)


def test_counts_are_python_ints():
    counts = confusion(np.ones(3, bool), np.ones(3, bool))
    assert all(type(c) is int for c in counts)


def test_slabbed_counting_equals_direct_counting(monkeypatch):
    # A slab of 7 voxels over rows of 6 voxels: slab boundaries fall at row 1, 2, ... with a remainder.
    monkeypatch.setattr(metrics, "_SLAB_VOXELS", 7)
    rng = np.random.default_rng(2)
    pred = rng.random((11, 2, 3)) < 0.5
    target = rng.random((11, 2, 3)) < 0.5
    tp = int(np.sum(pred & target))
    fp = int(np.sum(pred & ~target))
    fn = int(np.sum(~pred & target))
    assert confusion(pred, target) == (tp, fp, fn)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(2, 3\) and target \(3, 2\)"):
        dice(np.zeros((2, 3)), np.zeros((3, 2)))


def test_multi_label_map_is_refused():
    labels = np.array([0, 1, 2, 4], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"target must be a binary mask.*2 voxels with other values"):
        iou(np.zeros(4, bool), labels)
