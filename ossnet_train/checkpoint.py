"""Checkpoints: one ``.pt`` file that rebuilds a trained model (docs/design.md#model-files-and-metadata).

The file is ``torch.save`` of a plain dict::

    {
        "checkpoint_format": 1,            # int, CHECKPOINT_FORMAT
        "model_config": {...},             # the model config's to_dict() (JSON values)
        "preprocess": {...},               # PreprocessConfig.to_dict() (JSON values)
        "state_dict": {name: tensor},      # plain CPU tensors
        "provenance": {...},               # torch/python/ossnet versions, git commit, time, training info
    }

Only tensors and JSON values (dict, list, str, int, float, bool, None) are inside, no custom
classes, so it loads with ``torch.load(weights_only=True)`` (no code runs on load) and across
torch versions. Writing goes to a temporary name in the destination folder, renamed into place;
an existing file is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_train.registry import build_model, config_from_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "weights_sha256",
]

#: format written by this version; readers accept 1..CHECKPOINT_FORMAT and refuse newer ones.
CHECKPOINT_FORMAT = 1
_KEYS = ("checkpoint_format", "model_config", "preprocess", "state_dict", "provenance")
_RESAVE_FIX = "re-create it with ossnet_train.checkpoint.save_checkpoint(path, model, preprocess)"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's contents, as read from ``path`` (None for one not yet saved).

    ``state_dict`` maps parameter/buffer names to CPU tensors; the other fields are JSON values.
    """

    checkpoint_format: int
    model_config: dict[str, Any]
    preprocess: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any]
    path: Path | None = None

    def config(self) -> Any:
        """The model config object (``ModelConfig`` for OSS-Net) rebuilt from ``model_config``.

        Raises:
            ModelFormatError: the stored config is invalid (the message names the file).
        """
        return config_from_dict(self.model_config, source=_name(self.path))

    def weights_sha256(self) -> str:
        """:func:`weights_sha256` of ``state_dict``: the export pair id."""
        return weights_sha256(self.state_dict)


