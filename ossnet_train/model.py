"""The OSS-Net model: one definition for training, validation and ONNX export.

``encode`` and ``decode`` have exactly the signatures of the exported encoder and decoder graphs
(docs/design.md#model-io); ``forward`` composes them for training over a batch of volumes.
The exporter wraps these methods (references to the same modules, never copies).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ossnet_train.config import PATCH_FEATURES, PATCH_SIZE, ModelConfig
from ossnet_train.decoder import Decoder
from ossnet_train.encoder import EncoderOutput, PatchEncoder, PlainEncoder, SkipEncoder

__all__ = ["OSSNet", "OSSNetOutput"]


class OSSNetOutput(NamedTuple):
    """Training output for B volumes of N queries each.

    logits: ``(B, N, 1)`` float32 occupancy logits (probability = sigmoid; threshold logit 0).
    coarse_logits: ``(B, 1, d, h, w)`` float32 logits of the coarse segmentation (C, D), else None.
    """

    logits: torch.Tensor
    coarse_logits: torch.Tensor | None


class OSSNet(nn.Module):
    """OSS-Net variant O-Net, A, B, C or D at the sizes of a :class:`ModelConfig`.

    Submodules: ``encoder`` (:class:`PlainEncoder` or :class:`SkipEncoder`), ``patch_encoder``
    (:class:`PatchEncoder`, None for O-Net) and ``decoder`` (:class:`Decoder`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.skip_encoder:
            self.encoder: nn.Module = SkipEncoder(
                config.encoder_channels, config.latent_channels, aux_head=config.aux_head
            )
        else:
            self.encoder = PlainEncoder(config.encoder_channels)
        self.patch_encoder = PatchEncoder(config.patch_channels) if config.uses_patches else None
        point_features = 3 + (PATCH_FEATURES if config.uses_patches else 0)
        self.decoder = Decoder(
            point_features, config.latent_size, config.latent_channels, config.decoder_width, config.decoder_blocks
        )

    def encode(self, volume: torch.Tensor) -> EncoderOutput:
        """Global volume ``(B, C, Dg, Hg, Wg)`` float32 (B = 1 in the exported graph) -> :class:`EncoderOutput`.

        ``latent`` ``(B, K, L)``; ``coarse_logits`` ``(B, 1, d, h, w)`` for C and D, else None.
        """
        return self.encoder(volume)

    def decode(self, coords: torch.Tensor, patches: torch.Tensor | None, latent: torch.Tensor) -> torch.Tensor:
        """Logits of N queries of one volume.

        Args:
            coords: ``(N, 3)`` float32 decoder coordinates ``(2 * idx + 1) / grid_shape - 1``,
                order ``(i, j, k)``.
            patches: ``(N, C_p, 7, 7, 7)`` float32 local patches (small, then pooled large on the
                channel axis), or None for O-Net.
            latent: ``(1, K, L)`` float32 from :meth:`encode`.

        Returns:
            ``(N, 1)`` float32 logits.
        """
        self._check_patches(patches, leading=1)
        points = coords.unsqueeze(0)
        if self.patch_encoder is not None and patches is not None:
            points = torch.cat([points, self.patch_encoder(patches).unsqueeze(0)], dim=-1)
        return self.decoder(points, latent)[0]

    def forward(
        self, volume: torch.Tensor, coords: torch.Tensor, patches: torch.Tensor | None = None
    ) -> OSSNetOutput:
        """Training pass over B volumes with N queries each.

        Args:
            volume: ``(B, C, Dg, Hg, Wg)`` float32 global volumes.
            coords: ``(B, N, 3)`` float32 decoder coordinates (as in :meth:`decode`).
            patches: ``(B, N, C_p, 7, 7, 7)`` float32, or None for O-Net.

        Returns:
            :class:`OSSNetOutput` with logits ``(B, N, 1)``; the latent of volume b conditions only
            its own queries; CBN training statistics are over all ``B * N`` queries.
        """
        self._check_patches(patches, leading=2)
        encoded = self.encode(volume)
        points = coords
        if self.patch_encoder is not None and patches is not None:
            batch, queries = patches.shape[:2]
            features = self.patch_encoder(patches.flatten(0, 1))
            points = torch.cat([coords, features.view(batch, queries, PATCH_FEATURES)], dim=-1)
        return OSSNetOutput(self.decoder(points, encoded.latent), encoded.coarse_logits)

    def _check_patches(self, patches: torch.Tensor | None, *, leading: int) -> None:
        """Patches must be given exactly when the variant uses them, with C_p channels of 7^3."""
        cfg = self.config
        if not cfg.uses_patches:
            if patches is not None:
                raise ValueError(f"{cfg.display_name} takes no patches; pass patches=None")
            return
        expected = (cfg.patch_channels, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
        if patches is None:
            raise ValueError(f"{cfg.display_name} needs patches of shape (..., {', '.join(map(str, expected))})")
        if patches.dim() != leading + 4 or tuple(patches.shape[leading:]) != expected:
            raise ValueError(
                f"{cfg.display_name} expects patches {'(N' if leading == 1 else '(B, N'}, "
                f"{', '.join(map(str, expected))}), got {tuple(patches.shape)}"
            )
