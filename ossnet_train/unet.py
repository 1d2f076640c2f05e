"""Residual U-Net baselines: the 3D voxel-wise net and the 2D slice-wise net.

The OSS-Net paper compares against a "3D residual U-Net" (dense voxel prediction) and a
"2D residual U-Net" (slice by slice) whose code was never published. Ours follow the
structure of MONAI's ``UNet`` with ``channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
num_res_units=2``, the peer we are benchmarked against, so that parameter count, FLOPs and
activation memory are the same (``docs/unet.md`` gives the layer plan and the counts).
Two deliberate differences, neither of which changes the compute:

* convolutions followed by a normalisation carry no bias (the normalisation subtracts the
  mean, so such a bias is cancelled and is dead weight);
* the top transposed convolution, which produces the ``out_channels`` logit map, is not
  normalised: an instance norm over a one-channel logit map would standardise every window's
  logits to zero mean and unit variance, so a window without foreground could not be
  uniformly negative.

Tensors are channels first: 3D input ``(B, C, D, H, W)`` float32, where ``(D, H, W)`` are the
canonical ``(i, j, k)`` axes of the padded grid; 2D input ``(B, C, H, W)``. Output: logits
``(B, out_channels, *spatial)`` float32 at the input's resolution (probability = sigmoid,
decision threshold logit 0). Each spatial side must be divisible by ``prod(strides)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ossnet_deploy.errors import InputError, ModelFormatError, describe

__all__ = [
    "ARCHITECTURES",
    "ResidualUNet",
    "ResidualUnit",
    "UNetConfig",
    "build_unet",
    "check_slice_axis",
    "slices_to_volume",
    "volume_to_slices",
]

#: architecture name -> number of spatial dimensions the net convolves over.
ARCHITECTURES: dict[str, int] = {"unet3d": 3, "unet2d": 2}
_NORMS = ("instance", "batch")
_ACTIVATIONS = ("prelu", "relu", "leaky_relu")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a residual U-Net baseline (JSON-safe plain values).

    architecture: ``"unet3d"`` (input ``(B, C, D, H, W)``) or ``"unet2d"`` (input
        ``(B, C, H, W)``, slices of a volume taken along ``slice_axis``).
    in_channels / out_channels: image channels in, logit channels out (1 for binary).
    channels: feature channels per level, top to bottom; the last is the bottleneck.
    strides: downsampling stride of each level but the bottom (``len(channels) - 1`` ints);
        spatial sides must be divisible by their product (:attr:`size_divisor`).
    num_res_units: convolution subunits in each down-path residual unit (>= 1).
    norm: ``"instance"`` (no affine parameters) or ``"batch"``.
    activation: ``"prelu"`` (one learnt slope per layer), ``"relu"`` or ``"leaky_relu"`` (0.01).
    dropout: dropout probability after each normalisation, in ``[0, 1)``.
    slice_axis: for ``unet2d``, the volume axis (0, 1 or 2 of ``(i, j, k)``) along which slices
        are taken; the slice plane is made of the other two axes. Ignored by ``unet3d``.
    """

    architecture: str = "unet3d"
    in_channels: int = 1
    out_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "instance"
    activation: str = "prelu"
    dropout: float = 0.0
    slice_axis: int = 2

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ModelFormatError(
                describe(
                    None,
                    "invalid U-Net config",
                    expected="the constraints documented on UNetConfig",
                    found="; ".join(problems),
                    fix="correct the listed fields",
                )
            )

    @property
    def spatial_dims(self) -> int:
        """3 for ``unet3d``, 2 for ``unet2d``."""
        return ARCHITECTURES[self.architecture]

    @property
    def size_divisor(self) -> int:
        """Every spatial side of the input must be a multiple of this (product of strides)."""
        return math.prod(self.strides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists) holding every field."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["strides"] = list(self.strides)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> UNetConfig:
        """Inverse of :meth:`to_dict`; ``source`` (e.g. the checkpoint path) names the origin in errors.

        ``architecture`` is required; other missing fields take their defaults. Unknown fields,
        wrong types and invalid values raise :class:`ModelFormatError`.
        """
        if not isinstance(data, Mapping):
            raise ModelFormatError(
                describe(
                    source,
                    "U-Net config is not a mapping",
                    expected="a dict of fields",
                    found=type(data).__name__,
                    fix="store UNetConfig.to_dict() in the checkpoint",
                )
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFormatError(
                describe(
                    source,
                    "U-Net config has unknown fields",
                    expected=f"fields among {sorted(known)}",
                    found=str(unknown),
                    fix="remove them, or use a newer ossnet that knows them",
                )
            )
        if "architecture" not in data:
            raise ModelFormatError(
                describe(
                    source,
                    "U-Net config has no 'architecture'",
                    expected=f"one of {sorted(ARCHITECTURES)}",
                    found=str(sorted(data)),
                    fix="store UNetConfig.to_dict() in the checkpoint",
                )
            )
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, raw in data.items():
            value, problem = _coerce_field(name, raw)
            if problem:
                problems.append(problem)
            values[name] = value
        if problems:
            raise ModelFormatError(
                describe(
                    source,
                    "U-Net config has fields of the wrong type",
                    expected="plain JSON values",
                    found="; ".join(problems),
                    fix="store UNetConfig.to_dict() in the checkpoint",
                )
            )
        try:
            return cls(**values)
        except ModelFormatError as exc:
            if source is None:
                raise
            raise ModelFormatError(f"{source}: {exc}") from exc


_INT_FIELDS = ("in_channels", "out_channels", "num_res_units", "slice_axis")
_TUPLE_FIELDS = ("channels", "strides")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce_field(name: str, raw: object) -> tuple[object, str | None]:
    """JSON value -> field value; second item names the problem, if any."""
    if name in _TUPLE_FIELDS:
        if isinstance(raw, list | tuple) and all(_is_int(v) for v in raw):
            return tuple(raw), None
        return raw, f"{name}={raw!r} is not a list of ints"
    if name in _INT_FIELDS:
        return raw, None if _is_int(raw) else f"{name}={raw!r} is not an int"
    if name == "dropout":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw), None
        return raw, f"dropout={raw!r} is not a number"
    return raw, None if isinstance(raw, str) else f"{name}={raw!r} is not a string"


