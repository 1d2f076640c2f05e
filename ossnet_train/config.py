"""OSS-Net model configuration: the variants (paper Table 1) and the size presets (docs/design.md#presets).

A :class:`ModelConfig` is a frozen dataclass of plain values (str, int, bool, tuples of int) that
fully determines the network; :func:`model_config` builds one from a variant and a preset.
The dict form (:meth:`ModelConfig.to_dict`) is what checkpoints and the ONNX metadata
(``ossnet.model_config``) store, so the torch-free runtime can read the geometry it needs
(``in_channels``, ``global_shape``, ``latent_shape``, ``patch_mode``) without this package.

Shapes: the global volume is ``(C, Dg, Hg, Wg) = (in_channels, *global_shape)``, half the
full-resolution padded grid (``grid_shape``) on every axis; every encoder block halves each
side, so ``latent_shape = global_shape / 2^blocks`` and ``L = prod(latent_shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_deploy.presets import PRESETS as PRESET_TABLE

__all__ = [
    "ARCHITECTURE",
    "PATCH_FEATURES",
    "PATCH_MODES",
    "PATCH_SIZE",
    "PRESETS",
    "VARIANTS",
    "VARIANT_SPECS",
    "ModelConfig",
    "ModelPreset",
    "VariantSpec",
    "canonical_variant",
    "model_config",
    "uses_large_patches",
]

#: ``ModelConfig.architecture`` of OSS-Net models (the registry dispatches on it).
ARCHITECTURE = "ossnet"
#: side of the (small, and pooled large) local patch, voxels.
PATCH_SIZE = 7
#: features the patch encoder hands the decoder per query (one 7^3 channel, flattened).
PATCH_FEATURES = PATCH_SIZE**3
#: ``"none"`` (O-Net), ``"small"`` (7^3: A, C), ``"small_large"`` (7^3 + pooled 14^3: B, D).
PATCH_MODES = ("none", "small", "small_large")


def uses_large_patches(patch_mode: str) -> bool:
    """Whether a model of ``patch_mode`` also takes the pooled 14^3 patch (variants B, D).

    The one place this is decided: :attr:`ModelConfig.large_patches`,
    :attr:`VariantSpec.large_patches`, the training samples, the preprocessing a run or an
    export pairs with the model (``PreprocessConfig.large_patches``) all derive from it.
    """
    return patch_mode == "small_large"


@dataclass(frozen=True)
class VariantSpec:
    """What distinguishes one OSS-Net variant from another (paper Table 1)."""

    name: str
    display_name: str
    skip_encoder: bool
    patch_mode: str
    aux_head: bool

    @property
    def large_patches(self) -> bool:
        """Whether the variant takes the pooled 14^3 patch too (see :func:`uses_large_patches`)."""
        return uses_large_patches(self.patch_mode)


VARIANT_SPECS: dict[str, VariantSpec] = {
    "onet": VariantSpec("onet", "O-Net", skip_encoder=False, patch_mode="none", aux_head=False),
    "a": VariantSpec("a", "OSS-Net A", skip_encoder=False, patch_mode="small", aux_head=False),
    "b": VariantSpec("b", "OSS-Net B", skip_encoder=False, patch_mode="small_large", aux_head=False),
    "c": VariantSpec("c", "OSS-Net C", skip_encoder=True, patch_mode="small", aux_head=True),
    "d": VariantSpec("d", "OSS-Net D", skip_encoder=True, patch_mode="small_large", aux_head=True),
}
#: canonical variant names, in paper order.
VARIANTS: tuple[str, ...] = tuple(VARIANT_SPECS)

_VARIANT_ALIASES = {"o-net": "onet", "o_net": "onet", "o net": "onet"}


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of one preset (docs/design.md#presets); the preprocessing half lives in ossnet_deploy."""

    in_channels: int
    encoder_channels: tuple[int, ...]
    global_shape: tuple[int, int, int]
    decoder_width: int


#: The model half of every preset, derived from the one preset table (:mod:`ossnet_deploy.presets`,
#: torch-free, which also builds the preprocessing): in_channels is the preset's channel count and
#: global_shape half its preprocessing grid, so model and preprocessing cannot disagree.
PRESETS: dict[str, ModelPreset] = {
    name: ModelPreset(preset.in_channels, preset.encoder_channels, preset.global_shape, preset.decoder_width)
    for name, preset in PRESET_TABLE.items()
}


