"""An :class:`~ossnet_train.model.OSSNet` in PyTorch as the runtime pipeline's pair runner.

Training validation, export verification and the benchmarks' eager program segment a volume
with ``ossnet_deploy.pipeline`` exactly as the runtime does; only the model behind
``encode`` / ``decoder`` differs (PyTorch modules here, ONNX graphs there), so validation equals
deployment by construction (docs/design.md#one-pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ossnet_deploy.metadata import COORDS, PATCHES
from ossnet_deploy.pipeline import DecoderRun, Encoding
from ossnet_train.devices import autocast
from ossnet_train.model import OSSNet

__all__ = ["TorchPair"]


class TorchPair:
    """``model.encode`` / ``model.decode`` behind the pipeline's ``PairRunner`` interface.

    Every call runs under ``torch.no_grad``; put the model in eval mode first (running
    normalisation statistics), e.g. with :func:`ossnet_train.devices.evaluation_mode`. Outputs
    come back as float32 numpy arrays on the CPU.

    Args:
        model: the OSS-Net.
        device: where the model's weights are.
        amp_dtype: autocast dtype on CUDA (None: float32).
    """

    def __init__(self, model: OSSNet, *, device: torch.device | None = None,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.device = torch.device("cpu") if device is None else device
        self.amp_dtype = amp_dtype
        self.uses_patches = bool(model.config.uses_patches)

    def encode(self, volume: np.ndarray) -> Encoding:
        """``volume`` ``(1, C, Dg, Hg, Wg)`` float32 -> latent ``(1, K, L)`` (+ coarse logits for C/D)."""
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            encoded = self.model.encode(torch.from_numpy(np.ascontiguousarray(volume)).to(self.device))
        coarse = None if encoded.coarse_logits is None else _numpy(encoded.coarse_logits)
        return Encoding(_numpy(encoded.latent), coarse)

    def decoder(self, latent: np.ndarray) -> DecoderRun:
        """``model.decode`` with ``latent`` ``(1, K, L)`` moved to the device once."""
        bound = torch.from_numpy(np.ascontiguousarray(latent, dtype=np.float32)).to(self.device)

        def logits(feed: Mapping[str, np.ndarray]) -> np.ndarray:
            coords = torch.from_numpy(feed[COORDS]).to(self.device)
            patches = torch.from_numpy(feed[PATCHES]).to(self.device) if PATCHES in feed else None
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                out = self.model.decode(coords, patches, bound)
            return _numpy(out).reshape(-1)

        return logits


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
