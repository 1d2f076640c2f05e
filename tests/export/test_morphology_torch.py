"""The scheduler's numpy morphology and resampling against the torch operations the paper used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ossnet_deploy.morphology import max_filter
from ossnet_deploy.scheduler import SchedulerConfig, run_scheduler


@pytest.mark.parametrize("size", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", [(17, 12, 9), (1, 5, 3), (4, 4, 11)])
@pytest.mark.parametrize("density", [0.01, 0.2])
def test_max_filter_equals_torch_max_pool3d(size, shape, density):
    rng = np.random.default_rng(size * 1000 + shape[0] * 10 + int(density * 100))
    mask = rng.random(shape) < density
    pooled = F.max_pool3d(torch.from_numpy(mask.astype(np.float32))[None, None], kernel_size=size, stride=1,
                          padding=size // 2)[0, 0].numpy() > 0.5
    assert np.array_equal(max_filter(mask, size), pooled)
    as_uint8 = max_filter(mask.astype(np.uint8), size)
    assert as_uint8.dtype == np.uint8
    assert np.array_equal(as_uint8.astype(bool), pooled)


@pytest.mark.parametrize("coarse_shape", [(8, 8, 5), (3, 5, 2)])
def test_reference_seed_equals_torch_trilinear_align_corners(coarse_shape):
    """Stage 1 of ``reference`` with a coarse segmentation queries exactly the stride-4 lattice
    points where torch's ``interpolate(sigmoid(coarse), grid // 4, trilinear, align_corners=True)``
    exceeds 0.5 (the paper's improved inference)."""
    grid = (64, 64, 40)
    rng = np.random.default_rng(sum(coarse_shape))
    coarse = rng.normal(scale=3.0, size=coarse_shape).astype(np.float32)
    probability = torch.sigmoid(torch.from_numpy(coarse))[None, None]
    lattice = tuple(g // 4 for g in grid)
    upsampled = F.interpolate(probability, size=lattice, mode="trilinear", align_corners=True)[0, 0].numpy()
    # Values within float32 rounding of 0.5 could fall either way; the draw has none.
    assert np.abs(upsampled - 0.5).min() > 1e-5
    expected = np.argwhere(upsampled > 0.5) * 4

    calls: list[np.ndarray] = []

    def decode(idx: np.ndarray) -> np.ndarray:
        calls.append(idx.copy())
        return np.full(len(idx), -1.0, dtype=np.float32)  # nothing positive: only stage 1 queries

    result = run_scheduler(decode, grid, (slice(None),) * 3, SchedulerConfig(mode="reference"),
                           coarse_logits=coarse)
    queried = np.concatenate(calls) if calls else np.zeros((0, 3), dtype=np.int64)
    assert result.stats.stages[0].queries == len(expected) > 0
    assert np.array_equal(queried, expected)
