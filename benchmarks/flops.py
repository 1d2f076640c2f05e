"""FLOPs per decoder query of an OSS-Net model, counted from its configuration (docs/design.md#measuring).

One FLOP is one multiply or one add; a multiply-add counts 2. Counted per query, i.e. the work
that grows with the number of queries (the encoder, the per-volume latent part of decoder block 0
and the CBN modulations run once per volume and are listed separately).

* ``patch_conv_valid``: the patch encoder's two 7^3 "same" convolutions **as defined**: only the
  kernel taps that land inside the 7^3 patch (not on the zero padding): per axis
  ``sum_o #taps(o) = P^2 - p (p + 1)`` = 37 for ``P = 7, p = 3``, so ``37^3`` multiply-adds per
  (input, output) channel pair.
* ``patch_conv_dense``: the same convolutions as the exported graph runs them, two dense
  ``(C_in 343) x (C_out 343)`` matrix products (the padding taps are zeros in the matrices but are
  multiplied all the same): more multiply-adds than the model defines, so never the headline.
* ``decoder_linear``: every per-query Linear of the decoder (block 0's input Linears on the
  per-query features only; the shortcut where the width changes; the output Linear).
* ``latent_per_query``: what block 0's latent part would cost if it were applied to every query
  (the reference's concatenation); ours applies it once per volume.
* ``elementwise``: biases, CBN (2 per feature in eval mode), residual sums, PAUs (about 20 per
  element: Horner numerator 10, denominator 8, abs, divide). An estimate, not in the headline.

The headline :attr:`QueryFlops.as_defined` is ``patch_conv_valid + decoder_linear``; the work the
exported graph does on its matrix units is :attr:`QueryFlops.as_executed`
(``patch_conv_dense + decoder_linear``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ossnet_train.config import PATCH_MODES

__all__ = ["PAU_FLOPS", "QueryFlops", "query_flops", "torch_marginal_flops", "valid_taps"]

#: FLOPs per element of one PAU evaluation (see the module docstring).
PAU_FLOPS = 20
_PATCH = 7
_PATCH_FEATURES = _PATCH**3


def valid_taps(size: int = _PATCH) -> int:
    """Kernel taps inside the patch, summed over the outputs of one axis (37 for 7)."""
    pad = size // 2
    return sum(sum(1 for t in range(size) if 0 <= o + t - pad < size) for o in range(size))


@dataclass(frozen=True)
class QueryFlops:
    """FLOPs per query by part (see the module docstring); ``per_volume`` is not per query."""

    patch_conv_valid: int
    patch_conv_dense: int
    decoder_linear: int
    latent_per_query: int
    elementwise: int
    per_volume: int

    @property
    def as_defined(self) -> int:
        """The model as defined: valid-region patch convolutions + per-query decoder Linears."""
        return self.patch_conv_valid + self.decoder_linear

    @property
    def as_executed(self) -> int:
        """What the exported graph's matrix products do per query (dense patch matrices)."""
        return self.patch_conv_dense + self.decoder_linear

    def to_dict(self) -> dict[str, int]:
        """Every field and both sums."""
        return {**asdict(self), "as_defined": self.as_defined, "as_executed": self.as_executed}


def query_flops(config: Mapping[str, Any]) -> QueryFlops:
    """Count the FLOPs per query of the model described by ``config``.

    Args:
        config: ``ModelConfig.to_dict()`` (also stored as ``ossnet.model_config`` in the ONNX
            metadata): needs ``in_channels``, ``patch_mode``, ``latent_shape``, ``decoder_width``
            and optionally ``decoder_blocks`` (default 5).

    For ``model_config("c", "brats")``: 6.44 MFLOP as defined (1.01 patch convolutions + 5.43
    decoder), 7.78 as executed (torch's FlopCounterMode agrees exactly), and 8.44 when the latent
    part is also counted per query (dense patch matrices + latent per query: the reference's form).
    """
    width = int(config["decoder_width"])
    blocks = int(config.get("decoder_blocks", 5))
    latent = 1
    for side in config["latent_shape"]:
        latent *= int(side)
    patch_channels = int(config["in_channels"]) * PATCH_MODES.index(config["patch_mode"])  # as ModelConfig.patch_channels
    conv_valid = conv_dense = patch_elementwise = 0
    if patch_channels:
        hidden = max(patch_channels // 2, 1)
        pairs = patch_channels * hidden + hidden * 1
        conv_valid = 2 * pairs * valid_taps() ** 3
        conv_dense = 2 * pairs * _PATCH_FEATURES**2
        outputs = (hidden + 1) * _PATCH_FEATURES
        patch_elementwise = outputs * (1 + PAU_FLOPS)  # bias + PAU
    point = 3 + (_PATCH_FEATURES if patch_channels else 0)
    shortcut = point + latent != width
    linear = 2 * point * width * (2 if shortcut else 1) + 2 * width * width  # block 0
    linear += (blocks - 1) * 2 * (2 * width * width) + 2 * width  # blocks 1.., output
    latent_part = 2 * latent * width * (2 if shortcut else 1)
    # Per block: two bias adds (block 0: broadcast per-volume terms), two CBNs (2 each), two PAUs,
    # one residual sum.
    elementwise = patch_elementwise + blocks * width * (2 + 2 * 2 + 2 * PAU_FLOPS + 1)
    per_volume = latent_part + blocks * 2 * 2 * (2 * latent * width)  # latent part + gamma/beta Linears
    return QueryFlops(conv_valid, conv_dense, linear, latent_part, elementwise, per_volume)


def torch_marginal_flops(config: Mapping[str, Any], queries: tuple[int, int] = (64, 128)) -> float:
    """FLOPs per query of ``OSSNet.decode`` as torch's ``FlopCounterMode`` counts them (cross-check).

    The difference between two query counts divided by the difference of counts: per-call work
    (the patch matrices built from the weights, block 0's latent part) cancels, so this equals
    :attr:`QueryFlops.as_executed` when the analytic count is right. Needs torch and ossnet_train;
    random weights, eval mode, CPU.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ossnet_train.config import ModelConfig
    from ossnet_train.registry import build_model

    model = build_model(ModelConfig.from_dict(dict(config))).eval()
    cfg = model.config
    latent = torch.randn(1, cfg.latent_channels, cfg.latent_size)
    counts = []
    for n in queries:
        coords = torch.rand(n, 3) * 2 - 1
        patches = torch.randn(n, cfg.patch_channels, _PATCH, _PATCH, _PATCH) if cfg.uses_patches else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.decode(coords, patches, latent)
        counts.append(counter.get_total_flops())
    return (counts[1] - counts[0]) / (queries[1] - queries[0])