def _config_problems(cfg: UNetConfig) -> list[str]:
    problems: list[str] = []
    if not isinstance(cfg.architecture, str) or cfg.architecture not in ARCHITECTURES:
        problems.append(f"architecture={cfg.architecture!r} not in {sorted(ARCHITECTURES)}")
    for name in ("in_channels", "out_channels", "num_res_units"):
        value = getattr(cfg, name)
        if not _is_int(value) or value < 1:
            problems.append(f"{name}={value!r} is not an int >= 1")
    if (
        not isinstance(cfg.channels, tuple)
        or len(cfg.channels) < 2
        or not all(_is_int(c) and c >= 1 for c in cfg.channels)
    ):
        problems.append(f"channels={cfg.channels!r} is not a tuple of >= 2 positive ints")
    elif (
        not isinstance(cfg.strides, tuple)
        or len(cfg.strides) != len(cfg.channels) - 1
        or not all(_is_int(s) and s >= 1 for s in cfg.strides)
    ):
        problems.append(
            f"strides={cfg.strides!r} is not a tuple of {len(cfg.channels) - 1} positive ints "
            "(one per level above the bottom)"
        )
    if not isinstance(cfg.norm, str) or cfg.norm not in _NORMS:
        problems.append(f"norm={cfg.norm!r} not in {list(_NORMS)}")
    if not isinstance(cfg.activation, str) or cfg.activation not in _ACTIVATIONS:
        problems.append(f"activation={cfg.activation!r} not in {list(_ACTIVATIONS)}")
    if (
        isinstance(cfg.dropout, bool)
        or not isinstance(cfg.dropout, int | float)
        or not 0.0 <= cfg.dropout < 1.0
    ):
        problems.append(f"dropout={cfg.dropout!r} is not a number in [0, 1)")
    if not _is_int(cfg.slice_axis) or cfg.slice_axis not in (0, 1, 2):
        problems.append(f"slice_axis={cfg.slice_axis!r} not in (0, 1, 2)")
    return problems


