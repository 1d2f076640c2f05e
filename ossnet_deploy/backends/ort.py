"""ONNX Runtime backend: CPU, CUDA and (through backends/trt.py) TensorRT.

One ``InferenceSession`` per graph. Session options (why each is set):

* ``intra_op_num_threads``: physical cores available to this process by default
  (:func:`ossnet_deploy.devices.default_threads`), not every logical CPU of the machine;
* ``enable_cpu_mem_arena`` / ``enable_mem_pattern``: **off** by default. The decoder is called
  with a different query count almost every time; ORT's CPU arena keeps the largest blocks it
  ever allocated and memory patterns are planned per shape, so both grow the resident set
  without speeding anything up. Measured in ``benchmarks/bench_segmenter.py --study arena``
  (docs/runtime.md, "CPU memory arena");
* ``graph_optimization_level``: all optimisations (the exported graphs are plain fp32 ops);
* log severity "error": ORT's warnings about unused initialisers or providers are noise for
  users; a provider that silently fails to load is detected below instead.

A GPU provider that is installed but does not load (missing CUDA or cuDNN libraries) makes
ORT fall back to CPU with a log line only. We compare ``session.get_providers()`` with the
plan: for ``auto`` that gives one warning with the remedy, for an explicit ``cuda``/``trt``
a :class:`DependencyError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ossnet_deploy.backends.base import (
    Backend,
    check_feed,
    check_model_file,
    check_threads,
    ort_dtype_name,
    ort_tensor_spec,
)
from ossnet_deploy.devices import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TRT_PROVIDER,
    ProviderPlan,
    default_threads,
    plan_providers,
    warn_if_conflicting_runtimes,
    warn_once,
)
from ossnet_deploy.errors import DependencyError, ModelFormatError, OssnetError, describe

__all__ = ["OrtBackend", "ort_dtype_name"]

_PRIMARY_PROVIDER = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "trt": TRT_PROVIDER}


class OrtBackend(Backend):
    """One ONNX graph in an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file.
        device: a device string (``"auto"``, ``"cpu"``, ``"cuda:1"``, ...) or a ready
            :class:`~ossnet_deploy.devices.ProviderPlan`.
        threads: CPU threads per session (``intra_op_num_threads``); default: the physical
            cores this process may use.
        cpu_arena: ORT's CPU memory arena (``enable_cpu_mem_arena``); off by default, see the
            module docstring.
        mem_pattern: ORT's memory-pattern planning (``enable_mem_pattern``); off by default.

    Raises:
        ModelFormatError: the file is missing or ONNX Runtime cannot load it.
        DependencyError: an explicitly requested GPU provider is not installed or does not load.
        InputError: an unknown device string or a thread count below 1.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str | ProviderPlan = "cpu",
        threads: int | None = None,
        cpu_arena: bool = False,
        mem_pattern: bool = False,
    ) -> None:
        import onnxruntime

        self.path = check_model_file(path)
        check_threads(threads)
        warn_if_conflicting_runtimes()
        plan = device if isinstance(device, ProviderPlan) else plan_providers(device)
        if plan.kind != "cpu" and hasattr(onnxruntime, "preload_dlls"):
            # Finds CUDA/cuDNN shipped as NVIDIA pip wheels; harmless when they are absent.
            try:
                onnxruntime.preload_dlls()
            except Exception:
                # Best effort: a failed preload shows up as a provider fallback below.
                pass
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else default_threads()
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = bool(cpu_arena)
        options.enable_mem_pattern = bool(mem_pattern)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.threads = options.intra_op_num_threads
        self.cpu_arena = bool(cpu_arena)
        self.mem_pattern = bool(mem_pattern)
        self._session = self._create_session(onnxruntime, options, plan)
        self.plan = self._confirm_providers(plan)
        self.device = self.plan.label
        self.inputs = {a.name: ort_tensor_spec(a) for a in self._session.get_inputs()}
        self.outputs = {a.name: ort_tensor_spec(a) for a in self._session.get_outputs()}
        meta = self._session.get_modelmeta()
        self.metadata_props: dict[str, str] = dict(meta.custom_metadata_map)
        self.producer_name: str = meta.producer_name
        self._output_names = list(self.outputs)

    def _create_session(self, onnxruntime: Any, options: Any, plan: ProviderPlan) -> Any:
        try:
            return onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=list(plan.providers),
                provider_options=[dict(o) for o in plan.options] if plan.options else None,
            )
        except OssnetError:
            raise
        except Exception as exc:
            raise load_error(self.path, exc) from exc

    def _confirm_providers(self, plan: ProviderPlan) -> ProviderPlan:
        """The plan actually in force: ORT drops a GPU provider that fails to load without raising."""
        if plan.kind == "cpu":
            return plan
        active = tuple(self._session.get_providers())
        wanted = _PRIMARY_PROVIDER[plan.kind]
        if wanted in active:
            return plan
        problem = f"{wanted} is installed but did not load for {self.path.name}"
        found = f"session providers {', '.join(active)}"
        if plan.request.explicit_gpu:
            raise DependencyError(describe(self.path, problem, expected=wanted, found=found, fix=_load_fix(wanted)))
        warn_once(describe(self.path, problem + "; running on the CPU", expected=wanted, found=found,
                           fix=_load_fix(wanted)))
        if CUDA_PROVIDER in active:
            return ProviderPlan("cuda", plan.index, (CUDA_PROVIDER, CPU_PROVIDER), plan.options[-2:], plan.request)
        return ProviderPlan("cpu", 0, (CPU_PROVIDER,), ({},), plan.request)

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers of the live session, best first."""
        return tuple(self._live_session().get_providers())

    def _live_session(self) -> Any:
        if self._session is None:
            raise OssnetError(describe(self.path, "the backend was closed", fix="create a new backend"))
        return self._session

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._live_session().run(self._output_names, dict(feed))
        return dict(zip(self._output_names, results, strict=True))

    def bind(self, constants: Mapping[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        """A runner with ``constants`` fixed; on a GPU they are copied to the device once.

        On CPU, feeding the same numpy array each call costs nothing (ORT wraps the buffer),
        so the base version is used. On CUDA/TensorRT the constants (the latent) become
        device ``OrtValue`` s bound through an ``IOBinding``; only the per-chunk inputs travel.
        The runner holds its own binding: use it from one thread.
        """
        if self.plan.kind == "cpu":
            return super().bind(constants)
        import onnxruntime

        fixed = dict(constants)
        device_values = {
            name: onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", self.plan.index)
            for name, value in fixed.items()
        }
        session = self._live_session()
        binding = session.io_binding()
        for name, value in device_values.items():
            binding.bind_ortvalue_input(name, value)

        def run_bound(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            check_feed(self.path, self.inputs, {**fixed, **feed})
            for name, value in feed.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in self._output_names:
                binding.bind_output(name, "cpu")
            session.run_with_iobinding(binding)
            return dict(zip(self._output_names, binding.copy_outputs_to_cpu(), strict=True))

        return run_bound

    def close(self) -> None:
        """Drop the session (ORT frees its memory when the last reference goes)."""
        self._session = None


def load_error(path: Path, exc: Exception) -> ModelFormatError:
    """The error for a graph ONNX Runtime could not load (``exc``: whatever ORT raised)."""
    # ORT raises several pybind types (InvalidProtobuf, Fail, InvalidGraph, NoSuchFile).
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelFormatError(
        describe(path, "ONNX Runtime cannot load this graph", expected="an ONNX graph written by ossnet-export",
                 found=f"{type(exc).__name__}: {reason[:300]}",
                 fix="re-export the model with ossnet-export, or check that the file was copied completely")
    )


def _load_fix(provider: str) -> str:
    if provider == TRT_PROVIDER:
        return ("install the TensorRT version this onnxruntime-gpu build needs (pip install 'ossnet[trt]') "
                "and check CUDA/cuDNN, or pass device='cuda' / 'cpu'")
    return ("install the CUDA and cuDNN versions this onnxruntime-gpu build needs (see "
            "onnxruntime.get_build_info()), or pass device='cpu' / '-d cpu'")
