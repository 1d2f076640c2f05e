"""Whole-volume inference for the U-Net baselines: 3D sliding windows and 2D slice stacks.

Used by the baselines' validation (whole-volume Dice) and by the benchmarks.

``sliding_window_logits`` tiles the volume with ``roi``-sized windows laid out per axis
(the Cartesian product of per-axis start positions), runs the model on batches of windows
and blends overlapping predictions as a weighted mean. Blending is ``"gaussian"`` by
default: a window's prediction is weighted by ``exp(-d^2 / (2 sigma^2))`` with
``sigma = roi / 8`` per axis (``d`` = distance from the window centre, in voxels), because
voxels near a window's border see less context and are predicted worse. ``"constant"``
(plain mean; MONAI's default) is available for like-for-like comparisons.

Memory: one output buffer ``(O, D, H, W)`` float32 on the volume's device, plus one
``roi``-sized weight window. The normaliser (sum of weights at each voxel) is not stored as a
volume: both the window layout and the weight window are separable per axis, so the sum of
weights at ``(d, h, w)`` is ``n_D(d) * n_H(h) * n_W(w)``, three 1D arrays.

Neither function changes the model's train/eval mode: call ``model.eval()`` first.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ossnet_deploy.errors import InputError, ModelFormatError, describe

from .unet import check_slice_axis

__all__ = ["BLENDS", "slicewise_logits", "sliding_window_logits"]

#: Accepted values of ``blend``.
BLENDS = ("gaussian", "constant")
# sigma = roi * this, as in nnU-Net and MONAI's gaussian mode: a window's corner then weighs
# exp(-8) per axis of its centre, small but never zero.
_SIGMA_SCALE = 0.125


@dataclass(frozen=True)
class _Span:
    """One window position along one axis: volume ``[src_start, src_stop)`` <-> window ``[win_start, win_stop)``."""

    src_start: int
    src_stop: int
    win_start: int
    win_stop: int


def _axis_spans(size: int, roi: int, overlap: float) -> list[_Span]:
    """Window positions along one axis, spread evenly from 0 to ``size - roi``.

    A side shorter than ``roi`` gets one window with the volume centred in it (the rest is padding).
    """
    if size <= roi:
        before = (roi - size) // 2
        return [_Span(0, size, before, before + size)]
    step = max(1, int(roi * (1.0 - overlap)))
    count = math.ceil((size - roi) / step) + 1
    starts = sorted({round(i * (size - roi) / (count - 1)) for i in range(count)})
    return [_Span(s, s + roi, 0, roi) for s in starts]


def _window_weights_1d(roi: int, blend: str) -> torch.Tensor:
    """``(roi,)`` float64 weights of one window along one axis (peak 1)."""
    if blend == "constant":
        return torch.ones(roi, dtype=torch.float64)
    sigma = _SIGMA_SCALE * roi
    positions = torch.arange(roi, dtype=torch.float64) - (roi - 1) / 2.0
    return torch.exp(-0.5 * (positions / sigma) ** 2)


def _pad_centred(windows: torch.Tensor, shape: Sequence[int], pad_value: torch.Tensor) -> torch.Tensor:
    """``(N, C, *s)`` -> ``(N, C, *shape)`` with the data centred; the rest is ``pad_value[c]`` per channel."""
    if tuple(windows.shape[2:]) == tuple(shape):
        return windows
    n, c = windows.shape[:2]
    fill = pad_value.to(device=windows.device, dtype=windows.dtype).view(1, c, *([1] * len(shape)))
    out = fill.expand(n, c, *shape).clone()
    region = tuple(
        slice((t - s) // 2, (t - s) // 2 + s) for t, s in zip(shape, windows.shape[2:], strict=True)
    )
    out[(slice(None), slice(None), *region)] = windows
    return out


def _pad_values(pad_value: float | Sequence[float], channels: int) -> torch.Tensor:
    values = (
        [float(pad_value)] * channels if isinstance(pad_value, int | float) else [float(v) for v in pad_value]
    )
    if len(values) != channels:
        raise InputError(
            describe(
                None,
                "pad_value does not match the volume's channels",
                expected=f"one float or {channels}",
                found=f"{len(values)} values",
                fix="pass each channel's normalised background value",
            )
        )
    return torch.tensor(values, dtype=torch.float32)


def _check_volume(volume: object) -> torch.Tensor:
    if not isinstance(volume, torch.Tensor) or volume.ndim != 4 or not volume.is_floating_point():
        found = (
            f"{type(volume).__name__} of shape {tuple(volume.shape)}, dtype {volume.dtype}"
            if isinstance(volume, torch.Tensor)
            else type(volume).__name__
        )
        raise InputError(
            describe(
                None,
                "volume for whole-volume inference has the wrong type or shape",
                expected="a float tensor (C, D, H, W)",
                found=found,
                fix="pass one normalised volume, channels first, without the batch axis",
            )
        )
    if min(volume.shape) < 1:
        raise InputError(
            describe(
                None,
                "volume is empty",
                expected="every axis >= 1",
                found=f"shape {tuple(volume.shape)}",
                fix="pass a non-empty volume",
            )
        )
    return volume


def _check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(
            describe(
                None,
                "invalid batch size",
                expected="an int >= 1",
                found=repr(batch),
                fix="pass how many windows or slices to run per model call",
            )
        )


def _check_roi(roi: Sequence[int]) -> tuple[int, int, int]:
    sides = tuple(roi) if isinstance(roi, Sequence) else ()
    if len(sides) != 3 or not all(
        isinstance(r, numbers.Integral) and not isinstance(r, bool) and r >= 1 for r in sides
    ):
        raise InputError(
            describe(
                None,
                "invalid roi",
                expected="three positive ints (rd, rh, rw)",
                found=repr(roi),
                fix="pass the window size in voxels",
            )
        )
    return (int(sides[0]), int(sides[1]), int(sides[2]))


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else fallback


def _check_output(logits: torch.Tensor, expected_lead: int, spatial: Sequence[int], what: str) -> None:
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != 2 + len(spatial)
        or logits.shape[0] != expected_lead
        or (tuple(logits.shape[2:]) != tuple(spatial))
    ):
        found = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelFormatError(
            describe(
                None,
                f"model output does not match its {what}",
                expected=f"logits ({expected_lead}, O, {', '.join(map(str, spatial))})",
                found=found,
                fix="use a model that keeps the spatial size (e.g. a ResidualUNet)",
            )
        )


def sliding_window_logits(
    model: nn.Module,
    volume: torch.Tensor,
    roi: Sequence[int] = (128, 128, 128),
    overlap: float = 0.25,
    batch: int = 1,
    *,
    blend: str = "gaussian",
    pad_value: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Logits of a 3D dense model over a whole volume, by blended sliding windows.

    model: maps ``(b, C, *roi)`` to logits ``(b, O, *roi)``; windows are moved to the device of
        its first parameter, results back to ``volume``'s device.
    volume: ``(C, D, H, W)`` float tensor (normalised, channels first, axes ``(i, j, k)``).
    roi: window size ``(rd, rh, rw)`` in voxels; each side must suit the model (multiples of
        ``model.size_divisor`` for :class:`~ossnet_train.unet.ResidualUNet`).
    overlap: fraction of ``roi`` shared by neighbouring windows, in ``[0, 1)``; the step is
        ``floor(roi * (1 - overlap))`` at most, positions are spread evenly so the last window
        ends at the volume's edge.
    batch: windows per model call.
    blend: ``"gaussian"`` (default) or ``"constant"``; see the module docstring.
    pad_value: value (one, or one per channel) for the padding of sides shorter than ``roi``;
        use each channel's normalised background (the preset's padding value).

    Returns ``(O, D, H, W)`` float32 logits on ``volume``'s device (``O = 1`` for the baselines).
    Runs under ``torch.no_grad`` (not inference mode, so the result stays an ordinary tensor).
    """
    volume = _check_volume(volume)
    _check_batch(batch)
    roi_t = _check_roi(roi)
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0.0 <= overlap < 1.0:
        raise InputError(
            describe(
                None,
                "invalid overlap",
                expected="a number in [0, 1)",
                found=repr(overlap),
                fix="pass the fraction of a window that neighbours share, e.g. 0.25",
            )
        )
    if blend not in BLENDS:
        raise InputError(
            describe(
                None,
                "invalid blend",
                expected=f"one of {list(BLENDS)}",
                found=repr(blend),
                fix="choose 'gaussian' or 'constant'",
            )
        )
    channels, *spatial = volume.shape
    pads = _pad_values(pad_value, channels)
    spans = [_axis_spans(size, r, float(overlap)) for size, r in zip(spatial, roi_t, strict=True)]
    weights_1d = [_window_weights_1d(r, blend) for r in roi_t]
    # Per-axis sums of window weights; their outer product is the blend normaliser.
    norms = []
    for size, axis_spans, w in zip(spatial, spans, weights_1d, strict=True):
        total = torch.zeros(size, dtype=torch.float64)
        for sp in axis_spans:
            total[sp.src_start : sp.src_stop] += w[sp.win_start : sp.win_stop]
        norms.append(total.to(torch.float32))

    device = _model_device(model, volume.device)
    window_weight = None
    if blend != "constant":
        wd, wh, ww = (w.to(torch.float32) for w in weights_1d)
        window_weight = (wd[:, None, None] * wh[None, :, None] * ww[None, None, :]).to(device)

    out: torch.Tensor | None = None
    with torch.no_grad():
        for group in _batched(itertools.product(*spans), batch):
            windows = torch.stack(
                [
                    _pad_centred(
                        volume[(slice(None), *(slice(s.src_start, s.src_stop) for s in spans_3))][None],
                        roi_t,
                        pads,
                    )[0]
                    for spans_3 in group
                ]
            ).to(device)
            logits = model(windows)
            _check_output(logits, len(group), roi_t, "window")
            logits = logits.float()
            if window_weight is not None:
                logits = logits * window_weight
            logits = logits.to(volume.device)
            if out is None:
                out = torch.zeros((logits.shape[1], *spatial), dtype=torch.float32, device=volume.device)
            for k, spans_3 in enumerate(group):
                dst = (slice(None), *(slice(s.src_start, s.src_stop) for s in spans_3))
                src = (slice(None), *(slice(s.win_start, s.win_stop) for s in spans_3))
                out[dst] += logits[k][src]
        assert out is not None  # at least one window always exists: every span list is non-empty
        n_d, n_h, n_w = (n.to(volume.device) for n in norms)
        out /= n_d[:, None, None]
        out /= n_h[None, :, None]
        out /= n_w[None, None, :]
    return out


