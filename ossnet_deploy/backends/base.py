"""The one interface every inference backend offers, and the input check they share.

A backend runs one graph: it knows its inputs and outputs as :class:`TensorSpec` (name, dtype,
shape with symbolic dimensions such as ``num_queries``; :class:`ossnet_deploy.metadata.TensorSpec`,
the same type the model metadata uses, where ``""`` marks an unnamed dynamic size) and checks every feed by name, dtype
and shape *before* running, so a wrong call fails with a message naming the tensor, what was
expected and what was found instead of an engine-specific error (Polygraphy's
``check_inputs``, minus raising through a logger).

Subclasses implement only :meth:`Backend._run` (and :meth:`Backend.close` when they hold
resources); :meth:`Backend.run` is the checked entry point.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ossnet_deploy.errors import InputError, ModelFormatError, describe
from ossnet_deploy.metadata import TensorSpec

__all__ = [
    "Backend",
    "TensorSpec",
    "check_feed",
    "check_model_file",
    "check_threads",
    "describe_spec",
    "ort_dtype_name",
    "ort_tensor_spec",
    "spec_matches",
]

# ONNX Runtime's type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def check_model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; :class:`ModelFormatError` when it is not an existing file."""
    file = Path(path)
    if not file.is_file():
        raise ModelFormatError(
            describe(file, "model file not found", expected="an .onnx file written by ossnet-export",
                     found="nothing" if not file.exists() else "a folder",
                     fix="check the path, or export the model with ossnet-export")
        )
    return file