# --- building blocks ----------------------------------------------------------------------


def _conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int, *, bias: bool) -> nn.Module:
    cls = nn.Conv3d if dims == 3 else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _norm_dropout_act(cfg: UNetConfig, channels: int, *, norm: bool = True) -> list[nn.Module]:
    """Norm -> dropout -> activation, MONAI's default "NDA" order."""
    dims = cfg.spatial_dims
    layers: list[nn.Module] = []
    if norm:
        if cfg.norm == "instance":
            layers.append((nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels))
        else:
            layers.append((nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels))
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    if cfg.activation == "prelu":
        layers.append(nn.PReLU())
    elif cfg.activation == "relu":
        layers.append(nn.ReLU(inplace=True))
    else:
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    return layers


class ResidualUnit(nn.Module):
    """``subunits`` x (conv k3 -> norm -> dropout -> act) plus a residual path, summed.

    The first conv carries the stride. The residual path is the identity when shape and
    channels are kept, a strided k3 conv when the stride is > 1, else a 1x1 conv.
    ``last_conv_only`` leaves the last conv bare (the logit layer at the top of the net).
    Input ``(B, c_in, *S)`` -> output ``(B, c_out, *S / stride)``.
    """

    def __init__(
        self,
        cfg: UNetConfig,
        c_in: int,
        c_out: int,
        stride: int,
        subunits: int,
        *,
        last_conv_only: bool = False,
    ) -> None:
        super().__init__()
        dims = cfg.spatial_dims
        layers: list[nn.Module] = []
        c, s = c_in, stride
        for index in range(subunits):
            bare = last_conv_only and index == subunits - 1
            layers.append(_conv(dims, c, c_out, 3, s, bias=bare))
            if not bare:
                layers.extend(_norm_dropout_act(cfg, c_out))
            c, s = c_out, 1
        self.conv = nn.Sequential(*layers)
        if stride != 1:
            self.residual: nn.Module = _conv(dims, c_in, c_out, 3, stride, bias=True)
        elif c_in != c_out:
            self.residual = _conv(dims, c_in, c_out, 1, 1, bias=True)
        else:
            self.residual = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class _UpLevel(nn.Module):
    """Transposed conv (k3, stride s, output exactly s x the input) [+ norm] + act, then a 1-subunit residual unit."""

    def __init__(self, cfg: UNetConfig, c_in: int, c_out: int, stride: int, *, is_top: bool) -> None:
        super().__init__()
        dims = cfg.spatial_dims
        cls = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.upsample = nn.Sequential(
            cls(c_in, c_out, 3, stride=stride, padding=1, output_padding=stride - 1, bias=is_top),
            *_norm_dropout_act(cfg, c_out, norm=not is_top),
        )
        self.refine = ResidualUnit(cfg, c_out, c_out, 1, 1, last_conv_only=is_top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.upsample(x))


