"""Device strings, ONNX Runtime execution providers and CPU thread counts.

A device string names where the graphs run: ``"auto"``, ``"cpu"``, ``"openvino"``, ``"cuda"``,
``"cuda:N"``, ``"trt"`` or ``"trt:N"``; ``"gpu"`` / ``"gpu:N"`` are aliases of ``cuda``
(TotalSegmentator's spelling), ``"ov"`` of ``openvino``. ``openvino`` is the CPU with the decoder
compiled by OpenVINO (``ossnet_deploy.backends.openvino``; a core dependency where OpenVINO ships
wheels) and the encoder in ONNX Runtime's CPU provider; ``auto`` on a CPU does the same when
openvino is installed (``ossnet_deploy.model``) and ``cpu`` never does. :func:`parse_device` turns the string into a :class:`DeviceRequest`;
:func:`plan_providers` turns a request and the providers this ONNX Runtime build offers into a
:class:`ProviderPlan` (the provider list handed to ``InferenceSession``).

``auto`` takes TensorRT, then CUDA, then CPU, as available. TensorRT counts as available only
when the TensorRT execution provider is present *and* the model folder holds engines written by
``ossnet-export --trt``: building engines on the fly takes minutes per input shape, which is
not what anyone expects from "auto". CPU on a CPU-only install is the normal case and is
silent; a GPU that was asked for, or that is present but fails to load, gives one warning with
the remedy (``auto``) or a :class:`DependencyError` (an explicit ``cuda``/``trt``). The same
holds for a TensorRT whose major differs from the one the TensorRT provider library links
against (:mod:`ossnet_deploy.gpu_versions`, docs/design.md#gpu-runtime-versions): the provider
lists itself as available but cannot load, so ``auto`` warns and takes CUDA, ``trt`` refuses.

This module imports onnxruntime lazily so that ``import ossnet_deploy`` stays cheap.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ossnet_deploy import gpu_versions
from ossnet_deploy.errors import DependencyError, InputError, describe

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "GPU_INSTALL_FIX",
    "TRT_PROVIDER",
    "DeviceRequest",
    "ProviderPlan",
    "available_providers",
    "default_threads",
    "parse_device",
    "plan_providers",
    "warn_if_conflicting_runtimes",
    "warn_once",
]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TRT_PROVIDER = "TensorrtExecutionProvider"

#: Install hints: the onnxruntime-gpu build the docs recommend, and with it the TensorRT major its
#: provider library needs (both from ossnet_deploy/gpu_versions.py, read from that library).
GPU_INSTALL_FIX = gpu_versions.GPU_INSTALL_COMMAND
_TRT_INSTALL_FIX = gpu_versions.TRT_INSTALL_COMMAND

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|openvino|ov|cuda|gpu|trt|tensorrt)(?::(\d+))?$")
_DEVICE_CHOICES = "auto, cpu, openvino, cuda, cuda:N, gpu, gpu:N, trt or trt:N"
_NO_INDEX = ("auto", "cpu", "openvino", "ov")

# Distributions that all install the `onnxruntime` module; two of them at once shadow each other.
_ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
)


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed device string.

    Attributes:
        kind: ``"auto"``, ``"cpu"``, ``"openvino"``, ``"cuda"`` or ``"trt"``.
        index: GPU ordinal (``device_id`` of the CUDA/TensorRT providers); 0 unless given.
        text: the string as the caller wrote it (for messages).
    """

    kind: str
    index: int
    text: str

    @property
    def explicit_gpu(self) -> bool:
        """True when the caller named a GPU device (a failure is then an error, not a warning)."""
        return self.kind in ("cuda", "trt")


@dataclass(frozen=True)
class ProviderPlan:
    """The execution providers for one ``InferenceSession``, best first.

    Attributes:
        kind: the device that will run the graphs: ``"cpu"``, ``"cuda"`` or ``"trt"``.
        index: GPU ordinal (0 for CPU).
        providers: provider names in priority order; the CPU provider is always last, so
            nodes a GPU provider cannot take still run.
        options: one options mapping per provider (same order; string values, ORT's format).
        request: the request the plan answers.
    """

    kind: str
    index: int
    providers: tuple[str, ...]
    options: tuple[Mapping[str, str], ...] = field(default=())
    request: DeviceRequest = field(default_factory=lambda: DeviceRequest("cpu", 0, "cpu"))

    @property
    def label(self) -> str:
        """Short human-readable name: ``cpu``, ``cuda:0``, ``trt:1``."""
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


def parse_device(text: str) -> DeviceRequest:
    """Parse a device string (case-insensitive, surrounding blanks ignored).

    Raises:
        InputError: the string is not one of auto, cpu, cuda[:N], gpu[:N], trt[:N].
    """
    cleaned = str(text).strip().lower()
    match = _DEVICE_PATTERN.match(cleaned)
    if match is None or (match.group(1) in _NO_INDEX and match.group(2) is not None):
        raise InputError(
            describe(None, f"unknown device {text!r}", expected=_DEVICE_CHOICES, found=repr(text),
                     fix="pass one of the listed device strings, e.g. device='cuda:0' or '-d cpu'")
        )
    kind = {"gpu": "cuda", "tensorrt": "trt", "ov": "openvino"}.get(match.group(1), match.group(1))
    index = int(match.group(2)) if match.group(2) is not None else 0
    return DeviceRequest(kind=kind, index=index, text=str(text))


def available_providers() -> tuple[str, ...]:
    """The execution providers this onnxruntime build offers (``onnxruntime.get_available_providers()``)."""
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def _cuda_options(index: int) -> dict[str, str]:
    # HEURISTIC: EXHAUSTIVE (the default) benchmarks convolution algorithms again for every new
    # query count, which costs hundreds of ms per chunk size (onnxruntime #709, #19838).
    return {"device_id": str(index), "cudnn_conv_algo_search": "HEURISTIC"}


