"""Residual U-Net baselines (ossnet_train.unet) and whole-volume inference (ossnet_train.sliding_window)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ossnet_deploy.errors import InputError, ModelFormatError
from ossnet_train.sliding_window import slicewise_logits, sliding_window_logits
from ossnet_train.unet import (
    ResidualUNet,
    UNetConfig,
    build_unet,
    slices_to_volume,
    volume_to_slices,
)

TINY = (4, 8, 16, 32, 64)
# Exact counts of the default configs (in_channels=1, out_channels=1); docs/unet.md derives them.
# MONAI's UNet with the same settings has 4,805,534 (3D) and 1,624,844 (2D): ours lacks the
# 1,216 conv biases that a following normalisation cancels.
DEFAULT_3D_PARAMS = 4_804_318
DEFAULT_2D_PARAMS = 1_623_628


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(architecture: str = "unet3d", in_channels: int = 1, **kwargs: object) -> ResidualUNet:
    return build_unet(UNetConfig(architecture=architecture, in_channels=in_channels, channels=TINY, **kwargs))


class _Identity3d(nn.Conv3d):
    """1x1x1 convolution y = scale * x + shift: an analytic model for the blending tests."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__(1, 1, 1)
        with torch.no_grad():
            self.weight.fill_(scale)
            self.bias.fill_(shift)


class _WindowMean(nn.Module):
    """Predicts, everywhere in a window, the mean of that window's input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3, 4), keepdim=True).expand(-1, 1, *x.shape[2:]).clone()


class _Recorder(nn.Module):
    """Identity that records the batch shapes it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return x[:, :1].clone()


# --- config -------------------------------------------------------------------------------


def test_default_config_matches_the_benchmark_peer() -> None:
    cfg = UNetConfig()
    assert (cfg.architecture, cfg.channels, cfg.strides, cfg.num_res_units) == (
        "unet3d",
        (16, 32, 64, 128, 256),
        (2, 2, 2, 2),
        2,
    )
    assert (cfg.spatial_dims, cfg.size_divisor, cfg.out_channels) == (3, 16, 1)
    assert UNetConfig(architecture="unet2d").spatial_dims == 2


def test_config_round_trips_through_json() -> None:
    cfg = UNetConfig(
        architecture="unet2d", in_channels=4, norm="batch", activation="relu", dropout=0.1, slice_axis=0
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["channels"] == [16, 32, 64, 128, 256]
    assert UNetConfig.from_dict(data) == cfg
    assert UNetConfig.from_dict({"architecture": "unet3d"}) == UNetConfig()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"architecture": "unet3d", "depth": 5}, r"unknown fields.*'depth'"),
        ({"in_channels": 4}, r"no 'architecture'"),
        ({"architecture": "unet3d", "channels": "16,32"}, r"channels='16,32' is not a list of ints"),
        ({"architecture": "unet3d", "in_channels": 1.5}, r"in_channels=1.5 is not an int"),
        ({"architecture": "unet4d"}, r"architecture='unet4d' not in"),
        (
            {"architecture": "unet3d", "strides": [2, 2]},
            r"strides=\(2, 2\) is not a tuple of 4 positive ints",
        ),
        ({"architecture": "unet3d", "norm": "group"}, r"norm='group' not in"),
        ({"architecture": "unet2d", "slice_axis": 3}, r"slice_axis=3 not in"),
        ({"architecture": "unet3d", "dropout": 1.0}, r"dropout=1.0 is not a number in \[0, 1\)"),
    ],
)
def test_config_from_dict_rejects_bad_data(data: dict[str, object], match: str) -> None:
    with pytest.raises(ModelFormatError, match=match):
        UNetConfig.from_dict(data, source="run/last.pt")
    with pytest.raises(ModelFormatError, match=r"^run/last\.pt: "):
        UNetConfig.from_dict(data, source="run/last.pt")


def test_config_constructor_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"activation='swish' not in"):
        UNetConfig(activation="swish")
    with pytest.raises(ModelFormatError, match=r"channels=\(16,\) is not a tuple of >= 2"):
        UNetConfig(channels=(16,), strides=())


# --- 3D net -------------------------------------------------------------------------------


def test_default_3d_parameter_count() -> None:
    count = _count(build_unet(UNetConfig()))
    assert count == DEFAULT_3D_PARAMS
    assert 4_500_000 <= count <= 5_500_000
    # Each extra input channel feeds the first strided conv and its strided residual conv
    # (3x3x3 kernels, 16 outputs each).
    assert _count(build_unet(UNetConfig(in_channels=4))) - count == 3 * 2 * 27 * 16


def test_default_3d_net_keeps_the_input_shape() -> None:
    model = build_unet(UNetConfig(in_channels=4)).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 32, 32, 32))
    assert y.shape == (1, 1, 32, 32, 32)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(("norm", "activation"), [("instance", "prelu"), ("batch", "leaky_relu")])
