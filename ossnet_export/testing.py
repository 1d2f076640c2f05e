"""Helpers that keep tests honest: weights that untrained models do not have.

A fresh OSS-Net has zero CBN conditioning weights and default normalisation statistics, so its
logits hardly depend on the latent or on per-query inputs, and a broken path would pass any
parity test. :func:`perturb_` perturbs every parameter and statistic (seeded) and
:func:`calibrate_` sets the normalisation statistics to a phantom's activations, as after
training. Used by the export tests (``tests/export/conftest.py``), the golden-file generator
(``tests/data/make_tiny_pair.py``) and ``benchmarks/gpu_smoke.py``; the export itself never calls
them. The production check that a decoder uses every input is
:func:`ossnet_export.verify.decoder_sensitivity`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ossnet_deploy.metadata import COORDS, PATCHES
from ossnet_deploy.preprocess import PreprocessConfig, encoder_input
from ossnet_export.verify import VerificationCase, decoder_feed
from ossnet_train.config import ModelConfig

__all__ = ["calibrate_", "perturb_"]

_NORM_STAT_MEAN = "running_mean"
_NORM_STAT_VAR = "running_var"
_PAU_COEFFICIENTS = ("numerator", "denominator")


def calibrate_(model: nn.Module, case: VerificationCase, preprocess: PreprocessConfig) -> nn.Module:
    """Set every normalisation's running statistics to those of the phantom's activations.

    One training-mode forward pass (no gradients) over the case's volume and its largest query
    set, with cumulative averaging (``momentum=None``) so the statistics are exactly that
    batch's; then back to eval mode. As after training, normalised features then have unit
    variance, so per-query inputs (coordinates, patches) move the logits as much as the latent
    does, instead of being damped by statistics that do not match the activations.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    idx = max(case.queries, key=len)
    config: ModelConfig = model.config
    feed = decoder_feed(case.prepared, idx, config, preprocess, np.zeros((1, 1, 1), dtype=np.float32))
    volume = torch.from_numpy(np.ascontiguousarray(encoder_input(case.prepared)))
    patches = torch.from_numpy(feed[PATCHES])[None] if PATCHES in feed else None
    try:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.reset_running_stats()
            norm.momentum = None
            del momentum
        model.train()
        with torch.no_grad():
            model(volume, torch.from_numpy(feed[COORDS])[None], patches)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()
    return model


def perturb_(
    model: nn.Module, *, seed: int = 0, scale: float = 0.1, calibrate: tuple[VerificationCase, PreprocessConfig] | None = None
) -> nn.Module:
    """Perturb every parameter and normalisation statistic in place (seeded); returns ``model``.

    A fresh OSS-Net has zero CBN conditioning weights, so its logits hardly depend on the latent
    and a broken latent path would pass any parity test. After this, every non-zero weight is
    ``w + scale * rms(w) * n``; all-zero tensors (the CBN conditioning) get ``n / sqrt(fan_in)``,
    the magnitude of a default initialisation, so the latent really conditions the decoder;
    PAU coefficients become ``c * (1 + scale * n)``. With ``calibrate = (case, preprocess)`` the
    normalisation statistics are then set by :func:`calibrate_`. Last, running means become
    ``m + scale * n`` and running variances ``v * exp(scale * n)`` (positive). ``n`` is standard
    normal from ``seed``; integer buffers (``num_batches_tracked``) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    state = sorted(model.state_dict(keep_vars=True).items())
    with torch.no_grad():
        for name, tensor in state:
            leaf = name.rsplit(".", 1)[-1]
            if not tensor.is_floating_point() or leaf in (_NORM_STAT_MEAN, _NORM_STAT_VAR):
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if leaf in _PAU_COEFFICIENTS:
                tensor.mul_(1.0 + scale * noise)
                continue
            rms = float(tensor.pow(2).mean().sqrt()) if tensor.numel() else 0.0
            if rms == 0.0:
                fan_in = math.prod(tensor.shape[1:]) if tensor.dim() > 1 else 1
                tensor.add_(noise / math.sqrt(fan_in))
            else:
                tensor.add_(scale * rms * noise)
    if calibrate is not None:
        calibrate_(model, *calibrate)
    with torch.no_grad():
        for name, tensor in state:
            leaf = name.rsplit(".", 1)[-1]
            if leaf == _NORM_STAT_VAR:
                tensor.mul_(torch.exp(scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)))
            elif leaf == _NORM_STAT_MEAN:
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
    return model.eval()
