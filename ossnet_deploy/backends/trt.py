"""TensorRT: the engines ``ossnet-export --trt`` wrote, run through ONNX Runtime.

``ossnet-export --trt`` runs ONNX Runtime's TensorRT execution provider once with
``trt_dump_ep_context_model`` and ships, beside each graph ``<name>.onnx``:

* ``<name>_ctx.onnx``: an EP-context model (one ``EPContext`` node pointing at the serialised
  engine), which loads without the TensorRT builder (seconds instead of minutes);
* the engine file it references;
* ``<name>_ctx.engine.json``: the side file (:class:`ossnet_deploy.backends.trt_engine.EngineInfo`): the
  graph's metadata plus the TensorRT version, GPU compute capability and sha256 of the source
  ONNX the engine was built from (plans cannot hold metadata).

Engines are not portable: they load only on the TensorRT version and GPU generation that built
them, and they silently go stale when the ONNX graph is re-exported. :class:`TrtBackend` checks
all three before creating a session and refuses a mismatch with a
:class:`~ossnet_deploy.errors.ModelFormatError` that says to rebuild. Before that it checks
that the installed TensorRT is the major the onnxruntime-gpu TensorRT provider was linked
against (:mod:`ossnet_deploy.gpu_versions`, docs/design.md#gpu-runtime-versions): otherwise
the provider cannot load at all, and that is a :class:`~ossnet_deploy.errors.DependencyError`
whose fix installs the matching TensorRT.

``tensorrt`` is imported only lazily, for its version when its distribution metadata is
missing (:func:`ossnet_deploy.gpu_versions.tensorrt_version`); the GPU's compute capability
comes from the CUDA driver (``libcuda`` through ctypes), so no CUDA Python package is needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

from ossnet_deploy import gpu_versions
from ossnet_deploy.backends.ort import OrtBackend
from ossnet_deploy.backends.trt_engine import EngineInfo, check_engine, read_engine_info
from ossnet_deploy.devices import CPU_PROVIDER, CUDA_PROVIDER, TRT_PROVIDER, ProviderPlan
from ossnet_deploy.errors import DependencyError, describe
from ossnet_deploy.gpu_versions import tensorrt_version
from ossnet_deploy.metadata import COORDS
from ossnet_deploy.onnx_metadata import sha256_file

__all__ = ["TrtBackend", "compute_capability", "engine_context_path", "tensorrt_version"]

# cuDeviceGetAttribute codes (CUDA driver API, cuda.h).
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def engine_context_path(graph: str | os.PathLike[str]) -> Path:
    """The EP-context model ``ossnet-export --trt`` writes for a graph: ``decoder.onnx`` -> ``decoder_ctx.onnx``."""
    path = Path(graph)
    return path.with_name(f"{path.stem}_ctx.onnx")


def compute_capability(device_index: int = 0) -> str:
    """Compute capability of a CUDA GPU, e.g. ``"8.9"``, asked of the CUDA driver.

    Raises:
        DependencyError: no CUDA driver, or no such GPU.
    """
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(name)
    except OSError as exc:
        raise DependencyError(
            describe(None, "TensorRT needs an NVIDIA GPU and its driver", expected="libcuda (the NVIDIA driver)",
                     found=str(exc), fix="install the NVIDIA driver, or run on the CPU (device='cpu')")
        ) from None
    device = ctypes.c_int()
    major, minor = ctypes.c_int(), ctypes.c_int()
    calls: list[tuple[str, Callable[[], int]]] = [
        ("cuInit", lambda: cuda.cuInit(0)),
        ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(device), int(device_index))),
        ("cuDeviceGetAttribute", lambda: cuda.cuDeviceGetAttribute(
            ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)),
        ("cuDeviceGetAttribute", lambda: cuda.cuDeviceGetAttribute(
            ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)),
    ]
    for call_name, call in calls:
        status = call()
        if status != 0:
            raise DependencyError(
                describe(None, f"cannot query GPU {device_index}", expected="a working CUDA device",
                         found=f"{call_name} returned CUDA error {status}",
                         fix="check nvidia-smi and CUDA_VISIBLE_DEVICES, or run on the CPU (device='cpu')")
            )
    return f"{major.value}.{minor.value}"


class TrtBackend(OrtBackend):
    """An EP-context model from ``ossnet-export --trt`` on ONNX Runtime's TensorRT provider.

    Args:
        path: the ``<name>_ctx.onnx`` EP-context model.
        source_onnx: the ONNX graph the engine must have been built from (``<name>.onnx``);
            its sha256 is compared with the side file's.
        plan: a TensorRT provider plan (:func:`ossnet_deploy.devices.plan_providers`).
        threads: CPU threads for nodes outside the engine.
        installed_tensorrt: the TensorRT version to check against (default: ask ``tensorrt``).
        gpu_compute_capability: this GPU's compute capability (default: ask the driver).

    Raises:
        ModelFormatError: the side file is missing or malformed, or the engine was built from
            another ONNX file, another TensorRT version or another GPU generation.
        DependencyError: tensorrt, the NVIDIA driver or the TensorRT provider is missing, or the
            installed TensorRT is not the major onnxruntime-gpu's TensorRT provider links against.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source_onnx: str | os.PathLike[str] | None,
        plan: ProviderPlan,
        threads: int | None = None,
        installed_tensorrt: str | None = None,
        gpu_compute_capability: str | None = None,
    ) -> None:
        ctx = Path(path)
        self.engine_info: EngineInfo = read_engine_info(ctx)
        source = Path(source_onnx) if source_onnx is not None else None
        installed = installed_tensorrt if installed_tensorrt is not None else tensorrt_version()
        # First the TensorRT the provider library links against: with another major installed
        # the provider cannot load, whatever the engine says.
        gpu_versions.check_tensorrt(gpu_versions.installed_provider_needs(),
                                    gpu_versions.installed_tensorrt(installed), path=ctx)
        check_engine(
            self.engine_info,
            onnx_sha256=sha256_file(source) if source is not None and source.is_file() else None,
            tensorrt_version=installed,
            compute_capability=(gpu_compute_capability if gpu_compute_capability is not None
                                else compute_capability(plan.index)),
            path=ctx,
        )
        # The engine is embedded in the EP-context node (ossnet-export uses embed mode 1) and its
        # precision is the graph's own (TensorRT 11 has no fp16 builder flag): only the device
        # needs saying.
        trt_options = {"device_id": str(plan.index)}
        cuda_options = dict(plan.options[1]) if len(plan.options) > 1 else {"device_id": str(plan.index)}
        trt_plan = ProviderPlan("trt", plan.index, (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER),
                                (trt_options, cuda_options, {}), plan.request)
        super().__init__(ctx, device=trt_plan, threads=threads)

    @property
    def max_queries_limit(self) -> int | None:
        """Most queries per call: the engine profile's maximum ``num_queries`` (None: static)."""
        limits = [triple[2][0] for name, triple in self.engine_info.profile_shapes.items()
                  if name == COORDS and triple[0] != triple[2]]
        return limits[0] if limits else None
