"""OSS-Net's decoder: a residual MLP with conditional batch normalisation (CBN), evaluated per query.

Per query the input is ``concat(coords 3, patch features 343 (not O-Net), latent channel 0 (L))``.
Then ``decoder_blocks`` residual blocks of width W: Linear -> CBN -> PAU -> Linear -> CBN, plus a
shortcut (a Linear with bias in block 0, where the width changes; identity after), then PAU.
Output: Linear ``W -> 1`` without bias, giving *logits* (probability = sigmoid).

CBN: ``BatchNorm1d(W, affine=False)`` statistics, then ``gamma * x_hat + beta`` with ``gamma``,
``beta`` (W,) computed per volume by ``Linear(L -> W)`` from a latent channel (weights 0, gamma
bias 1, beta bias 0 at init). With the skip encoder, latent channel ``k + 1`` conditions both CBNs
of block ``k``; with the plain encoder the single channel conditions every block.
Ours differs from the reference in one place: statistics are *per feature* (as in Occupancy
Networks), not one scalar over all features; in eval mode they are running statistics, so the
decoder is a fixed per-query function and a query's logit never depends on its batch.

Layout: queries of B volumes as ``(B, N, F)`` float32 (volume, query, feature); latents
``(B, K, L)``; the latent of volume ``b`` conditions only its own N queries. Training statistics
are over all ``B * N`` queries. Nothing branches on N, so the graph exports with a dynamic N.

Block 0's two input Linears see ``[per-query features | latent channel 0]``; the latent part is
the same for every query of a volume, so it is applied once per volume (``(B, L) -> (B, W)``) and
broadcast instead of being copied to every query: same parameters and result, about
``2 * L * W`` fewer multiply-adds and ``4 * L`` fewer bytes kept for backward per query.

Training memory: every CBN is followed by a PAU (block output: CBN, residual sum, PAU), so in
training the pair runs as one autograd function (:class:`CBNActivationFunction`) that keeps only
its input (and the residual) and recomputes normalisation and activation in backward, in slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ossnet_train.pau import (
    PAU,
    backward_chunk_elements,
    lean_backward_active,
    rational_backward_,
    rational_into,
)

__all__ = ["CBNActivationFunction", "ConditionalBatchNorm", "Decoder", "DecoderBlock", "cbn_activation"]


class ConditionalBatchNorm(nn.Module):
    """``(B, N, W)`` features, ``(B, L)`` condition -> ``(B, N, W)``: per-feature BN, per-volume affine."""

    def __init__(self, width: int, cond_size: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False, momentum=0.1, eps=1e-5)
        self.gamma = nn.Linear(cond_size, width)
        self.beta = nn.Linear(cond_size, width)
        nn.init.zeros_(self.gamma.weight)
        nn.init.ones_(self.gamma.bias)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma``, ``beta`` of shape ``(B, 1, W)`` from the condition ``(B, L)``."""
        return self.gamma(cond).unsqueeze(1), self.beta(cond).unsqueeze(1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(cond)
        if self.training:
            width = x.shape[-1]
            return self.norm(x.reshape(-1, width)).view(x.shape) * gamma + beta
        # Running statistics: fold normalisation and modulation into one per-volume scale and
        # shift, so a query costs one multiply and one add per feature.
        scale = gamma * torch.rsqrt(self.norm.running_var + self.norm.eps)
        return x * scale + (beta - self.norm.running_mean * scale)


class CBNActivationFunction(torch.autograd.Function):
    """``PAU(CBN(x) [+ residual])`` in training mode, keeping only ``x`` (and ``residual``) for backward.

    ``apply(x, gamma, beta, residual, numerator, denominator, running_mean, running_var,
    momentum, eps) -> y``: ``x``, ``residual``, ``y`` ``(B, N, W)``; ``gamma``, ``beta``
    ``(B, 1, W)``; ``residual`` may be None. Batch statistics are over all ``B * N`` rows and the
    running statistics are updated in place as ``nn.BatchNorm1d`` does (momentum, unbiased
    variance). Forward and backward work on slices of queries so their temporaries stay bounded.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        residual: torch.Tensor | None,
        numerator: torch.Tensor,
        denominator: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        batch, queries, width = x.shape
        rows = batch * queries
        if rows < 2:
            raise ValueError(f"conditional batch norm in training needs more than 1 query, got {rows}")
        var, mean = torch.var_mean(x.reshape(rows, width), dim=0, correction=0)
        running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(var, alpha=momentum * rows / (rows - 1))
        invstd = torch.rsqrt(var + eps)
        out = torch.empty_like(x)
        step = _query_step(x)
        for start in range(0, queries, step):
            part = slice(start, start + step)
            pre = _pre_activation(x[:, part], mean, invstd, gamma, beta, None if residual is None else residual[:, part])
            rational_into(pre, numerator, denominator, out[:, part])
        ctx.save_for_backward(x, gamma, beta, residual, numerator, denominator, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        x, gamma, beta, residual, numerator, denominator, mean, invstd = ctx.saved_tensors
        batch, queries, _ = x.shape
        rows = batch * queries
        grad_x = torch.empty_like(x)
        grad_residual = torch.empty_like(x) if residual is not None else None
        grad_gamma = torch.zeros_like(gamma)
        grad_beta = torch.zeros_like(beta)
        grad_num = torch.zeros_like(numerator)
        grad_absden = torch.zeros_like(denominator)
        sum_g = torch.zeros_like(mean)
        sum_gx = torch.zeros_like(mean)
        step = _query_step(x)
        # Pass 1: through the activation and the modulation; keep d(loss)/d(x_hat) in grad_x.
        for start in range(0, queries, step):
            part = slice(start, start + step)
            x_hat = (x[:, part] - mean).mul_(invstd)
            pre = x_hat * gamma
            pre.add_(beta)
            if residual is not None:
                pre.add_(residual[:, part])
            grad_pre = rational_backward_(pre, grad_y[:, part], numerator, denominator, grad_num, grad_absden)
            del pre
            if grad_residual is not None:
                grad_residual[:, part] = grad_pre
            grad_beta += grad_pre.sum(dim=1, keepdim=True)
            grad_gamma += (grad_pre * x_hat).sum(dim=1, keepdim=True)
            grad_xhat = grad_pre.mul_(gamma)
            sum_g += grad_xhat.sum(dim=(0, 1))
            sum_gx += (grad_xhat * x_hat).sum(dim=(0, 1))
            grad_x[:, part] = grad_xhat
        # Pass 2: through the batch statistics (the usual batch-norm backward).
        mean_g = sum_g / rows
        mean_gx = sum_gx / rows
        for start in range(0, queries, step):
            part = slice(start, start + step)
            x_hat = (x[:, part] - mean).mul_(invstd)
            grad_x[:, part].sub_(x_hat.mul_(mean_gx).add_(mean_g)).mul_(invstd)
        grad_den = grad_absden * torch.sign(denominator)
        return grad_x, grad_gamma, grad_beta, grad_residual, grad_num, grad_den, None, None, None, None


def _query_step(x: torch.Tensor) -> int:
    """Queries per slice of a ``(B, N, W)`` tensor for the fused function's loops."""
    batch, _, width = x.shape
    return -(-backward_chunk_elements(x.numel()) // max(1, batch * width))


def _pre_activation(
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """``gamma * (x - mean) * invstd + beta [+ residual]`` as a new tensor (no autograd)."""
    pre = (x - mean).mul_(invstd).mul_(gamma).add_(beta)
    if residual is not None:
        pre.add_(residual)
    return pre


def cbn_activation(
    x: torch.Tensor,
    cond: torch.Tensor,
    cbn: ConditionalBatchNorm,
    act: PAU,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(cbn(x, cond) [+ residual])``: ``(B, N, W)`` -> ``(B, N, W)``.

    While training with autograd this is :class:`CBNActivationFunction` (lean memory); otherwise
    the plain modules (what export sees). Both compute the same function.
    """
    tracked = (x, cond, act.numerator, act.denominator, cbn.gamma.weight, cbn.beta.weight)
    if lean_backward_active(cbn, *tracked, *(() if residual is None else (residual,))):
        gamma, beta = cbn.modulation(cond)
        norm = cbn.norm
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
        return CBNActivationFunction.apply(
            x, gamma, beta, residual, act.numerator, act.denominator,
            norm.running_mean, norm.running_var, norm.momentum, norm.eps,
        )
    pre = cbn(x, cond)
    if residual is not None:
        pre = pre + residual
    return act(pre)


class DecoderBlock(nn.Module):
    """Residual block ``(B, N, in_features) -> (B, N, width)`` conditioned on a ``(B, L)`` latent channel.

    ``volume_features`` > 0 (block 0 only): the last ``volume_features`` input columns of the
    Linears are per-volume values (latent channel 0) passed separately as ``(B, volume_features)``.
    A shortcut Linear (with bias) exists when ``in_features + volume_features != width``.
    """

    def __init__(self, in_features: int, width: int, cond_size: int, *, volume_features: int = 0) -> None:
        super().__init__()
        total_in = in_features + volume_features
        self.point_features = in_features
        self.fc1 = nn.Linear(total_in, width)
        self.cbn1 = ConditionalBatchNorm(width, cond_size)
        self.act1 = PAU()
        self.fc2 = nn.Linear(width, width)
        self.cbn2 = ConditionalBatchNorm(width, cond_size)
        self.shortcut = nn.Linear(total_in, width) if total_in != width else None
        self.act2 = PAU()

    def _linear(self, linear: nn.Linear, x: torch.Tensor, per_volume: torch.Tensor | None) -> torch.Tensor:
        if per_volume is None:
            return linear(x)
        split = self.point_features
        per_query = F.linear(x, linear.weight[:, :split])
        return per_query + F.linear(per_volume, linear.weight[:, split:], linear.bias).unsqueeze(1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, per_volume: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, in_features), ``cond`` (B, L), ``per_volume`` (B, volume_features) or None."""
        hidden = cbn_activation(self._linear(self.fc1, x, per_volume), cond, self.cbn1, self.act1)
        hidden = self.fc2(hidden)
        skip = x if self.shortcut is None else self._linear(self.shortcut, x, per_volume)
        return cbn_activation(hidden, cond, self.cbn2, self.act2, residual=skip)


class Decoder(nn.Module):
    """Per-query features ``(B, N, P)`` and latent ``(B, K, L)`` -> logits ``(B, N, 1)`` float32.

    ``point_features`` P = 3 (coordinates) + 343 (patch features; not O-Net). ``latent_channels``
    K = 1 (every block conditioned on channel 0) or ``blocks + 1`` (block k on channel k + 1).
    """

    def __init__(self, point_features: int, latent_size: int, latent_channels: int, width: int, blocks: int) -> None:
        super().__init__()
        if latent_channels not in (1, blocks + 1):
            raise ValueError(f"latent_channels must be 1 or blocks + 1 = {blocks + 1}, got {latent_channels}")
        self.latent_channels = latent_channels
        self.blocks = nn.ModuleList(
            DecoderBlock(point_features if k == 0 else width, width, latent_size,
                         volume_features=latent_size if k == 0 else 0)
            for k in range(blocks)
        )
        self.out = nn.Linear(width, 1, bias=False)

    def condition_channel(self, block: int) -> int:
        """Index of the latent channel that conditions decoder block ``block``."""
        return block + 1 if self.latent_channels > 1 else 0

    def forward(self, points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = points
        for k, block in enumerate(self.blocks):
            cond = latent[:, self.condition_channel(k)]
            x = block(x, cond, latent[:, 0] if k == 0 else None)
        return self.out(x)

