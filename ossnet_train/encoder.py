"""OSS-Net's encoders: the 3D CNN over the global volume and the per-query patch encoder.

Layer plan (the reference implementation's, docs/models.md#variants-paper-table-1; parameter
counts equal the reference's):

* :class:`ResidualBlock3d` ``c_in -> c_out``, halves every side: main path conv 3^3 (no bias)
  -> BN -> PAU -> avg-pool 2 -> conv 3^3 (no bias) -> BN; shortcut 1x1x1 conv (no bias, only
  when the width changes) -> avg-pool 2; sum; PAU.
* :class:`PlainEncoder` (O-Net, A, B): blocks, then conv 5^3 ``c -> 1`` (bias) -> BN -> PAU,
  flattened to a ``(B, 1, L)`` latent.
* :class:`SkipEncoder` (C, D): after every block a side branch (max-pool to the final grid ->
  conv 5^3 ``c -> c/2`` (no bias) -> BN -> PAU); branches concatenated -> conv 5^3 -> K channels
  (bias) -> BN -> PAU: a ``(B, K, L)`` latent. Aux head on the last block: conv 5^3 ``c -> 1``
  (no bias) giving coarse-segmentation *logits* (the reference applies a sigmoid; we keep
  logits so the loss is BCE with logits and the exported graph returns logits).
* :class:`PatchEncoder` (A-D): conv 7^3 ``C_p -> max(C_p // 2, 1)`` (bias) -> PAU -> conv 7^3
  ``-> 1`` (bias) -> PAU, flattened to 343 features per query.

Tensors are channels first, float32: volumes ``(B, C, D, H, W)`` with ``(D, H, W)`` the
canonical ``(i, j, k)`` axes of the global volume.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ossnet_train.config import PATCH_SIZE
from ossnet_train.pau import PAU

__all__ = ["EncoderOutput", "PatchEncoder", "PlainEncoder", "ResidualBlock3d", "SkipEncoder", "conv_matrix"]


class EncoderOutput(NamedTuple):
    """What the encoder gives per volume.

    latent: ``(B, K, L)`` float32; K = 1 (plain encoder) or ``decoder_blocks + 1`` (skip
        encoder); L = d*h*w, flattened in C order from the final ``(d, h, w)`` grid.
    coarse_logits: ``(B, 1, d, h, w)`` float32 logits of the coarse segmentation (C, D), else None.
    """

    latent: torch.Tensor
    coarse_logits: torch.Tensor | None


class ResidualBlock3d(nn.Module):
    """Residual block ``(B, c_in, D, H, W) -> (B, c_out, D/2, H/2, W/2)``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.act1 = PAU()
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.shortcut: nn.Module = nn.Conv3d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.act2 = PAU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training normalises with the whole batch's statistics, so only eval mode (validation,
        # export, inference) may cut the full-resolution half of the block into slabs.
        main = self._stem(x) if self.training else self._stem_slabs(x, _slab_rows(self.conv1.out_channels, x.shape))
        main = self.bn2(self.conv2(main))
        # A 1x1x1 convolution commutes with average pooling, so pooling first gives the
        # reference's conv-then-pool result with 8x fewer multiply-adds.
        return self.act2(main + self.shortcut(F.avg_pool3d(x, 2)))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> BN -> PAU -> avg-pool 2: ``(B, c_in, D, H, W) -> (B, c_out, D/2, H/2, W/2)``."""
        return F.avg_pool3d(self.act1(self.bn1(self.conv1(x))), 2)

    def _stem_slabs(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """:meth:`_stem` computed ``rows`` pooled D-rows at a time; exactly the same maths.

        The stem's full-resolution activations (``c_out`` channels at the input's size, plus the
        PAU's temporaries) are the encoder's memory peak: in ONNX Runtime a ``demo`` encoder held
        about 340 MB for them. Pooled rows ``[a, b)`` need conv1 rows ``[2a, 2b)``, i.e. input rows
        ``[2a - 1, 2b + 1)``; the rows beyond the volume are the convolution's zero padding.
        Slab bounds are Python ints, so an export unrolls the loop into a fixed graph.
        """
        depth = x.shape[2] // 2
        if rows >= depth:
            return self._stem(x)
        out = []
        for a in range(0, depth, rows):
            b = min(a + rows, depth)
            lo, hi = 2 * a - 1, 2 * b + 1
            slab = x[:, :, max(lo, 0):min(hi, x.shape[2])]
            if lo < 0 or hi > x.shape[2]:
                slab = F.pad(slab, (0, 0, 0, 0, int(lo < 0), int(hi > x.shape[2])))
            # conv1 is 3^3 with padding 1: D's padding is the halo (or the zeros added above).
            conv = F.conv3d(slab, self.conv1.weight, self.conv1.bias, padding=(0, 1, 1))
            out.append(F.avg_pool3d(self.act1(self.bn1(conv)), 2))
        return torch.cat(out, dim=2)


# Elements of one slab's conv1 output (16 MB of float32): a fraction of a whole level (88 MB per
# tensor for the demo preset) so the PAU's temporaries stay small, and few enough slabs (6 for
# demo, 32 for lits) that the unrolled graph and the per-slab overhead stay small.
_SLAB_ELEMENTS = 1 << 22


def _slab_rows(channels: int, shape: torch.Size) -> int:
    """Pooled D-rows per slab of :meth:`ResidualBlock3d._stem_slabs` for an input of ``shape``
    ``(B, C, D, H, W)``: at least 1, at most ``D / 2`` (one slab)."""
    per_pooled_row = 2 * int(shape[0]) * channels * int(shape[3]) * int(shape[4])
    return max(1, min(int(shape[2]) // 2, _SLAB_ELEMENTS // max(per_pooled_row, 1)))


def _conv5(c_in: int, c_out: int, *, bias: bool) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, 5, padding=2, bias=bias)


class PlainEncoder(nn.Module):
    """Encoder of O-Net, A and B: ``(B, C, Dg, Hg, Wg) -> latent (B, 1, L)``, no coarse logits."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock3d(a, b) for a, b in itertools.pairwise(channels))
        self.head = _conv5(channels[-1], 1, bias=True)
        self.head_bn = nn.BatchNorm3d(1)
        self.head_act = PAU()

    def forward(self, volume: torch.Tensor) -> EncoderOutput:
        x = volume
        for block in self.blocks:
            x = block(x)
        latent = self.head_act(self.head_bn(self.head(x)))
        return EncoderOutput(latent.flatten(2), None)