def canonical_variant(name: str) -> str:
    """``"O-Net"``, ``"onet"``, ``"A"`` .. ``"d"`` (any case) -> ``"onet"``, ``"a"`` .. ``"d"``.

    Raises:
        ValueError: an unknown name (the message lists the accepted ones).
    """
    key = str(name).strip().lower()
    key = _VARIANT_ALIASES.get(key, key)
    if key not in VARIANT_SPECS:
        raise ValueError(
            describe(
                None,
                f"unknown OSS-Net variant {name!r}",
                expected=f"one of {', '.join(VARIANTS)} (aliases: O-Net, A-D, any case)",
                fix="pick one of the paper's variants",
            )
        )
    return key


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one OSS-Net model (plain values only).

    variant: ``"onet"``, ``"a"``, ``"b"``, ``"c"`` or ``"d"`` (canonical, see :func:`canonical_variant`).
    preset: the preset the sizes came from (``"brats"``, ``"lits"``, ``"demo"``); names the
        preprocessing family, sizes may have been overridden (tests use tiny ones).
    in_channels: image channels C of the volume (== ``encoder_channels[0]``).
    encoder_channels: channel chain of the residual encoder, input first: ``(4, 16, 32, 64, 128)``
        is 4 blocks.
    global_shape: ``(Dg, Hg, Wg)`` of the global (half-resolution) volume; each side divisible by
        ``2^blocks`` (the full-resolution grid, twice as large, by ``2^(blocks+1)``).
    latent_shape: ``(d, h, w) = global_shape / 2^blocks``, the encoder's final grid, also the
        grid of ``coarse_logits``.
    skip_encoder, patch_mode, aux_head: fixed by the variant (stored so the dict is self-describing).
    decoder_width: width W of the decoder's residual blocks.
    decoder_blocks: number of decoder blocks; the skip encoder emits ``decoder_blocks + 1``
        latent channels.
    architecture: always ``"ossnet"`` (U-Net baselines have their own config).

    Raises:
        ValueError: on any inconsistent or out-of-range field; the message names the value.
    """

    variant: str
    preset: str
    in_channels: int
    encoder_channels: tuple[int, ...]
    global_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    skip_encoder: bool
    patch_mode: str
    aux_head: bool
    decoder_width: int
    decoder_blocks: int = 5
    architecture: str = ARCHITECTURE

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "global_shape", "latent_shape"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems = _problems(self)
        if problems:
            raise ValueError(
                describe(
                    None,
                    "invalid OSS-Net model config",
                    expected="the constraints documented on ModelConfig",
                    found="; ".join(problems),
                    fix="correct the listed fields (model_config(variant, preset, ...) derives latent_shape)",
                )
            )

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Residual blocks of the encoder (each halves every side)."""
        return len(self.encoder_channels) - 1

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Full-resolution padded grid ``2 * global_shape``: where queries and patches live."""
        return (2 * self.global_shape[0], 2 * self.global_shape[1], 2 * self.global_shape[2])

    @property
    def latent_channels(self) -> int:
        """K of the ``(1, K, L)`` latent: ``decoder_blocks + 1`` (skip encoder) or 1 (plain)."""
        return self.decoder_blocks + 1 if self.skip_encoder else 1

    @property
    def latent_size(self) -> int:
        """L of the ``(1, K, L)`` latent: ``prod(latent_shape)``."""
        return math.prod(self.latent_shape)

    @property
    def uses_patches(self) -> bool:
        """Whether the decoder takes ``patches`` (every variant but O-Net)."""
        return self.patch_mode != "none"

    @property
    def large_patches(self) -> bool:
        """Whether the decoder also takes the pooled 14^3 patch (B, D; see :func:`uses_large_patches`)."""
        return uses_large_patches(self.patch_mode)

    @property
    def patch_channels(self) -> int:
        """C_p of ``patches`` (N, C_p, 7, 7, 7): 0, C (A, C) or 2C (B, D)."""
        return self.in_channels * PATCH_MODES.index(self.patch_mode)

    @property
    def has_coarse(self) -> bool:
        """Whether ``encode`` also returns ``coarse_logits`` (variants C, D)."""
        return self.aux_head

    @property
    def display_name(self) -> str:
        """The paper's name of the variant, e.g. ``"OSS-Net C"``."""
        return VARIANT_SPECS[self.variant].display_name

    # ---- dict form ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (tuples become lists)."""
        out = asdict(self)
        for name in ("encoder_channels", "global_shape", "latent_shape"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> ModelConfig:
        """Inverse of :meth:`to_dict` (lists become tuples).

        ``source`` (e.g. the checkpoint path) names the origin in errors. Every field but the
        defaulted ``decoder_blocks``/``architecture`` is required.

        Raises:
            ModelFormatError: not a mapping, unknown or missing fields, or invalid values.
        """
        fix = "store ModelConfig.to_dict() (re-save the checkpoint with ossnet_train.checkpoint)"
        if not isinstance(data, Mapping):
            raise ModelFormatError(
                describe(source, "model config is not a mapping", expected="a dict of fields",
                         found=type(data).__name__, fix=fix)
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ModelFormatError(
                describe(source, "model config has unknown fields", expected=f"fields among {sorted(known)}",
                         found=str(unknown), fix="use the ossnet version that wrote it, or a newer one")
            )
        required = [name for name in ("variant", "preset", "in_channels", "encoder_channels", "global_shape",
                                      "latent_shape", "skip_encoder", "patch_mode", "aux_head",
                                      "decoder_width") if name not in data]
        if required:
            raise ModelFormatError(
                describe(source, "model config lacks fields", expected="every ModelConfig field",
                         found=f"missing {required}", fix=fix)
            )
        values = dict(data)
        for name in ("encoder_channels", "global_shape", "latent_shape"):
            if isinstance(values[name], (list, tuple)):
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except ValueError as exc:
            raise ModelFormatError(describe(source, str(exc))) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_tuple(value: object, length: int | None = None) -> bool:
    return (
        isinstance(value, tuple)
        and (length is None or len(value) == length)
        and all(_is_int(v) and v > 0 for v in value)
    )


def _problems(cfg: ModelConfig) -> list[str]:
    """Every violated constraint of ``cfg``, as phrases naming the offending value."""
    problems: list[str] = []
    if cfg.architecture != ARCHITECTURE:
        problems.append(f"architecture={cfg.architecture!r} is not {ARCHITECTURE!r}")
    spec = VARIANT_SPECS.get(cfg.variant) if isinstance(cfg.variant, str) else None
    if spec is None:
        problems.append(f"variant={cfg.variant!r} not in {list(VARIANTS)} (use canonical_variant())")
    else:
        for name in ("skip_encoder", "patch_mode", "aux_head"):
            if getattr(cfg, name) != getattr(spec, name):
                problems.append(
                    f"{name}={getattr(cfg, name)!r} contradicts variant {cfg.variant!r} "
                    f"(which has {getattr(spec, name)!r})"
                )
    if not isinstance(cfg.preset, str) or not cfg.preset:
        problems.append(f"preset={cfg.preset!r} is not a non-empty string")
    if not (_is_int(cfg.in_channels) and cfg.in_channels > 0):
        problems.append(f"in_channels={cfg.in_channels!r} is not a positive int")
    if not (_is_int_tuple(cfg.encoder_channels) and len(cfg.encoder_channels) >= 2):
        problems.append(f"encoder_channels={cfg.encoder_channels!r} is not a tuple of >= 2 positive ints")
    else:
        if cfg.encoder_channels[0] != cfg.in_channels:
            problems.append(
                f"encoder_channels[0]={cfg.encoder_channels[0]} differs from in_channels={cfg.in_channels!r}"
            )
        if cfg.skip_encoder and any(c < 2 for c in cfg.encoder_channels[1:]):
            problems.append(
                f"encoder_channels={cfg.encoder_channels} has a block width < 2 "
                "(the skip encoder's side branches halve them)"
            )
    if not _is_int_tuple(cfg.global_shape, 3):
        problems.append(f"global_shape={cfg.global_shape!r} is not 3 positive ints")
    elif _is_int_tuple(cfg.encoder_channels) and len(cfg.encoder_channels) >= 2:
        factor = 2 ** (len(cfg.encoder_channels) - 1)
        for side in cfg.global_shape:
            if side % factor:
                problems.append(
                    f"global_shape side {side} is not divisible by 2^{len(cfg.encoder_channels) - 1} = {factor} "
                    f"(grid side {2 * side} must be divisible by {2 * factor})"
                )
        expected = tuple(side // factor for side in cfg.global_shape)
        if not problems and cfg.latent_shape != expected:
            problems.append(f"latent_shape={cfg.latent_shape!r} is not global_shape / {factor} = {expected}")
    if not isinstance(cfg.patch_mode, str) or cfg.patch_mode not in PATCH_MODES:
        problems.append(f"patch_mode={cfg.patch_mode!r} not in {list(PATCH_MODES)}")
    for name in ("skip_encoder", "aux_head"):
        if not isinstance(getattr(cfg, name), bool):
            problems.append(f"{name}={getattr(cfg, name)!r} is not a bool")
    if cfg.aux_head and not cfg.skip_encoder:
        problems.append("aux_head=True needs skip_encoder=True")
    for name in ("decoder_width", "decoder_blocks"):
        value = getattr(cfg, name)
        if not (_is_int(value) and value > 0):
            problems.append(f"{name}={value!r} is not a positive int")
    return problems


#: fields a caller may override in :func:`model_config`; the rest follow from the variant.
_OVERRIDABLE = ("in_channels", "encoder_channels", "global_shape", "latent_shape", "decoder_width", "decoder_blocks")


def model_config(variant: str, preset: str, **overrides: Any) -> ModelConfig:
    """Build the config of ``variant`` at ``preset`` sizes, optionally with smaller/other sizes.

    ``variant``: any alias accepted by :func:`canonical_variant`. ``preset``: ``"brats"``,
    ``"lits"`` or ``"demo"``. ``overrides``: any of ``in_channels``, ``encoder_channels``,
    ``global_shape``, ``latent_shape``, ``decoder_width``, ``decoder_blocks``. When
    ``encoder_channels`` is given without ``in_channels`` the latter follows it (and the other way
    round, replacing the first channel); ``latent_shape`` is derived unless given. Example of a
    tiny test model: ``model_config("c", "brats", global_shape=(16, 16, 16),
    encoder_channels=(4, 8, 16), decoder_width=32)``.

    Raises:
        ValueError: unknown variant, preset or override name, or an invalid resulting config.
    """
    name = canonical_variant(variant)
    key = str(preset).strip().lower()
    if key not in PRESETS:
        raise ValueError(
            describe(None, f"unknown preset {preset!r}", expected=f"one of {', '.join(PRESETS)}",
                     fix="pick a preset and override sizes with keyword arguments")
        )
    bad = sorted(set(overrides) - set(_OVERRIDABLE))
    if bad:
        raise ValueError(
            describe(None, f"cannot override {bad}", expected=f"overrides among {list(_OVERRIDABLE)}",
                     fix="the other fields follow from the variant; choose another variant instead")
        )
    size = PRESETS[key]
    values: dict[str, Any] = {
        "in_channels": size.in_channels,
        "encoder_channels": size.encoder_channels,
        "global_shape": size.global_shape,
        "decoder_width": size.decoder_width,
    }
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    if "encoder_channels" in overrides and "in_channels" not in overrides:
        values["in_channels"] = values["encoder_channels"][0]
    elif "in_channels" in overrides and "encoder_channels" not in overrides:
        values["encoder_channels"] = (values["in_channels"], *size.encoder_channels[1:])
    if "latent_shape" not in values:
        values["latent_shape"] = _derived_latent_shape(values["global_shape"], values["encoder_channels"])
    spec = VARIANT_SPECS[name]
    return ModelConfig(
        variant=name,
        preset=key,
        skip_encoder=spec.skip_encoder,
        patch_mode=spec.patch_mode,
        aux_head=spec.aux_head,
        **values,
    )


def _derived_latent_shape(global_shape: Any, encoder_channels: Any) -> Any:
    """``global_shape / 2^blocks`` when that is exact; otherwise a placeholder that fails validation."""
    try:
        factor = 2 ** (len(encoder_channels) - 1)
        return tuple(int(side) // factor for side in global_shape)
    except (TypeError, ValueError):
        return ()

