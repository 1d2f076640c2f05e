"""Inference backends behind one checked interface (:class:`~ossnet_deploy.backends.base.Backend`).

* :class:`~ossnet_deploy.backends.ort.OrtBackend`: ONNX Runtime on CPU or CUDA;
* :class:`~ossnet_deploy.backends.trt.TrtBackend`: the TensorRT engines ``ossnet-export --trt``
  wrote, run through ONNX Runtime's TensorRT execution provider (tensorrt imported lazily).

Nothing heavy is imported here: onnxruntime loads when a backend is created.
"""

from __future__ import annotations

from ossnet_deploy.backends.base import Backend as Backend
from ossnet_deploy.backends.base import TensorSpec as TensorSpec
from ossnet_deploy.backends.base import check_feed as check_feed

__all__ = ["Backend", "TensorSpec", "check_feed"]