class SkipEncoder(nn.Module):
    """Encoder of C and D: ``(B, C, Dg, Hg, Wg) -> latent (B, K, L)`` and, with the aux head,
    ``coarse_logits (B, 1, d, h, w)``.

    The side branch after block ``k`` (of ``n``) max-pools its ``2^(n-1-k)``-times larger grid
    to the final grid with kernel = stride = ``2^(n-1-k)``: for the exact powers of two that
    validated configs guarantee this equals the reference's adaptive max pooling, and it
    exports as a plain MaxPool node.
    """

    def __init__(self, channels: tuple[int, ...], latent_channels: int, *, aux_head: bool) -> None:
        super().__init__()
        widths = channels[1:]
        self.blocks = nn.ModuleList(ResidualBlock3d(a, b) for a, b in itertools.pairwise(channels))
        self.side_convs = nn.ModuleList(_conv5(c, c // 2, bias=False) for c in widths)
        self.side_bns = nn.ModuleList(nn.BatchNorm3d(c // 2) for c in widths)
        self.side_acts = nn.ModuleList(PAU() for _ in widths)
        self.pool_sizes = tuple(2 ** (len(widths) - 1 - k) for k in range(len(widths)))
        self.merge = _conv5(sum(c // 2 for c in widths), latent_channels, bias=True)
        self.merge_bn = nn.BatchNorm3d(latent_channels)
        self.merge_act = PAU()
        self.aux_head = _conv5(widths[-1], 1, bias=False) if aux_head else None

    def forward(self, volume: torch.Tensor) -> EncoderOutput:
        x = volume
        sides = []
        for block, conv, bn, act, pool in zip(
            self.blocks, self.side_convs, self.side_bns, self.side_acts, self.pool_sizes, strict=True
        ):
            x = block(x)
            pooled = F.max_pool3d(x, pool) if pool > 1 else x
            sides.append(act(bn(conv(pooled))))
        latent = self.merge_act(self.merge_bn(self.merge(torch.cat(sides, dim=1))))
        coarse = self.aux_head(x) if self.aux_head is not None else None
        return EncoderOutput(latent.flatten(2), coarse)


class PatchEncoder(nn.Module):
    """Local patches ``(M, C_p, 7, 7, 7)`` -> features ``(M, 343)`` (float32, C order of the 7^3 grid).

    The two "same"-padded 7^3 convolutions over a 7^3 patch are fixed linear maps of the
    flattened patch, so they run as matrix products: ``conv(x).flatten(1) == x.flatten(1) @ A
    + b`` with ``A = conv(identity basis)`` built from the convolution's own weights on every
    call (:func:`conv_matrix`). The parameters, their names and the maths are those of the two
    ``Conv3d`` layers (checkpoints and parameter counts are unchanged); only the evaluation order
    differs, so results agree with ``Conv3d`` to float32 rounding. Why: a ``Conv3d`` over
    thousands of tiny 7^3 volumes with one or two channels is a poor fit for CPU kernels (it was
    about 96 % of a demo training step); one GEMM per layer is what BLAS is best at, and the
    exported ONNX graph runs the same GEMMs (ONNX Runtime folds the matrix construction into a
    constant at session start, since it depends only on weights).
    """

    def __init__(self, patch_channels: int) -> None:
        super().__init__()
        hidden = max(patch_channels // 2, 1)
        self.conv1 = nn.Conv3d(patch_channels, hidden, PATCH_SIZE, padding=PATCH_SIZE // 2)
        self.act1 = PAU()
        self.conv2 = nn.Conv3d(hidden, 1, PATCH_SIZE, padding=PATCH_SIZE // 2)
        self.act2 = PAU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.flatten(1)
        x = self.act1(_conv_as_linear(x, self.conv1))
        return self.act2(_conv_as_linear(x, self.conv2))

    def forward_conv(self, patches: torch.Tensor) -> torch.Tensor:
        """The same features through ``Conv3d`` (the reference formulation; for tests and benchmarks)."""
        return self.act2(self.conv2(self.act1(self.conv1(patches)))).flatten(1)


def conv_matrix(conv: nn.Conv3d) -> torch.Tensor:
    """The matrix of a "same"-padded 3D convolution over a ``P^3`` patch (``P`` = kernel size).

    Returns:
        ``(C_in * P^3, C_out * P^3)`` float tensor ``A`` (differentiable in ``conv.weight``) such
        that ``conv(x).flatten(1) == x.flatten(1) @ A + bias.repeat_interleave(P^3)`` for
        ``x`` of shape ``(M, C_in, P, P, P)`` (C order, channels first).
    """
    size = conv.kernel_size[0]
    volume = size**3
    # One P^3 identity basis, shared by every input channel (and folded into one small constant
    # of the exported graph): column block c of the matrix is the convolution of the basis with
    # the kernels of input channel c. An identity over all C_in * P^3 inputs would put a
    # (C_in * P^3)^2 constant into the ONNX file (30 MB for 8 patch channels).
    basis = torch.eye(volume, dtype=conv.weight.dtype, device=conv.weight.device).reshape(volume, 1, size, size, size)
    blocks = [
        F.conv3d(basis, conv.weight[:, c : c + 1], None, padding=conv.padding).reshape(volume, -1)
        for c in range(conv.in_channels)
    ]
    return torch.cat(blocks, dim=0)


def _conv_as_linear(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv`` applied to flattened patches ``x`` ``(M, C_in * P^3)`` -> ``(M, C_out * P^3)``."""
    out = x @ conv_matrix(conv)
    if conv.bias is not None:
        out = out + conv.bias.repeat_interleave(conv.kernel_size[0] ** 3)
    return out
