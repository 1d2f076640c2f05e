"""ossnet_deploy: the torch-free OSS-Net runtime (numpy, onnxruntime, nibabel).

Importing the package does no work: submodules (and onnxruntime) load only when used.
``ossnet_deploy.Segmenter`` and ``ossnet_deploy.SegmentationStats`` are resolved on first
access (PEP 562 module ``__getattr__``), so ``import ossnet_deploy`` stays cheap.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = ["SegmentationStats", "Segmenter", "__version__"]

try:
    __version__: str = version("ossnet")
except PackageNotFoundError:  # running from a source checkout that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from ossnet_deploy.segmenter import SegmentationStats as SegmentationStats
    from ossnet_deploy.segmenter import Segmenter as Segmenter

_LAZY = {"Segmenter": "ossnet_deploy.segmenter", "SegmentationStats": "ossnet_deploy.segmenter"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ossnet_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
