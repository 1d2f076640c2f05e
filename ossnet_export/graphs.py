"""The two exported graphs as thin ``nn.Module`` wrappers around one OSS-Net.

The wrappers hold a *reference* to the model (its own encoder, patch encoder and decoder
modules, nothing copied) and call :meth:`OSSNet.encode` / :meth:`OSSNet.decode`, whose
signatures are the graphs' (docs/design.md#model-io). Only the tensor plumbing that the ONNX
signature needs lives here: the NamedTuple of ``encode`` becomes a tuple of outputs, and O-Net's
decoder has no ``patches`` input. Data-dependent steps (thresholding, the coarse-to-fine
schedule, patch cutting) stay outside the graphs, in ``ossnet_deploy``.

Input/output names and the dynamic query axis come from :mod:`ossnet_deploy.metadata`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ossnet_deploy.metadata import (
    COARSE_LOGITS,
    COORDS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    LATENT,
    NUM_QUERIES,
    PATCHES,
    ROLE_DECODER,
    ROLE_ENCODER,
    VOLUME,
    IOSpec,
    TensorSpec,
    decoder_input_names,
    encoder_output_names,
)
from ossnet_train.config import PATCH_SIZE, ModelConfig
from ossnet_train.model import OSSNet

__all__ = [
    "DecoderGraph",
    "EncoderGraph",
    "GraphSpec",
    "PatchlessDecoderGraph",
    "decoder_io",
    "encoder_io",
    "example_inputs",
    "graph_specs",
]


class EncoderGraph(nn.Module):
    """``volume (1, C, Dg, Hg, Wg) -> latent (1, K, L)[, coarse_logits (1, 1, d, h, w)]`` float32."""

    def __init__(self, model: OSSNet) -> None:
        super().__init__()
        self.model = model
        self.has_coarse = model.config.has_coarse

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.model.encode(volume)
        if self.has_coarse:
            if encoded.coarse_logits is None:
                raise RuntimeError(f"{self.model.config.display_name} returned no coarse_logits from encode()")
            return (encoded.latent, encoded.coarse_logits)
        return (encoded.latent,)


class DecoderGraph(nn.Module):
    """``coords (N, 3), patches (N, C_p, 7, 7, 7), latent (1, K, L) -> logits (N, 1)`` float32."""

    def __init__(self, model: OSSNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, coords: torch.Tensor, patches: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(coords, patches, latent)


class PatchlessDecoderGraph(nn.Module):
    """O-Net's decoder: ``coords (N, 3), latent (1, K, L) -> logits (N, 1)`` float32."""

    def __init__(self, model: OSSNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, coords: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(coords, None, latent)


def encoder_io(config: ModelConfig) -> IOSpec:
    """Names, dtypes and shapes of the encoder graph (static, batch 1)."""
    latent = TensorSpec(LATENT, "float32", (1, config.latent_channels, config.latent_size))
    outputs = [latent]
    if config.has_coarse:
        outputs.append(TensorSpec(COARSE_LOGITS, "float32", (1, 1, *config.latent_shape)))
    if tuple(spec.name for spec in outputs) != encoder_output_names(config.has_coarse):
        raise RuntimeError("encoder outputs drifted from ossnet_deploy.metadata.encoder_output_names")
    return IOSpec(
        inputs=(TensorSpec(VOLUME, "float32", (1, config.in_channels, *config.global_shape)),),
        outputs=tuple(outputs),
    )


def decoder_io(config: ModelConfig) -> IOSpec:
    """Names, dtypes and shapes of the decoder graph; the query axis is ``num_queries``."""
    inputs = [TensorSpec(COORDS, "float32", (NUM_QUERIES, 3))]
    if config.uses_patches:
        inputs.append(
            TensorSpec(PATCHES, "float32", (NUM_QUERIES, config.patch_channels, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE))
        )
    inputs.append(TensorSpec(LATENT, "float32", (1, config.latent_channels, config.latent_size)))
    if tuple(spec.name for spec in inputs) != decoder_input_names(config.uses_patches):
        raise RuntimeError("decoder inputs drifted from ossnet_deploy.metadata.decoder_input_names")
    return IOSpec(inputs=tuple(inputs), outputs=(TensorSpec(DECODER_OUTPUTS[0], "float32", (NUM_QUERIES, 1)),))


@dataclass(frozen=True)
class GraphSpec:
    """What the exporter needs to export one graph.

    Attributes:
        role: ``"encoder"`` or ``"decoder"``.
        module: the wrapper module (eval mode, referencing the model).
        io: names, dtypes and shapes (symbolic ``num_queries`` on the decoder).
        dynamic_shapes: ``torch.onnx.export(dynamic_shapes=...)``, keyed by input name.
    """

    role: str
    module: nn.Module
    io: IOSpec
    dynamic_shapes: dict[str, Any] | None


def graph_specs(model: OSSNet) -> tuple[GraphSpec, GraphSpec]:
    """The encoder and decoder :class:`GraphSpec` of ``model`` (put in eval mode here)."""
    model.eval()
    config = model.config
    encoder = EncoderGraph(model).eval()
    decoder: nn.Module = (DecoderGraph(model) if config.uses_patches else PatchlessDecoderGraph(model)).eval()
    dec_io = decoder_io(config)
    queries = torch.export.Dim(NUM_QUERIES, min=1)
    dynamic: dict[str, Any] = {
        spec.name: ({0: queries} if spec.shape[0] == NUM_QUERIES else None) for spec in dec_io.inputs
    }
    if ENCODER_INPUTS != (VOLUME,):
        raise RuntimeError("encoder inputs drifted from ossnet_deploy.metadata.ENCODER_INPUTS")
    return (
        GraphSpec(ROLE_ENCODER, encoder, encoder_io(config), None),
        GraphSpec(ROLE_DECODER, decoder, dec_io, dynamic),
    )


def example_inputs(io: IOSpec, num_queries: int, *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded example tensors for tracing, in graph input order (``num_queries`` substituted).

    Coordinates lie in (-1, 1) as real ones do; the rest is standard normal.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in io.inputs:
        shape = tuple(num_queries if dim == NUM_QUERIES else int(dim) for dim in spec.shape)
        if spec.name == COORDS:
            tensors.append(torch.rand(shape, generator=generator) * 2 - 1)
        else:
            tensors.append(torch.randn(shape, generator=generator))
    return tuple(tensors)