def _name(path: Path | None) -> str | None:
    return None if path is None else os.fspath(path)


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the weights: every name, dtype, shape and the raw bytes, in sorted name order.

    Independent of the file (pickle layout, torch version), so two files with the same weights
    have the same id; the exporter stores it as ``ossnet.pair_id``.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain_json(value: Any, what: str) -> Any:
    """``value`` round-tripped through JSON: plain dict/list/str/int/float/bool/None only."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must hold JSON values only (dict, list, str, int, float, bool, None): {exc}") from None


def _git_commit() -> str | None:
    """The commit of the source tree this package runs from, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _package_version() -> str | None:
    try:
        return version("ossnet")
    except PackageNotFoundError:
        return None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    preprocess: Any,
    *,
    training: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    domain: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (its ``config`` and weights) and ``preprocess`` to one ``.pt`` file.

    Args:
        path: destination file; missing parent folders are created.
        model: a model built by :func:`~ossnet_train.registry.build_model` (it has ``.config``
            with ``to_dict()``); its weights are copied to CPU.
        preprocess: the ``PreprocessConfig`` the model was trained with (anything with
            ``to_dict()``) or its dict; stored as a dict of JSON values.
        training: facts about the run (epochs, data, seed, ...) as JSON values; stored under
            ``provenance["training"]``.
        labels: output label value -> name (e.g. ``{"1": "white_matter"}``), stored under
            ``provenance["labels"]``; the exporter writes them into the graphs' metadata.
        domain: what the training inputs looked like (``ossnet_deploy.domain.ModelDomain.to_dict()``),
            stored under ``provenance["domain"]``; the exporter writes it into the encoder's metadata.
        overwrite: replace an existing file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: the model has no config, or ``preprocess``/``training`` are not JSON values.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ValueError(f"{type(model).__name__} has no .config with to_dict(); build it with build_model(config)")
    if hasattr(preprocess, "to_dict"):
        preprocess = preprocess.to_dict()
    if not isinstance(preprocess, Mapping):
        raise ValueError(f"preprocess must be a PreprocessConfig or a dict, got {type(preprocess).__name__}")
    provenance = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ossnet": _package_version(),
        "git_commit": _git_commit(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "training": dict(training) if training is not None else None,
    }
    if labels is not None:
        provenance["labels"] = {str(value): str(name) for value, name in labels.items()}
    if domain is not None:
        provenance["domain"] = dict(domain)
    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    payload = {
        "checkpoint_format": CHECKPOINT_FORMAT,
        "model_config": _plain_json(config.to_dict(), "model config"),
        "preprocess": _plain_json(dict(preprocess), "preprocess"),
        "state_dict": state,
        "provenance": _plain_json(provenance, "provenance/training"),
    }
    target = Path(path)
    with atomic_write(target, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return target


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` (``weights_only`` load).

    Raises:
        ModelFormatError: the file is missing, unreadable (truncated, corrupted, not a torch
            file), foreign (e.g. a bare state dict or an arbitrary pickle), malformed, or of a
            newer ``checkpoint_format``; the message names the file and the fix.
    """
    source = Path(path)
    if not source.is_file():
        raise ModelFormatError(
            describe(source, "checkpoint not found", expected="an ossnet checkpoint file (.pt)",
                     found="a folder" if source.is_dir() else "nothing at this path",
                     fix="check the path")
        )
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours some messages
        detail = text.splitlines()[0] if text else ""
        raise ModelFormatError(
            describe(source, "cannot read checkpoint", expected="a torch file of tensors and plain values",
                     found=f"{type(exc).__name__}: {detail[:200]}",
                     fix="the file is damaged or not an ossnet checkpoint; copy it again or " + _RESAVE_FIX)
        ) from None
    return _checked(data, source)


def _checked(data: Any, source: Path) -> Checkpoint:
    """Validate the loaded object's layout and return it as a :class:`Checkpoint`."""
    if not isinstance(data, Mapping) or "checkpoint_format" not in data:
        if isinstance(data, Mapping) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            found = f"a bare state dict ({len(data)} tensors)"
        elif isinstance(data, Mapping):
            found = f"a dict with keys {sorted(map(str, data))[:8]}"
        else:
            found = f"a {type(data).__name__}"
        raise ModelFormatError(
            describe(source, "not an ossnet checkpoint", expected=f"a dict with keys {list(_KEYS)}",
                     found=found, fix="load the weights into a built model and " + _RESAVE_FIX)
        )
    version = data["checkpoint_format"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFormatError(
            describe(source, "invalid checkpoint_format", expected="an int >= 1", found=repr(version), fix=_RESAVE_FIX)
        )
    if version > CHECKPOINT_FORMAT:
        raise ModelFormatError(
            describe(source, "checkpoint written by a newer ossnet",
                     expected=f"checkpoint_format <= {CHECKPOINT_FORMAT}", found=f"checkpoint_format {version}",
                     fix="upgrade: pip install -U ossnet")
        )
    missing = [key for key in _KEYS if key not in data]
    if missing:
        raise ModelFormatError(
            describe(source, "checkpoint lacks entries", expected=f"keys {list(_KEYS)}", found=f"missing {missing}",
                     fix=_RESAVE_FIX)
        )
    for key in ("model_config", "preprocess", "provenance"):
        if not isinstance(data[key], Mapping):
            raise ModelFormatError(
                describe(source, f"checkpoint entry {key!r} is not a dict", found=type(data[key]).__name__,
                         fix=_RESAVE_FIX)
            )
    state = data["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFormatError(
            describe(source, "checkpoint state_dict is not a dict of named tensors",
                     found=type(state).__name__, fix=_RESAVE_FIX)
        )
    return Checkpoint(
        checkpoint_format=version,
        model_config=dict(data["model_config"]),
        preprocess=dict(data["preprocess"]),
        state_dict=dict(state),
        provenance=dict(data["provenance"]),
        path=source,
    )


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model of a checkpoint and load its weights strictly; returned in eval mode.

    Raises:
        ModelFormatError: as :func:`load_checkpoint`, or the stored config is invalid, or the
            weights do not fit the architecture (missing, unexpected or mis-shaped tensors).
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint.config()
    try:
        model = build_model(config)
    except ValueError as exc:
        raise ModelFormatError(describe(checkpoint.path, str(exc), fix=_RESAVE_FIX)) from None
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(
            describe(checkpoint.path, "weights do not fit the stored model config",
                     found=" ".join(str(exc).split())[:500], fix=_RESAVE_FIX)
        ) from None
    return model.eval(), checkpoint