def check_threads(threads: object) -> None:
    """:class:`InputError` unless ``threads`` is None or an int >= 1 (bools refused)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(describe(None, "invalid thread count", expected="an int >= 1 or None (physical cores)",
                                  found=repr(threads), fix="pass threads=None or a positive int"))


def ort_dtype_name(type_string: str) -> str:
    """numpy dtype name of an ONNX Runtime type string (``"tensor(float)"`` -> ``"float32"``)."""
    return _ORT_TYPES.get(type_string, type_string)


def ort_tensor_spec(arg: Any) -> TensorSpec:
    """The :class:`TensorSpec` of an ONNX Runtime ``NodeArg`` (``session.get_inputs()`` / ``get_outputs()``).

    Shared by the backends that learn their graph's signature from an onnxruntime session (ONNX
    Runtime itself, and OpenVINO, which folds constants through one). ORT gives an int (fixed), a
    str (named dynamic) or None (unnamed dynamic, stored as ``""``) per axis.
    """
    shape = tuple(d if isinstance(d, int | str) else "" for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=ort_dtype_name(arg.type), shape=shape)


def describe_spec(spec: TensorSpec) -> str:
    """``"float32 (num_queries, 3)"``: the form used in error messages (``?`` = unnamed dynamic size)."""
    dims = ", ".join(str(d) if d != "" else "?" for d in spec.shape)
    return f"{spec.dtype} ({dims}{',' if len(spec.shape) == 1 else ''})"


def spec_matches(have: TensorSpec, want: TensorSpec) -> bool:
    """Same name, dtype and rank, and equal wherever both sides fix a size."""
    if (have.name, have.dtype, len(have.shape)) != (want.name, want.dtype, len(want.shape)):
        return False
    return all(not (isinstance(a, int) and isinstance(b, int)) or a == b
               for a, b in zip(have.shape, want.shape, strict=True))


def _found(array: np.ndarray) -> str:
    return f"{array.dtype} {tuple(int(s) for s in array.shape)}"


def check_feed(
    source: str | os.PathLike[str] | None,
    specs: Mapping[str, TensorSpec],
    feed: Mapping[str, object],
) -> None:
    """Check a feed against input specs by name, dtype and shape.

    Args:
        source: the model file (named in messages).
        specs: the graph's inputs.
        feed: input name -> numpy array.

    Raises:
        InputError: a missing or unknown name, a value that is not a numpy array, a wrong
            dtype, a wrong rank, a fixed size that differs, or one dynamic size name bound to
            two different sizes (e.g. ``num_queries`` 100 for ``coords`` and 99 for ``patches``).
    """
    fix = "feed exactly the graph's inputs with the listed dtypes and shapes"
    unknown = sorted(set(feed) - set(specs))
    missing = sorted(set(specs) - set(feed))
    if unknown or missing:
        raise InputError(
            describe(source, "graph inputs do not match the feed",
                     expected=", ".join(f"{s.name}: {describe_spec(s)}" for s in specs.values()),
                     found=f"missing {missing or 'none'}, unknown {unknown or 'none'}", fix=fix)
        )
    bound: dict[str, tuple[int, str]] = {}
    for name, spec in specs.items():
        value = feed[name]
        if not isinstance(value, np.ndarray):
            raise InputError(
                describe(source, f"input {name!r} is not a numpy array", expected=describe_spec(spec),
                         found=type(value).__name__, fix="pass numpy arrays (np.asarray(...))")
            )
        if value.dtype != np.dtype(spec.dtype) or value.ndim != len(spec.shape):
            raise InputError(
                describe(source, f"input {name!r} has the wrong dtype or rank", expected=describe_spec(spec),
                         found=_found(value), fix=fix)
            )
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise InputError(
                    describe(source, f"input {name!r} has the wrong size on axis {axis}",
                             expected=describe_spec(spec), found=_found(value), fix=fix)
                )
            if isinstance(want, str) and want:
                previous = bound.setdefault(want, (int(got), name))
                if previous[0] != got:
                    raise InputError(
                        describe(source, f"dynamic size {want!r} differs between inputs",
                                 expected=f"the same {want} for {previous[1]!r} and {name!r}",
                                 found=f"{previous[0]} and {int(got)}", fix=fix)
                    )


class Backend(abc.ABC):
    """One loaded graph behind a checked ``run``.

    Attributes:
        path: the file the graph was loaded from.
        inputs: input name -> spec, in graph order.
        outputs: output name -> spec, in graph order.
        device: where it runs: ``"cpu"``, ``"cuda:N"`` or ``"trt:N"``.

    Backends are safe to call from several threads at once (the ONNX Runtime session's ``run``
    is); they are context managers that :meth:`close` on exit.
    """

    path: Path
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    device: str

    @property
    def max_queries_limit(self) -> int | None:
        """Most rows one call may carry on the dynamic axis (a TensorRT profile's maximum), or None."""
        return None

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feed`` (see :func:`check_feed`), run the graph, return output name -> array."""
        check_feed(self.path, self.inputs, feed)
        return self._run(feed)

    def bind(self, constants: Mapping[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        """A runner with some inputs fixed (e.g. the latent, once per volume).

        The base version merges the constants into every feed; GPU backends override it to
        copy the constants to the device once. The returned callable is meant for one thread
        (one volume); create one per call.
        """
        fixed = dict(constants)

        def run_bound(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self.run({**fixed, **feed})

        return run_bound

    @abc.abstractmethod
    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on an already checked feed."""

    def require(self, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec]) -> None:
        """Check that the graph has the inputs and outputs its metadata promises.

        Raises:
            ModelFormatError: a name is missing or extra, or a dtype, rank or fixed size differs.
        """
        for kind, have, want in (("inputs", self.inputs, inputs), ("outputs", self.outputs, outputs)):
            same_names = set(have) == set(want)
            if not same_names or not all(spec_matches(have[n], want[n]) for n in want):
                raise ModelFormatError(
                    describe(self.path, f"graph {kind} differ from the model's metadata",
                             expected=", ".join(f"{s.name}: {describe_spec(s)}" for s in want.values()),
                             found=", ".join(f"{s.name}: {describe_spec(s)}" for s in have.values()),
                             fix="re-export the model with ossnet-export; do not edit exported graphs")
                )

    def close(self) -> None:  # noqa: B027 - optional hook: backends without resources keep it
        """Release the graph's resources (sessions, device memory). Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