class ResidualUNet(nn.Module):
    """The residual U-Net of ``config`` (3D for ``unet3d``, 2D for ``unet2d``).

    Level ``l`` (top ``l = 0``) downsamples with a residual unit of ``num_res_units`` subunits
    to ``channels[l]`` at stride ``strides[l]``; the bottom is a stride-1 residual unit to
    ``channels[-1]``. On the way up, level ``l`` concatenates its down output (first) with the
    features from below and upsamples back to ``channels[l - 1]`` (``out_channels`` at the top).

    ``forward``: ``(B, in_channels, *S)`` float32 -> logits ``(B, out_channels, *S)`` float32,
    ``S`` three sides (``unet3d``) or two (``unet2d``), each a multiple of ``size_divisor``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, st = config.channels, config.strides
        self.down = nn.ModuleList(
            ResidualUnit(
                config, config.in_channels if i == 0 else ch[i - 1], ch[i], st[i], config.num_res_units
            )
            for i in range(len(st))
        )
        self.bottom = ResidualUnit(config, ch[-2], ch[-1], 1, config.num_res_units)
        # up[i] serves level i; the deepest one receives the bottleneck's ch[-1] channels.
        self.up = nn.ModuleList(
            _UpLevel(
                config,
                ch[i] + (ch[-1] if i == len(st) - 1 else ch[i]),
                config.out_channels if i == 0 else ch[i - 1],
                st[i],
                is_top=i == 0,
            )
            for i in range(len(st))
        )

    @property
    def size_divisor(self) -> int:
        """Every spatial side of the input must be a multiple of this."""
        return self.config.size_divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        skips: list[torch.Tensor] = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.bottom(x)
        for up, skip in zip(reversed(self.up), reversed(skips), strict=True):
            x = up(torch.cat([skip, x], dim=1))
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        dims = cfg.spatial_dims
        layout = "(B, C, D, H, W)" if dims == 3 else "(B, C, H, W)"
        shape = tuple(x.shape)
        if x.ndim != dims + 2 or shape[1] != cfg.in_channels:
            raise InputError(
                describe(
                    None,
                    f"{cfg.architecture} input has the wrong shape",
                    expected=f"{layout} with C={cfg.in_channels}",
                    found=f"shape {shape}",
                    fix="pass a channels-first batch with the model's input channels",
                )
            )
        bad = [side for side in shape[2:] if side % cfg.size_divisor]
        if bad:
            raise InputError(
                describe(
                    None,
                    f"{cfg.architecture} input sides are not multiples of {cfg.size_divisor}",
                    expected=f"every spatial side divisible by {cfg.size_divisor} (product of strides)",
                    found=f"shape {shape}",
                    fix="pad the volume (sliding_window_logits / slicewise_logits pad for you)",
                )
            )


def build_unet(config: UNetConfig) -> ResidualUNet:
    """The model of ``config``; freshly initialised (PyTorch default init)."""
    return ResidualUNet(config)


# --- 2D slicing ---------------------------------------------------------------------------


def volume_to_slices(volumes: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """Batch of volumes ``(B, C, D, H, W)`` -> batch of 2D slices ``(B * S, C, P, Q)``.

    ``S`` is the size of spatial axis ``slice_axis`` (0 = D, 1 = H, 2 = W); ``(P, Q)`` are the
    other two spatial axes in their original order. Slices of volume ``b`` are rows
    ``b * S .. b * S + S - 1``. Returns a contiguous copy.
    """
    check_slice_axis(slice_axis)
    if volumes.ndim != 5:
        raise InputError(
            describe(
                None,
                "volumes to slice have the wrong rank",
                expected="(B, C, D, H, W)",
                found=f"shape {tuple(volumes.shape)}",
                fix="add the batch axis",
            )
        )
    moved = volumes.movedim(2 + slice_axis, 1)  # (B, S, C, P, Q)
    return moved.reshape(-1, *moved.shape[2:])


def slices_to_volume(slices: torch.Tensor, batch: int, slice_axis: int) -> torch.Tensor:
    """Inverse of :func:`volume_to_slices`: ``(B * S, C, P, Q)`` -> ``(B, C, D, H, W)`` (a view when possible)."""
    check_slice_axis(slice_axis)
    if slices.ndim != 4 or batch < 1 or slices.shape[0] % batch:
        raise InputError(
            describe(
                None,
                "slices do not form whole volumes",
                expected=f"(B * S, C, P, Q) with B={batch}",
                found=f"shape {tuple(slices.shape)}",
                fix="pass the batch size the slices came from",
            )
        )
    stacked = slices.reshape(batch, -1, *slices.shape[1:])  # (B, S, C, P, Q)
    return stacked.movedim(1, 2 + slice_axis)


def check_slice_axis(slice_axis: int) -> None:
    """Raise :class:`InputError` unless ``slice_axis`` is 0, 1 or 2."""
    if not _is_int(slice_axis) or slice_axis not in (0, 1, 2):
        raise InputError(
            describe(
                None,
                "invalid slice axis",
                expected="0, 1 or 2 (an axis of (D, H, W))",
                found=repr(slice_axis),
                fix="choose the axis the slices are taken along",
            )
        )
