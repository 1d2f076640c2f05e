"""Model registry: build any ossnet network from its config, and rebuild it from a config dict.

Every model config is a frozen dataclass with an ``architecture`` field, ``to_dict()`` and
``from_dict(data, source=None)``. The registry maps an architecture name to a config type and a
builder ``(config) -> nn.Module``:

* ``"ossnet"``: :class:`~ossnet_train.config.ModelConfig` -> :class:`~ossnet_train.model.OSSNet`;
* ``"unet3d"``, ``"unet2d"``: ``UNetConfig`` -> ``build_unet`` of ``ossnet_train.unet``.

Built-in entries are listed in ``_BUILTIN`` as ``module:attribute`` names and imported only when
first used, so importing the registry imports no model code and no registration depends on
import order. Other architectures (experiments, plug-ins) register explicitly::

    @register_model("my_net", MyNetConfig)
    def build_my_net(config: MyNetConfig) -> nn.Module: ...

:func:`build_model` dispatches on ``config.architecture``; checkpoints call
:func:`config_from_dict` on the stored dict, which dispatches on its ``"architecture"`` key.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_train.config import VARIANTS, model_config

__all__ = ["VARIANTS", "architectures", "build_model", "config_from_dict", "create_model", "register_model"]

Builder = Callable[[Any], nn.Module]
_B = TypeVar("_B", bound=Builder)

#: architecture -> (config type "module:attr", builder "module:attr"), imported on first use.
_BUILTIN: dict[str, tuple[str, str]] = {
    "ossnet": ("ossnet_train.config:ModelConfig", "ossnet_train.model:OSSNet"),
    "unet3d": ("ossnet_train.unet:UNetConfig", "ossnet_train.unet:build_unet"),
    "unet2d": ("ossnet_train.unet:UNetConfig", "ossnet_train.unet:build_unet"),
}
_REGISTERED: dict[str, tuple[type, Builder]] = {}


def register_model(architecture: str, config_type: type) -> Callable[[_B], _B]:
    """Decorator registering ``builder(config) -> nn.Module`` for configs of ``architecture``.

    ``config_type`` must provide ``from_dict(data, source=None)``. Re-registering a name
    replaces the entry (so a notebook can redefine it); built-in names cannot be taken.
    """
    if architecture in _BUILTIN:
        raise ValueError(f"architecture {architecture!r} is built in; choose another name")

    def decorate(builder: _B) -> _B:
        _REGISTERED[architecture] = (config_type, builder)
        return builder

    return decorate


def architectures() -> tuple[str, ...]:
    """Every architecture name the registry knows (built in and registered)."""
    return (*_BUILTIN, *sorted(_REGISTERED))


def _resolve(architecture: object) -> tuple[type, Builder]:
    """(config type, builder) of ``architecture``; ValueError when unknown or not importable."""
    if isinstance(architecture, str) and architecture in _REGISTERED:
        return _REGISTERED[architecture]
    if not isinstance(architecture, str) or architecture not in _BUILTIN:
        raise ValueError(
            describe(None, f"unknown architecture {architecture!r}", expected=f"one of {list(architectures())}",
                     fix="use a known architecture or register_model() yours first")
        )
    loaded = []
    for target in _BUILTIN[architecture]:
        module_name, attr = target.split(":")
        try:
            loaded.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                describe(None, f"architecture {architecture!r} is not available", expected=f"{target} to exist",
                         found=f"{type(exc).__name__}: {exc}", fix="install a complete ossnet")
            ) from exc
    return loaded[0], loaded[1]


def build_model(config: Any) -> nn.Module:
    """A freshly initialised network for ``config`` (dispatch on ``config.architecture``).

    Builds on the current default device, so ``with torch.device("meta"): build_model(cfg)``
    builds without allocating (parameter counts, shape checks of the large presets).

    Raises:
        ValueError: unknown architecture, or a config of the wrong type for it.
    """
    architecture = getattr(config, "architecture", None)
    config_type, builder = _resolve(architecture)
    if not isinstance(config, config_type):
        raise ValueError(
            f"architecture {architecture!r} expects a {config_type.__name__}, got {type(config).__name__}"
        )
    return builder(config)


def config_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> Any:
    """Rebuild a model config from its ``to_dict()`` form (dispatch on ``data["architecture"]``).

    Raises:
        ModelFormatError: ``data`` names no known architecture or fails the config's validation;
            the message names ``source``.
    """
    architecture = data.get("architecture") if isinstance(data, Mapping) else None
    try:
        config_type, _ = _resolve(architecture)
    except ValueError as exc:
        raise ModelFormatError(describe(source, str(exc))) from None
    return config_type.from_dict(data, source=source)


def create_model(variant: str, preset: str, **overrides: Any) -> nn.Module:
    """``build_model(model_config(variant, preset, **overrides))``: an OSS-Net by name.

    ``variant``: ``"onet"``/``"O-Net"``, ``"a"`` .. ``"d"`` (any case); ``preset``: ``"brats"``,
    ``"lits"`` or ``"demo"``; ``overrides``: sizes, see :func:`~ossnet_train.config.model_config`.
    """
    return build_model(model_config(variant, preset, **overrides))