def test_3d_gradients_reach_every_parameter(norm: str, activation: str) -> None:
    model = _tiny(in_channels=2, norm=norm, activation=activation, dropout=0.1).train()
    x = torch.randn(2, 2, 32, 16, 32)
    target = (torch.rand(2, 1, 32, 16, 32) > 0.5).float()
    y = model(x)
    assert y.shape == (2, 1, 32, 16, 32)
    nn.functional.binary_cross_entropy_with_logits(y, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_3d_input_sides_must_divide_by_16() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"multiples of 16.*shape \(1, 1, 32, 33, 32\)"):
        model(torch.zeros(1, 1, 32, 33, 32))
    with pytest.raises(InputError, match=r"wrong shape.*C=1.*shape \(1, 2, 32, 32, 32\)"):
        model(torch.zeros(1, 2, 32, 32, 32))
    with pytest.raises(InputError, match=r"wrong shape.*shape \(1, 32, 32, 32\)"):
        model(torch.zeros(1, 32, 32, 32))


def test_other_strides_change_the_divisor() -> None:
    model = build_unet(UNetConfig(channels=(4, 8, 16), strides=(2, 3))).eval()
    assert model.size_divisor == 6
    with torch.no_grad():
        assert model(torch.randn(1, 1, 12, 18, 6)).shape == (1, 1, 12, 18, 6)
    with pytest.raises(InputError, match=r"multiples of 6.*\(1, 1, 12, 16, 6\)"):
        model(torch.randn(1, 1, 12, 16, 6))


# --- 2D net and slicing -------------------------------------------------------------------


def test_default_2d_parameter_count() -> None:
    assert _count(build_unet(UNetConfig(architecture="unet2d"))) == DEFAULT_2D_PARAMS


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_volume_to_slices_layout_and_inverse(slice_axis: int) -> None:
    volumes = torch.randn(2, 3, 4, 5, 6)
    slices = volume_to_slices(volumes, slice_axis)
    n_slices = volumes.shape[2 + slice_axis]
    assert slices.shape[0] == 2 * n_slices
    assert torch.equal(slices[n_slices + 1], volumes[1].select(1 + slice_axis, 1))
    assert torch.equal(slices_to_volume(slices, 2, slice_axis), volumes)


def test_2d_net_runs_on_slices_of_a_volume() -> None:
    model = _tiny("unet2d", in_channels=2, slice_axis=1).train()
    volumes = torch.randn(2, 2, 32, 3, 48)
    slices = volume_to_slices(volumes, model.config.slice_axis)
    assert slices.shape == (6, 2, 32, 48)
    y = model(slices)
    assert y.shape == (6, 1, 32, 48)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert slices_to_volume(y, 2, 1).shape == (2, 1, 32, 3, 48)