def slicewise_logits(
    model: nn.Module,
    volume: torch.Tensor,
    slice_axis: int,
    batch: int = 8,
    *,
    pad_value: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Logits of a 2D model over a whole volume, slice by slice along ``slice_axis``.

    model: maps ``(b, C, P, Q)`` to logits ``(b, O, P, Q)``. When it has ``size_divisor``
        (:class:`~ossnet_train.unet.ResidualUNet`), slices are padded centrally up to
        multiples of it with ``pad_value`` and the logits cropped back.
    volume: ``(C, D, H, W)`` float tensor; ``slice_axis`` 0, 1 or 2 picks D, H or W as the
        axis slices are taken along (``(P, Q)`` = the other two, in order).
    batch: slices per model call.

    Returns ``(O, D, H, W)`` float32 logits on ``volume``'s device. Runs under ``torch.no_grad``.
    """
    volume = _check_volume(volume)
    _check_batch(batch)
    check_slice_axis(slice_axis)
    # A view with volume_to_slices' layout, (S, C, P, Q), so that no copy of the volume is made.
    slices = volume.movedim(1 + slice_axis, 0)
    plane = tuple(slices.shape[2:])
    divisor = int(getattr(model, "size_divisor", 1))
    padded = tuple(math.ceil(s / divisor) * divisor for s in plane)
    crop = tuple(slice((p - s) // 2, (p - s) // 2 + s) for p, s in zip(padded, plane, strict=True))
    pads = _pad_values(pad_value, volume.shape[0])
    device = _model_device(model, volume.device)

    out: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, slices.shape[0], batch):
            chunk = _pad_centred(slices[start : start + batch], padded, pads).to(device)
            logits = model(chunk)
            _check_output(logits, chunk.shape[0], padded, "slices")
            if out is None:
                out = torch.zeros(
                    (logits.shape[1], *volume.shape[1:]), dtype=torch.float32, device=volume.device
                )
            out.movedim(1 + slice_axis, 0)[start : start + chunk.shape[0]] = logits[
                (slice(None), slice(None), *crop)
            ].to(volume.device)
    assert out is not None  # a non-empty volume has at least one slice
    return out


def _batched(items: Iterator[tuple[_Span, ...]], size: int) -> Iterator[list[tuple[_Span, ...]]]:
    group: list[tuple[_Span, ...]] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