def plan_providers(
    request: DeviceRequest | str,
    *,
    available: Sequence[str] | None = None,
    has_trt_engine: bool = False,
) -> ProviderPlan:
    """Choose execution providers for a device request.

    Args:
        request: a :class:`DeviceRequest` or a device string.
        available: the providers on offer; default ``onnxruntime.get_available_providers()``.
        has_trt_engine: the model folder holds engines from ``ossnet-export --trt``.

    Returns:
        The plan. ``auto`` falls back silently when no GPU provider is installed; a GPU provider
        that is installed but fails to load is detected later, when the session exists
        (:func:`ossnet_deploy.backends.ort.OrtBackend` checks ``session.get_providers()``).

    Raises:
        DependencyError: ``cuda`` or ``trt`` was asked for and this onnxruntime build lacks the
            provider (the message gives the install command), or ``trt`` was asked for and the
            installed TensorRT is not the major its provider library links against.
    """
    req = parse_device(request) if isinstance(request, str) else request
    offered = tuple(available) if available is not None else available_providers()
    cpu = ProviderPlan("cpu", 0, (CPU_PROVIDER,), ({},), req)

    def cuda_plan() -> ProviderPlan:
        return ProviderPlan("cuda", req.index, (CUDA_PROVIDER, CPU_PROVIDER), (_cuda_options(req.index), {}), req)

    if req.kind in ("cpu", "openvino"):
        # openvino: the decoder runs in OpenVINO (backends/openvino.py), the encoder here.
        return cpu
    if req.kind == "cuda":
        if CUDA_PROVIDER not in offered:
            raise DependencyError(
                describe(None, f"device {req.text!r} needs the CUDA execution provider of onnxruntime",
                         expected=CUDA_PROVIDER, found=f"only {', '.join(offered) or 'no providers'} "
                         "(the CPU build of onnxruntime)", fix=GPU_INSTALL_FIX)
            )
        return cuda_plan()
    if req.kind == "trt":
        if TRT_PROVIDER not in offered:
            raise DependencyError(
                describe(None, f"device {req.text!r} needs the TensorRT execution provider of onnxruntime",
                         expected=TRT_PROVIDER, found=f"only {', '.join(offered) or 'no providers'}",
                         fix=_TRT_INSTALL_FIX)
            )
        _check_tensorrt_version()
        # The TensorRT options (engine paths) belong to the model files; backends/trt.py adds them.
        return ProviderPlan(
            "trt", req.index, (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER),
            ({"device_id": str(req.index)}, _cuda_options(req.index), {}), req,
        )
    # auto
    if TRT_PROVIDER in offered and has_trt_engine:
        try:
            return plan_providers(DeviceRequest("trt", req.index, req.text), available=offered)
        except DependencyError as exc:
            # Only the TensorRT checks raise here (the provider is offered): a TensorRT of
            # another major, or an unreadable provider library. The engines cannot run; CUDA can.
            warn_once(f"device 'auto' runs without the TensorRT engines: {exc}")
    if CUDA_PROVIDER in offered:
        return cuda_plan()
    return cpu


def _check_tensorrt_version() -> None:
    """Refuse a TensorRT of another major than the installed TensorRT provider links against.

    Nothing is checked where either is unknown (CPU build, Windows, no ``tensorrt`` package):
    the provider's own load failure, or :class:`~ossnet_deploy.backends.trt.TrtBackend`'s
    missing-package error, speaks then.
    """
    needs = gpu_versions.installed_provider_needs()
    if needs is not None:
        gpu_versions.check_tensorrt(needs, gpu_versions.installed_tensorrt())


_warned: set[str] = set()


def warn_once(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` each distinct message at most once per process."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, category, stacklevel=3)


def warn_if_conflicting_runtimes(distributions: Sequence[str] | None = None) -> tuple[str, ...]:
    """Warn once when more than one onnxruntime distribution is installed.

    ``onnxruntime`` and ``onnxruntime-gpu`` both install the ``onnxruntime`` module; with both
    present, whichever was installed last silently wins (often the CPU one).

    Args:
        distributions: installed distribution names (default: read with importlib.metadata).

    Returns:
        The onnxruntime distributions found (normalised names).
    """
    if distributions is None:
        names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    else:
        names = {n.lower().replace("_", "-") for n in distributions}
    found = tuple(n for n in _ORT_DISTRIBUTIONS if n in names)
    if len(found) > 1:
        warn_once(
            describe(None, "several onnxruntime distributions are installed and shadow each other",
                     expected="exactly one", found=", ".join(found),
                     fix=f"keep one: for GPUs {GPU_INSTALL_FIX}; for CPU only: "
                     "pip uninstall -y onnxruntime-gpu && pip install --force-reinstall onnxruntime")
        )
    return found


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs granted by a cgroup v2 quota (``cpu.max``: ``"<quota> <period>"``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def _physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """Distinct physical cores (package, core id) among ``cpus``; None without sysfs topology."""
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores) or None


@functools.cache
def default_threads() -> int:
    """Default ``intra_op_num_threads``: the physical cores this process may use.

    The CPUs in ``os.sched_getaffinity`` (taskset, container cpusets), counted once per physical
    core (ORT's convolution and GEMM kernels gain nothing from SMT siblings), capped by a cgroup
    v2 CPU quota. ONNX Runtime's own default counts every logical CPU of the machine, which
    oversubscribes containers and Ray actors (onnxruntime #16793).
    """
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    threads = _physical_cores(cpus) or len(cpus) or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(threads, limit) if limit else threads)
