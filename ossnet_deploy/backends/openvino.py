"""OpenVINO backend for the CPU: the decoder with its elementwise chains fused.

Why it exists: on a CPU, ONNX Runtime runs every node of the decoder as its own pass over the
``(queries, width)`` activations. The PAU activations are about 20 such passes each (a rational
function in Mul/Add/Abs/Div nodes), and they take about 40 % of the demo decoder's time
(docs/benchmarks.md). OpenVINO's CPU plugin compiles each chain of elementwise nodes into one
JIT kernel ("snippets"), which needs **static shapes**. So this backend compiles the graph for
fixed query counts (``buckets``, default one: 1024) and runs any query count as full buckets plus
one zero-padded tail; decoder rows are independent (running BatchNorm statistics), so padding
cannot change the real rows.

Loading: ONNX Runtime's basic optimisation level (hardware-independent rewrites, chiefly constant
folding) runs first. The exported decoder *builds* its 343x343 patch matrices from the patch
convolution weights with a Conv node on constants; ONNX Runtime folds that in milliseconds,
OpenVINO's own folding takes over 2 s. The folded graph goes to a temporary file, OpenVINO
reads it, and the file is deleted; the graph's inputs, outputs and metadata are those of the
original file.

Precision: ``INFERENCE_PRECISION_HINT`` is pinned to f32 (OpenVINO would pick bf16 on CPUs that
have it). Results equal ONNX Runtime's up to float rounding (tests/deploy/test_openvino.py).

Threads: ``INFERENCE_NUM_THREADS`` (default: the physical cores this process may use), one
stream, latency hint. Thread safety: every ``run`` takes an infer request from a pool (a new one
when all are busy), so concurrent calls never share one.

openvino is a core dependency on the platforms it ships wheels for (x86-64 and ARM64; elsewhere
``pip install 'ossnet[openvino]'`` names it), imported only when a backend is created. ``auto``
on a CPU uses this backend for the decoder when the import works (``ossnet_deploy.model``).
"""

from __future__ import annotations

import os
import queue
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ossnet_deploy.backends.base import Backend, TensorSpec, check_model_file, check_threads, ort_tensor_spec
from ossnet_deploy.backends.ort import load_error
from ossnet_deploy.devices import CPU_PROVIDER, default_threads
from ossnet_deploy.errors import DependencyError, InputError, ModelFormatError, OssnetError, describe

__all__ = ["DEFAULT_BUCKETS", "OPENVINO_INSTALL_FIX", "OpenVinoBackend", "import_openvino"]

DEFAULT_BUCKETS: tuple[int, ...] = (1024,)
"""Query counts the decoder is compiled for. 1024 runs as fast per query as 2048 or 4096 and pads
at most 1023 rows per call (the tail of each scheduler chunk: 1.3 % more rows on the demo
subject, 12.5 % on the BraTS-like benchmark case, whose rounds are small).
Every bucket is a compiled model with its own copy of the weights: a second one of 128 for small
tails saved no measurable time on the benchmark workloads and cost 19 MB (demo) to 70 MB (brats)
of peak memory (docs/runtime.md). About 0.3 s to compile each."""

OPENVINO_INSTALL_FIX = "pip install 'ossnet[openvino]'  (or: pip install openvino), or use device='cpu'"


def import_openvino() -> Any:
    """The ``openvino`` module, or :class:`DependencyError` with the install command."""
    try:
        import openvino
    except ImportError as exc:
        raise DependencyError(
            describe(None, "device 'openvino' needs the openvino package", expected="openvino importable",
                     found=f"ImportError: {exc}", fix=OPENVINO_INSTALL_FIX)
        ) from None
    return openvino


