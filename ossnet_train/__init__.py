"""ossnet_train: the OSS-Net model (one definition for training and export), checkpoints and training.

Names are imported on first use (PEP 562), so ``import ossnet_train.config`` stays light and
torch-free; ``from ossnet_train import create_model`` imports the model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CHECKPOINT_FORMAT",
    "PAU",
    "PRESETS",
    "VARIANTS",
    "Checkpoint",
    "EncoderOutput",
    "ModelConfig",
    "OSSNet",
    "OSSNetOutput",
    "build_model",
    "create_model",
    "load_checkpoint",
    "load_model",
    "model_config",
    "register_model",
    "save_checkpoint",
]

_HOMES = {
    "PRESETS": "config",
    "VARIANTS": "config",
    "ModelConfig": "config",
    "model_config": "config",
    "PAU": "pau",
    "EncoderOutput": "encoder",
    "OSSNet": "model",
    "OSSNetOutput": "model",
    "build_model": "registry",
    "create_model": "registry",
    "register_model": "registry",
    "CHECKPOINT_FORMAT": "checkpoint",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
}

if TYPE_CHECKING:
    from ossnet_train.checkpoint import (
        CHECKPOINT_FORMAT,
        Checkpoint,
        load_checkpoint,
        load_model,
        save_checkpoint,
    )
    from ossnet_train.config import PRESETS, VARIANTS, ModelConfig, model_config
    from ossnet_train.encoder import EncoderOutput
    from ossnet_train.model import OSSNet, OSSNetOutput
    from ossnet_train.pau import PAU
    from ossnet_train.registry import build_model, create_model, register_model


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ossnet_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ossnet_train.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
