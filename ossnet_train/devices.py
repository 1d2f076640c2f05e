"""Where and in which precision training and validation run: the device, autocast and eval mode.

:func:`resolve_device` turns ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a
``torch.device``; :func:`autocast_dtype` picks the autocast dtype (bf16 where the GPU has it, else
fp16; none on CPU); :func:`autocast` applies it; :func:`evaluation_mode` is eval mode + no grad
for a block. Shared by the training loop (:mod:`ossnet_train.train`), the training step
(:func:`ossnet_train.losses.step_loss`, which the batch planner's probe runs too) and validation
(:mod:`ossnet_train.validate`), so none of them imports another for these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ossnet_deploy.errors import DependencyError, InputError, describe

__all__ = ["autocast", "autocast_dtype", "evaluation_mode", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DependencyError: CUDA asked for but not available.
        InputError: an unknown device name.
    """
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DependencyError(describe(None, f"device {name!r} asked for but CUDA is not available",
                                           expected="a CUDA build of torch and a visible GPU",
                                           found=f"torch {torch.__version__} without usable CUDA",
                                           fix="install a CUDA build of torch (see pytorch.org), or pass --device cpu"))
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DependencyError(describe(None, f"no GPU {device.index}", expected=f"an index below {torch.cuda.device_count()}",
                                           found=name, fix="pick a listed GPU (nvidia-smi)"))
        return device
    raise InputError(describe(None, "unknown device", expected="auto, cpu, cuda or cuda:N", found=repr(name)))


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 autocast where the GPU supports it (no loss scaling needed), else fp16; None on CPU."""
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` on CUDA with ``dtype``; a no-op on CPU or with ``dtype=None`` (fp32)."""
    if device.type != "cuda" or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (running BN statistics) and no grad for the block; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