class OpenVinoBackend(Backend):
    """One ONNX graph compiled by OpenVINO for the CPU, at static query counts.

    Args:
        path: the ``.onnx`` file.
        threads: CPU threads (``INFERENCE_NUM_THREADS``); default: the physical cores available.
        buckets: query counts to compile for (positive); used only when the graph has a dynamic
            axis. A call runs as full pieces of the largest bucket and a tail padded to the
            smallest bucket that holds it. Every dynamic axis must carry the same size name
            (``num_queries``).

    Raises:
        ModelFormatError: the file is missing, cannot be loaded, or has dynamic axes of several names.
        DependencyError: openvino is not installed.
        InputError: a thread count below 1 or invalid buckets.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ) -> None:
        self.path = check_model_file(path)
        check_threads(threads)
        if not buckets or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b >= 1 for b in buckets):
            raise InputError(describe(None, "invalid buckets", expected="positive query counts, e.g. (1024,)",
                                      found=repr(tuple(buckets)), fix="pass buckets=(1024,)"))
        sizes = sorted({int(b) for b in buckets}, reverse=True)
        openvino = import_openvino()
        self.threads = threads if threads is not None else default_threads()
        self.device = "openvino"
        with tempfile.TemporaryDirectory(prefix="ossnet-ov-") as tmp:
            folded = Path(tmp) / "folded.onnx"
            self._fold_constants(folded)
            core = openvino.Core()
            try:
                model = core.read_model(str(folded))
            except Exception as exc:
                raise ModelFormatError(
                    describe(self.path, "OpenVINO cannot read this graph", expected="an ONNX graph written by "
                             "ossnet-export", found=f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                             fix="re-export the model with ossnet-export, or use device='cpu'")
                ) from exc
            self._dynamic = self._dynamic_axes()
            self.buckets: tuple[int, ...] = tuple(sizes) if self._dynamic else ()
            config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                      "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            self._compiled: dict[int, Any] = {}
            for size in self.buckets or (0,):
                if self._compiled:
                    model = core.read_model(str(folded))  # reshape() changes the model in place
                if size:
                    model.reshape({name: [size if isinstance(d, str) else d for d in spec.shape]
                                   for name, spec in self.inputs.items()})
                self._compiled[size] = core.compile_model(model, "CPU", config)
        self._pools: dict[int, queue.SimpleQueue[Any]] | None = {size: queue.SimpleQueue() for size in self._compiled}

    def _fold_constants(self, target: Path) -> None:
        """ONNX Runtime's basic (hardware-independent) optimisations into ``target``; specs and metadata."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(self.path), sess_options=options, providers=[CPU_PROVIDER])
        except Exception as exc:
            raise load_error(self.path, exc) from exc
        self.inputs: dict[str, TensorSpec] = {a.name: ort_tensor_spec(a) for a in session.get_inputs()}
        self.outputs: dict[str, TensorSpec] = {a.name: ort_tensor_spec(a) for a in session.get_outputs()}
        meta = session.get_modelmeta()
        self.metadata_props: dict[str, str] = dict(meta.custom_metadata_map)
        self.producer_name: str = meta.producer_name

    def _dynamic_axes(self) -> dict[str, int]:
        """Input name -> its dynamic axis, for inputs that have one; all carry one size name."""
        specs = (*self.inputs.values(), *self.outputs.values())
        names = {d for spec in specs for d in spec.shape if isinstance(d, str)}
        per_tensor = max((sum(isinstance(d, str) for d in spec.shape) for spec in specs), default=0)
        if len(names) > 1 or "" in names or per_tensor > 1:
            raise ModelFormatError(
                describe(self.path, "the graph's dynamic axes cannot be compiled to fixed sizes",
                         expected="one named dynamic size (num_queries), on one axis per tensor",
                         found=", ".join(f"{s.name} {s.shape}" for s in specs), fix="use device='cpu' for this graph")
            )
        return {name: next(a for a, d in enumerate(spec.shape) if isinstance(d, str))
                for name, spec in self.inputs.items() if any(isinstance(d, str) for d in spec.shape)}

    def _request(self, size: int) -> Any:
        if self._pools is None:
            raise OssnetError(describe(self.path, "the backend was closed", fix="create a new backend"))
        try:
            return self._pools[size].get_nowait()
        except queue.Empty:
            return self._compiled[size].create_infer_request()

    def _infer(self, size: int, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request(size)
        try:
            # share_inputs: the request reads the (C-contiguous, float32) arrays in place instead of
            # copying a chunk's patches into its own tensors first; the call is synchronous.
            request.infer({name: np.ascontiguousarray(value, dtype=self.inputs[name].dtype)
                           for name, value in feed.items()}, share_inputs=True)
            # The request's output tensors are reused by its next inference: copy them out.
            results = {name: np.array(request.get_tensor(name).data, copy=True) for name in self.outputs}
        finally:
            self._pools[size].put(request)  # type: ignore[index]
        return results

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._dynamic:
            return self._infer(0, feed)
        name, axis = next(iter(self._dynamic.items()))
        rows = int(feed[name].shape[axis])
        out_axis = {n: next(a for a, d in enumerate(s.shape) if isinstance(d, str)) for n, s in self.outputs.items()}
        outputs = {n: np.empty([rows if isinstance(d, str) else d for d in s.shape], dtype=s.dtype)
                   for n, s in self.outputs.items()}
        start = 0
        while start < rows:
            left = rows - start
            size = min((b for b in self.buckets if b >= left), default=self.buckets[0])
            piece = min(size, left)
            part = {n: _rows(v, self._dynamic[n], start, piece, size) if n in self._dynamic else v
                    for n, v in feed.items()}
            for n, value in self._infer(size, part).items():
                np.copyto(_axis_slice(outputs[n], out_axis[n], start, start + piece),
                          _axis_slice(value, out_axis[n], 0, piece))
            start += piece
        return outputs

    def close(self) -> None:
        """Drop the compiled models and their requests. Idempotent."""
        self._pools = None
        self._compiled = {}


def _axis_slice(value: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """``value[start:stop]`` along ``axis`` (a view)."""
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, stop)
    return value[tuple(index)]


def _rows(value: np.ndarray, axis: int, start: int, piece: int, size: int) -> np.ndarray:
    """Rows ``start .. start + piece`` of ``value`` along ``axis``, zero-padded to ``size`` rows."""
    part = _axis_slice(value, axis, start, start + piece)
    if piece == size:
        return part
    shape = list(value.shape)
    shape[axis] = size
    padded = np.zeros(shape, dtype=value.dtype)
    _axis_slice(padded, axis, 0, piece)[...] = part
    return padded
