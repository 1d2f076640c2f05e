"""Device strings, provider selection, thread defaults and the duplicate-runtime warning."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from ossnet_deploy import devices, gpu_versions
from ossnet_deploy.devices import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    GPU_INSTALL_FIX,
    TRT_PROVIDER,
    DeviceRequest,
    parse_device,
    plan_providers,
    warn_if_conflicting_runtimes,
)
from ossnet_deploy.errors import DependencyError, InputError

CPU_ONLY = ("AzureExecutionProvider", CPU_PROVIDER)
WITH_CUDA = (CUDA_PROVIDER, CPU_PROVIDER)
WITH_TRT = (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)


@pytest.mark.parametrize(
    ("text", "kind", "index"),
    [
        ("auto", "auto", 0), ("cpu", "cpu", 0), ("CPU", "cpu", 0), ("cuda", "cuda", 0), ("cuda:1", "cuda", 1),
        ("gpu", "cuda", 0), ("gpu:3", "cuda", 3), (" trt ", "trt", 0), ("trt:2", "trt", 2), ("tensorrt", "trt", 0),
    ],
)
def test_parse_device_accepts_documented_forms(text: str, kind: str, index: int) -> None:
    request = parse_device(text)
    assert (request.kind, request.index) == (kind, index)
    assert request.text == text


@pytest.mark.parametrize("text", ["", "cuda:", "cuda:-1", "cpu:0", "auto:1", "mps", "gpu0", "cuda:x", "ov:0", "openvino:1"])
def test_parse_device_rejects_unknown_strings(text: str) -> None:
    with pytest.raises(InputError, match=r"unknown device .*expected auto, cpu, openvino, cuda, cuda:N"):
        parse_device(text)


def test_auto_on_cpu_only_install_is_cpu_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_providers("auto", available=CPU_ONLY)
    assert plan.kind == "cpu"
    assert plan.providers == (CPU_PROVIDER,)
    assert plan.label == "cpu"


def test_auto_prefers_cuda_then_trt_only_with_an_engine() -> None:
    assert plan_providers("auto", available=WITH_CUDA).providers == (CUDA_PROVIDER, CPU_PROVIDER)
    # TensorRT present but no engine exported: building engines on the fly is not "auto".
    assert plan_providers("auto", available=WITH_TRT).kind == "cuda"
    plan = plan_providers("auto", available=WITH_TRT, has_trt_engine=True)
    assert plan.providers == (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)
    assert plan.label == "trt:0"


def test_cuda_index_reaches_provider_options() -> None:
    plan = plan_providers("gpu:2", available=WITH_CUDA)
    assert plan.label == "cuda:2"
    assert plan.options[0]["device_id"] == "2"
    # Per-shape exhaustive cuDNN search would re-tune for every chunk size.
    assert plan.options[0]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert plan.providers[-1] == CPU_PROVIDER


def test_explicit_cuda_on_cpu_only_install_names_the_install_command() -> None:
    with pytest.raises(DependencyError, match=r"CUDA execution provider.*" + re.escape(GPU_INSTALL_FIX)):
        plan_providers("cuda", available=CPU_ONLY)
    # The hint pins the onnxruntime-gpu whose needed-library list ossnet_deploy/gpu_versions.py holds.
    assert f"onnxruntime-gpu[cuda,cudnn]=={gpu_versions.RECOMMENDED_ORT_GPU}" in GPU_INSTALL_FIX


def test_explicit_trt_without_provider_raises() -> None:
    with pytest.raises(DependencyError, match=r"TensorRT execution provider") as info:
        plan_providers(DeviceRequest("trt", 0, "trt"), available=WITH_CUDA)
    # The fix names the TensorRT major read from the provider library, from NVIDIA's index.
    assert gpu_versions.TRT_INSTALL_COMMAND in str(info.value)
    assert '"tensorrt-cu13>=10,<11"' in str(info.value) and "--extra-index-url https://pypi.nvidia.com" in str(info.value)


def test_both_runtime_distributions_warn_once() -> None:
    devices._warned.clear()
    with pytest.warns(RuntimeWarning, match=r"several onnxruntime distributions.*onnxruntime, onnxruntime-gpu"):
        found = warn_if_conflicting_runtimes(["numpy", "onnxruntime", "onnxruntime_gpu"])
    assert found == ("onnxruntime", "onnxruntime-gpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_conflicting_runtimes(["onnxruntime", "onnxruntime-gpu"])  # second time: silent
        assert warn_if_conflicting_runtimes(["onnxruntime"]) == ("onnxruntime",)


def test_physical_cores_counts_smt_siblings_once(tmp_path: Path) -> None:
    # cpu0/cpu1 are SMT siblings of core 0, cpu2 is core 1: two physical cores.
    for cpu, core in ((0, 0), (1, 0), (2, 1)):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert devices._physical_cores({0, 1, 2}, tmp_path) == 2
    assert devices._physical_cores({0, 1}, tmp_path) == 1
    assert devices._physical_cores({7}, tmp_path) is None


@pytest.mark.parametrize(("text", "expected"), [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000", 1)])
def test_cgroup_quota(tmp_path: Path, text: str, expected: int | None) -> None:
    (tmp_path / "cpu.max").write_text(text)
    assert devices._cgroup_cpu_limit(tmp_path) == expected


def test_default_threads_within_affinity() -> None:
    import os

    assert 1 <= devices.default_threads() <= len(os.sched_getaffinity(0))
