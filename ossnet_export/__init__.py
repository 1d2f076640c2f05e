"""ossnet-export: verified, self-describing encoder and decoder ONNX graphs of OSS-Net checkpoints.

``export_checkpoint(checkpoint, destination)`` writes ``encoder.onnx`` and ``decoder.onnx``
(plus ``decoder.fp16.onnx`` and TensorRT engines on request), each verified against PyTorch
and carrying the metadata of :mod:`ossnet_deploy.metadata`; ``verify_export`` re-checks a folder.
The command line is ``ossnet-export`` (:mod:`ossnet_export.cli`); docs/export.md describes both.
This package needs torch, onnx and onnxscript (``pip install 'ossnet[export]'``); the runtime,
``ossnet_deploy``, never imports it.

The names below are imported on first use, so ``ossnet-export --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExportOptions",
    "ExportResult",
    "ParityError",
    "ParityReport",
    "default_output_dir",
    "export_checkpoint",
    "export_model",
    "load_checkpoint",
    "pair_id",
    "verify_export",
]

_HOMES = {
    "ExportOptions": "ossnet_export.export_onnx",
    "ExportResult": "ossnet_export.export_onnx",
    "default_output_dir": "ossnet_export.export_onnx",
    "export_checkpoint": "ossnet_export.export_onnx",
    "export_model": "ossnet_export.export_onnx",
    "load_checkpoint": "ossnet_export.export_onnx",
    "pair_id": "ossnet_export.export_onnx",
    "verify_export": "ossnet_export.export_onnx",
    "ParityError": "ossnet_export.verify",
    "ParityReport": "ossnet_export.verify",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'ossnet_export' has no attribute {name!r}")
