"""The numpy preprocessing agrees with the torch operations the reference method uses."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from ossnet_deploy.geometry import resample_linear, resample_nearest  # noqa: E402
from ossnet_deploy.patches import extract_patches  # noqa: E402
from ossnet_deploy.preprocess import PreprocessConfig, global_pool, prepare_volume  # noqa: E402

SIZES = [
    ((12, 10, 8), (7, 15, 11)),  # mixed up/down, non-integer ratios
    ((9, 9, 9), (18, 4, 9)),  # exact x2, strong down, identity axis
    ((5, 16, 3), (16, 5, 13)),
]


@pytest.mark.parametrize(("shape_in", "shape_out"), SIZES)
def test_resample_linear_matches_trilinear_align_corners_false(shape_in, shape_out) -> None:
    rng = np.random.default_rng(11)
    vol = rng.standard_normal((2, *shape_in)).astype(np.float32)
    ours = resample_linear(vol, shape_out)
    ref = F.interpolate(torch.from_numpy(vol)[None], size=shape_out, mode="trilinear", align_corners=False)[0]
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=2e-6)


# These sizes have no output centre exactly on an input voxel edge: there torch's float32 scale
# may round either way, while ours is exact (see test_resample_nearest_resolves_ties_exactly).
@pytest.mark.parametrize(("shape_in", "shape_out"), SIZES)
def test_resample_nearest_matches_nearest_exact(shape_in, shape_out) -> None:
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 200, size=shape_in).astype(np.uint8)
    ours = resample_nearest(labels, shape_out)
    ref = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=shape_out, mode="nearest-exact")
    np.testing.assert_array_equal(ours, ref[0, 0].numpy().astype(np.uint8))


def test_global_volume_matches_half_scale_trilinear() -> None:
    cfg = PreprocessConfig(
        geometry="fixed_spacing_pad", shape=(32, 24, 16), channels=("a", "b"), intensity="zscore_volume"
    )
    rng = np.random.default_rng(13)
    data = rng.gamma(2.0, 3.0, size=(2, 20, 22, 12)).astype(np.float32)
    prepared = prepare_volume(data, np.diag([1.3, 1.0, 1.0, 1.0]), cfg)
    assert prepared.placement.resampled_shape == (26, 22, 12)  # resampled, then padded
    ref = F.interpolate(torch.from_numpy(prepared.padded)[None], scale_factor=0.5, mode="trilinear", align_corners=False)
    np.testing.assert_allclose(prepared.global_volume, ref[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(global_pool(prepared.padded), ref[0].numpy(), rtol=0, atol=1e-6)


def test_patches_match_torch_unfold_and_avg_pool() -> None:
    # the reference's route: constant-pad, unfold windows, avg_pool3d the large one
    rng = np.random.default_rng(14)
    padded = rng.standard_normal((2, 12, 10, 9)).astype(np.float32)
    pads = np.array([-0.5, 2.0], dtype=np.float32)
    idx = np.array([[0, 0, 0], [11, 9, 8], [6, 5, 4], [1, 8, 2]], dtype=np.int64)
    ours = extract_patches(padded, pads, idx, large=True)
    t = torch.from_numpy(padded)
    ext = torch.stack([F.pad(t[c], (7, 7, 7, 7, 7, 7), value=float(pads[c])) for c in range(2)])
    for n, (i, j, k) in enumerate(idx.tolist()):
        small = ext[:, i + 4 : i + 11, j + 4 : j + 11, k + 4 : k + 11]
        large = F.avg_pool3d(ext[None, :, i : i + 14, j : j + 14, k : k + 14], kernel_size=2, stride=2)[0]
        np.testing.assert_array_equal(ours[n, :2], small.numpy())
        np.testing.assert_allclose(ours[n, 2:], large.numpy(), rtol=0, atol=1e-6)