def test_2d_input_errors_name_the_shape() -> None:
    model = _tiny("unet2d")
    with pytest.raises(ValueError, match=r"multiples of 16.*shape \(1, 1, 32, 40\)"):
        model(torch.zeros(1, 1, 32, 40))
    with pytest.raises(InputError, match=r"\(B, C, H, W\).*shape \(1, 1, 32, 32, 32\)"):
        model(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(InputError, match=r"invalid slice axis.*found 3"):
        volume_to_slices(torch.zeros(1, 1, 4, 4, 4), 3)


# --- sliding window -----------------------------------------------------------------------


def test_single_window_equals_one_forward() -> None:
    model = _tiny(in_channels=2).eval()
    volume = torch.randn(2, 32, 32, 32)
    with torch.no_grad():
        expected = model(volume[None])[0]
    for blend in ("gaussian", "constant"):
        got = sliding_window_logits(model, volume, roi=(32, 32, 32), overlap=0.25, blend=blend)
        assert got.shape == (1, 32, 32, 32) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_small_volume_is_padded_centrally_with_per_channel_values() -> None:
    model = _tiny(in_channels=2).eval()
    volume = torch.randn(2, 20, 32, 27)
    padded = torch.empty(1, 2, 32, 32, 32)
    padded[:, 0], padded[:, 1] = 0.5, -1.0
    padded[0, :, 6:26, :, 2:29] = volume  # (32 - 20) // 2 = 6, (32 - 27) // 2 = 2
    with torch.no_grad():
        expected = model(padded)[0, :, 6:26, :, 2:29]
    got = sliding_window_logits(model, volume, roi=(32, 32, 32), pad_value=(0.5, -1.0))
    assert got.shape == (1, 20, 32, 27)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_affine_model_is_reconstructed_exactly(blend: str, overlap: float) -> None:
    volume = torch.randn(1, 37, 20, 45)  # odd sides; 20 < roi side 24 is padded
    got = sliding_window_logits(
        _Identity3d(2.0, -3.0), volume, roi=(16, 24, 16), overlap=overlap, batch=3, blend=blend
    )
    torch.testing.assert_close(got, 2.0 * volume - 3.0, rtol=1e-5, atol=1e-5)


def test_blending_weights_are_constant_or_gaussian() -> None:
    # Two windows along D (starts 0 and 8); window means are 7.5 and 15.5 on an index ramp.
    volume = torch.arange(24, dtype=torch.float32).view(1, 24, 1, 1).expand(1, 24, 8, 8).contiguous()
    constant = sliding_window_logits(_WindowMean(), volume, roi=(16, 8, 8), overlap=0.5, blend="constant")
    expected = torch.tensor([7.5] * 8 + [11.5] * 8 + [15.5] * 8)
    torch.testing.assert_close(constant[0, :, 3, 5], expected, rtol=0, atol=1e-5)

    gaussian = sliding_window_logits(_WindowMean(), volume, roi=(16, 8, 8), overlap=0.5, batch=2)

    def g(position: int) -> float:  # sigma = 16 / 8, centre 7.5
        return math.exp(-0.5 * ((position - 7.5) / 2.0) ** 2)

    for d in range(8, 16):
        blended = (7.5 * g(d) + 15.5 * g(d - 8)) / (g(d) + g(d - 8))
        assert gaussian[0, d, 2, 2].item() == pytest.approx(blended, abs=1e-4)
    torch.testing.assert_close(gaussian[0, :8], constant[0, :8], rtol=0, atol=1e-5)
    assert abs(gaussian[0, 10, 0, 0].item() - 11.5) > 1.0


def test_window_layout_and_batching() -> None:
    recorder = _Recorder()
    volume = torch.randn(1, 37, 16, 16)
    got = sliding_window_logits(recorder, volume, roi=(16, 16, 16), overlap=0.25, batch=2, blend="constant")
    # step floor(16 * 0.75) = 12 -> ceil((37 - 16) / 12) + 1 = 3 windows, spread over 0..21.
    assert recorder.calls == [(2, 1, 16, 16, 16), (1, 1, 16, 16, 16)]
    torch.testing.assert_close(got, volume, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"volume": torch.zeros(1, 1, 16, 16, 16)},
            r"expected a float tensor \(C, D, H, W\).*\(1, 1, 16, 16, 16\)",
        ),
        ({"volume": torch.zeros(1, 16, 16, 16, dtype=torch.int64)}, r"dtype torch.int64"),
        ({"roi": (16, 16)}, r"invalid roi.*found \(16, 16\)"),
        ({"overlap": 1.0}, r"invalid overlap.*found 1.0"),
        ({"batch": 0}, r"invalid batch size.*found 0"),
        ({"blend": "cosine"}, r"invalid blend.*found 'cosine'"),
        ({"pad_value": (0.0, 1.0)}, r"pad_value.*expected one float or 1.*found 2 values"),
    ],
)
def test_sliding_window_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"volume": torch.zeros(1, 16, 16, 16), "roi": (16, 16, 16)} | kwargs
    with pytest.raises(InputError, match=match):
        sliding_window_logits(_Identity3d(), **args)  # type: ignore[arg-type]


def test_sliding_window_rejects_a_model_that_changes_the_size() -> None:
    model = nn.Conv3d(1, 1, 3)  # no padding: 16 -> 14
    with pytest.raises(ModelFormatError, match=r"expected logits \(1, O, 16, 16, 16\).*\(1, 1, 14, 14, 14\)"):
        sliding_window_logits(model, torch.zeros(1, 16, 16, 16), roi=(16, 16, 16))


# --- slice-wise ---------------------------------------------------------------------------


class _PaddedIdentity2d(nn.Module):
    """Identity 2D model that insists on sides divisible by its size_divisor."""

    size_divisor = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % 8 or x.shape[3] % 8:
            raise AssertionError(f"unpadded slice {tuple(x.shape)}")
        return 3.0 * x[:, 1:2]


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slicewise_reconstructs_with_padding_and_crop(slice_axis: int) -> None:
    volume = torch.randn(2, 5, 9, 13)
    got = slicewise_logits(_PaddedIdentity2d(), volume, slice_axis, batch=4, pad_value=(0.0, 7.0))
    assert got.shape == (1, 5, 9, 13)
    torch.testing.assert_close(got, 3.0 * volume[1:2], rtol=0, atol=1e-6)


def test_slicewise_matches_per_slice_forward_of_a_2d_unet() -> None:
    model = _tiny("unet2d").eval()
    volume = torch.randn(1, 32, 3, 16)
    got = slicewise_logits(model, volume, slice_axis=1, batch=2)
    with torch.no_grad():
        expected = torch.stack([model(volume[None, :, :, j, :])[0] for j in range(3)], dim=2)
    assert got.shape == (1, 32, 3, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_slicewise_rejects_bad_arguments() -> None:
    with pytest.raises(InputError, match=r"invalid slice axis.*found -1"):
        slicewise_logits(_PaddedIdentity2d(), torch.zeros(2, 4, 4, 4), -1)
    with pytest.raises(InputError, match=r"expected a float tensor \(C, D, H, W\).*shape \(4, 4, 4\)"):
        slicewise_logits(_PaddedIdentity2d(), torch.zeros(4, 4, 4), 0)
