"""The backend interface and the ONNX Runtime backend, on graphs written byte by byte."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from synthetic_models import threshold_decoder, threshold_pair_metadata

from ossnet_deploy import devices
from ossnet_deploy.backends import trt
from ossnet_deploy.backends.base import check_feed, ort_tensor_spec
from ossnet_deploy.backends.ort import OrtBackend
from ossnet_deploy.backends.trt import TrtBackend, engine_context_path
from ossnet_deploy.backends.trt_engine import EngineInfo, engine_json_path, write_engine_info
from ossnet_deploy.devices import CPU_PROVIDER, CUDA_PROVIDER, TRT_PROVIDER, DeviceRequest, ProviderPlan
from ossnet_deploy.errors import DependencyError, InputError, ModelFormatError, OssnetError
from ossnet_deploy.metadata import GraphMetadata, TensorSpec
from ossnet_deploy.onnx_metadata import sha256_file

LATENT = (6, 16)
C_P = 2


@pytest.fixture(scope="module")
def decoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("graphs") / "decoder.onnx"
    path.write_bytes(threshold_decoder(C_P, LATENT, gain=3.0, metadata={"note": "synthetic"}))
    return path


@pytest.fixture(scope="module")
def backend(decoder_path: Path) -> OrtBackend:
    return OrtBackend(decoder_path, device="cpu", threads=1)


def _feed(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "coords": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "patches": rng.standard_normal((n, C_P, 7, 7, 7)).astype(np.float32),
        "latent": np.full((1, *LATENT), 0.25, np.float32),
    }


def test_specs_carry_names_dtypes_and_dynamic_dims(backend: OrtBackend) -> None:
    assert list(backend.inputs) == ["coords", "patches", "latent"]
    assert backend.inputs["patches"] == TensorSpec("patches", "float32", ("num_queries", C_P, 7, 7, 7))
    assert backend.inputs["latent"].shape == (1, *LATENT)
    assert backend.outputs["logits"] == TensorSpec("logits", "float32", ("num_queries", 1))
    assert backend.metadata_props == {"note": "synthetic"}
    assert backend.device == "cpu"
    assert backend.threads == 1
    assert (backend.cpu_arena, backend.mem_pattern) == (False, False)


def test_ort_tensor_spec_maps_types_and_dynamic_axes() -> None:
    # What ONNX Runtime's NodeArg offers; the ORT and OpenVINO backends both read their specs this way.
    class Arg:
        def __init__(self, name, type_, shape):
            self.name, self.type, self.shape = name, type_, shape

    assert ort_tensor_spec(Arg("coords", "tensor(float)", ["num_queries", 3])) == TensorSpec(
        "coords", "float32", ("num_queries", 3))
    assert ort_tensor_spec(Arg("x", "tensor(int64)", [None, 2])) == TensorSpec("x", "int64", ("", 2))
    assert ort_tensor_spec(Arg("y", "tensor(string)", [1])).dtype == "tensor(string)"  # unknown: kept as is


@pytest.mark.parametrize("n", [1, 37, 300])
def test_run_computes_the_graph(backend: OrtBackend, n: int) -> None:
    feed = _feed(n, seed=n)
    logits = backend.run(feed)["logits"]
    assert logits.shape == (n, 1)
    expected = 3.0 * (feed["patches"][:, 0, 3, 3, 3] - 0.25)
    np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-6, atol=1e-6)


def test_bind_fixes_the_latent(backend: OrtBackend) -> None:
    feed = _feed(20, seed=3)
    run_bound = backend.bind({"latent": feed["latent"]})
    out = run_bound({"coords": feed["coords"], "patches": feed["patches"]})["logits"]
    np.testing.assert_array_equal(out, backend.run(feed)["logits"])


def _with(feed: dict[str, np.ndarray], **changes: object) -> dict[str, object]:
    out: dict[str, object] = dict(feed)
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"latent": None}, r"decoder\.onnx: graph inputs do not match the feed .*missing \['latent'\]"),
        ({"extra": np.zeros(1, np.float32)}, r"unknown \['extra'\]"),
        ({"coords": np.zeros((4, 3), np.float64)}, r"input 'coords' has the wrong dtype or rank \(expected float32 "
         r"\(num_queries, 3\); found float64 \(4, 3\)\)"),
        ({"patches": np.zeros((4, C_P, 7, 7), np.float32)}, r"input 'patches' has the wrong dtype or rank"),
        ({"patches": np.zeros((4, C_P, 7, 7, 5), np.float32)}, r"input 'patches' has the wrong size on axis 4"),
        ({"latent": np.zeros((1, 6, 15), np.float32)}, r"input 'latent' has the wrong size on axis 2 .*"
         r"expected float32 \(1, 6, 16\); found float32 \(1, 6, 15\)"),
        ({"patches": np.zeros((5, C_P, 7, 7, 7), np.float32)}, r"dynamic size 'num_queries' differs between inputs "
         r"\(expected the same num_queries for 'coords' and 'patches'; found 4 and 5\)"),
        ({"coords": [[0.0, 0.0, 0.0]] * 4}, r"input 'coords' is not a numpy array"),
    ],
)
def test_bad_feeds_are_refused_before_running(backend: OrtBackend, changes: dict[str, object], pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        backend.run(_with(_feed(4), **changes))  # type: ignore[arg-type]


def test_check_feed_ignores_unnamed_dynamic_sizes() -> None:
    specs = {"a": TensorSpec("a", "float32", ("", 2)), "b": TensorSpec("b", "float32", ("", 2))}
    check_feed("x.onnx", specs, {"a": np.zeros((3, 2), np.float32), "b": np.zeros((5, 2), np.float32)})


def test_require_refuses_a_graph_that_breaks_its_metadata(backend: OrtBackend) -> None:
    want_in = dict(backend.inputs)
    want_in["latent"] = TensorSpec("latent", "float32", (1, 6, 32))
    with pytest.raises(ModelFormatError, match=r"graph inputs differ from the model's metadata .*latent: float32 "
                       r"\(1, 6, 32\).*latent: float32 \(1, 6, 16\)"):
        backend.require(want_in, backend.outputs)
    backend.require(backend.inputs, backend.outputs)


def test_missing_and_corrupt_files_are_model_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"missing\.onnx: model file not found"):
        OrtBackend(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not an onnx graph" * 10)
    with pytest.raises(ModelFormatError, match=r"garbage\.onnx: ONNX Runtime cannot load this graph"):
        OrtBackend(garbage)


def test_bad_thread_count(decoder_path: Path) -> None:
    with pytest.raises(InputError, match=r"invalid thread count .*found 0"):
        OrtBackend(decoder_path, threads=0)


def test_explicit_cuda_on_cpu_only_raises(decoder_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "available_providers", lambda: (CPU_PROVIDER,))
    with pytest.raises(DependencyError, match=r'pip uninstall -y onnxruntime && pip install "onnxruntime-gpu\[cuda,cudnn\]=='):
        OrtBackend(decoder_path, device="cuda:0")


def _cuda_plan(text: str) -> ProviderPlan:
    request = devices.parse_device(text)
    return ProviderPlan("cuda", 0, (CUDA_PROVIDER, CPU_PROVIDER), ({"device_id": "0"}, {}), request)


@pytest.mark.skipif(CUDA_PROVIDER in devices.available_providers(), reason="needs a build without CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_gpu_provider_that_does_not_load_warns_for_auto(decoder_path: Path) -> None:
    # On this CPU build ORT drops the CUDA provider silently, exactly like a CUDA build whose
    # libraries are missing: auto warns once with the remedy and runs on the CPU.
    devices._warned.clear()
    with pytest.warns(RuntimeWarning, match=r"CUDAExecutionProvider is installed but did not load.*running on the "
                      r"CPU.*Fix: install the CUDA and cuDNN"):
        backend = OrtBackend(decoder_path, device=_cuda_plan("auto"))
    assert backend.device == "cpu"
    assert backend.providers == (CPU_PROVIDER,)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # ORT's own note that CUDA is not in this build
        OrtBackend(decoder_path, device=_cuda_plan("auto"))  # our warning is not repeated


@pytest.mark.skipif(CUDA_PROVIDER in devices.available_providers(), reason="needs a build without CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_gpu_provider_that_does_not_load_raises_when_explicit(decoder_path: Path) -> None:
    with pytest.raises(DependencyError, match=r"CUDAExecutionProvider is installed but did not load"):
        OrtBackend(decoder_path, device=_cuda_plan("cuda"))


def test_concurrent_runs_agree(backend: OrtBackend) -> None:
    feeds = [_feed(50 + 10 * i, seed=i) for i in range(4)]
    expected = [backend.run(f)["logits"] for f in feeds]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = backend.run(feeds[i])["logits"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], expected[i])


def test_closed_backend_refuses_to_run(decoder_path: Path) -> None:
    with OrtBackend(decoder_path, threads=1) as closing:
        closing.run(_feed(2))
    with pytest.raises(OssnetError, match=r"decoder\.onnx: the backend was closed"):
        closing.run(_feed(2))


def test_request_kinds() -> None:
    assert DeviceRequest("cuda", 0, "cuda").explicit_gpu
    assert not DeviceRequest("auto", 0, "auto").explicit_gpu


# ------------------------------------------------------------------------------ TensorRT


def _engine_files(tmp_path: Path, source_bytes: bytes, *, trt: str = "10.9.0", cc: str = "8.9") -> tuple[Path, Path]:
    preprocess = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
                  "intensity": "zscore_foreground"}
    _, dec_props = threshold_pair_metadata(preprocess)
    source = tmp_path / "decoder.onnx"
    source.write_bytes(source_bytes)
    ctx = tmp_path / "decoder_ctx.onnx"
    ctx.write_bytes(source_bytes)  # stands in for the EP-context model
    info = EngineInfo(metadata=GraphMetadata.from_props(dec_props), tensorrt_version=trt, compute_capability=cc,
                      source_onnx_sha256=sha256_file(source),
                      profile_shapes={"coords": ((1, 3), (8192, 3), (16384, 3))})
    write_engine_info(info, ctx)
    return source, ctx


def _trt_plan() -> ProviderPlan:
    return ProviderPlan("trt", 0, (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER), ({}, {}, {}),
                        DeviceRequest("trt", 0, "trt"))


def test_trt_engine_paths_follow_the_exporter() -> None:
    assert engine_context_path(Path("m/decoder.onnx")) == Path("m/decoder_ctx.onnx")
    assert engine_context_path(Path("m/decoder.fp16.onnx")) == Path("m/decoder.fp16_ctx.onnx")
    assert engine_json_path(engine_context_path(Path("m/encoder.onnx"))) == Path("m/encoder_ctx.engine.json")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"installed_tensorrt": "10.13.0"}, r"engine was built for another setup .*TensorRT 10\.9\.0 vs 10\.13\.0"),
        ({"gpu_compute_capability": "9.0"}, r"compute capability 8\.9 vs 9\.0 on this GPU"),
        ({"stale_source": True}, r"source ONNX sha256 .* vs .* here"),
    ],
)
def test_trt_backend_refuses_a_mismatched_engine(tmp_path: Path, change: dict[str, object], pattern: str) -> None:
    source, ctx = _engine_files(tmp_path, threshold_decoder(1, LATENT))
    if change.pop("stale_source", False):
        source.write_bytes(threshold_decoder(1, LATENT, gain=5.0))  # re-exported after the engine was built
    settings: dict[str, object] = {"installed_tensorrt": "10.9.0", "gpu_compute_capability": "8.9", **change}
    with pytest.raises(ModelFormatError, match=pattern):
        TrtBackend(ctx, source_onnx=source, plan=_trt_plan(), **settings)  # type: ignore[arg-type]


PROVIDER_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "gpu" / "onnxruntime_gpu-1.31.1_providers_tensorrt.elf"


def test_trt_backend_refuses_a_tensorrt_major_its_provider_cannot_load(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime-gpu 1.31.1's provider (libnvinfer.so.10) with TensorRT 11: refused before the
    # engine's side file is compared, even though the engine was built with that TensorRT 11.
    from ossnet_deploy import gpu_versions

    monkeypatch.setattr(gpu_versions, "provider_library", lambda: PROVIDER_FIXTURE)
    monkeypatch.setattr(gpu_versions, "tensorrt_distributions", lambda: ("tensorrt", "tensorrt-cu13"))
    source, ctx = _engine_files(tmp_path, threshold_decoder(1, LATENT), trt="11.4.0.106")
    with pytest.raises(DependencyError, match=r"decoder_ctx\.onnx: the installed TensorRT does not match .*"
                       r"TensorRT 11\.4\.0\.106 \(tensorrt, tensorrt-cu13\) is installed.*needs TensorRT 10 .*"
                       r'Fix: pip uninstall -y tensorrt tensorrt-cu13 && pip install --extra-index-url '
                       r'https://pypi\.nvidia\.com "tensorrt-cu13>=10,<11"$'):
        TrtBackend(ctx, source_onnx=source, plan=_trt_plan(), installed_tensorrt="11.4.0.106",
                   gpu_compute_capability="8.9")
    # TensorRT 10 passes the version check and reaches the engine check (built with 11: rebuild).
    monkeypatch.setattr(gpu_versions, "tensorrt_distributions", lambda: ("tensorrt-cu13",))
    with pytest.raises(ModelFormatError, match=r"TensorRT 11\.4\.0\.106 vs 10\.16\.1\.11"):
        TrtBackend(ctx, source_onnx=source, plan=_trt_plan(), installed_tensorrt="10.16.1.11",
                   gpu_compute_capability="8.9")


def test_trt_backend_needs_its_side_file(tmp_path: Path) -> None:
    source, ctx = _engine_files(tmp_path, threshold_decoder(1, LATENT))
    ctx.with_suffix(".engine.json").unlink()
    with pytest.raises(ModelFormatError, match=r"decoder_ctx\.onnx: engine has no side file"):
        TrtBackend(ctx, source_onnx=source, plan=_trt_plan(), installed_tensorrt="10.9.0",
                   gpu_compute_capability="8.9")


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
@pytest.mark.skipif(TRT_PROVIDER in devices.available_providers(), reason="needs a build without TensorRT")
def test_trt_backend_with_a_matching_engine_but_no_provider(tmp_path: Path) -> None:
    source, ctx = _engine_files(tmp_path, threshold_decoder(1, LATENT))
    with pytest.raises(DependencyError, match=r"TensorrtExecutionProvider is installed but did not load"):
        TrtBackend(ctx, source_onnx=source, plan=_trt_plan(), installed_tensorrt="10.9.0",
                   gpu_compute_capability="8.9")


def test_trt_version_and_gpu_queries_raise_dependency_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import importlib.metadata
    import sys

    def no_dist(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_dist)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    # Without onnxruntime-gpu here, the fix names the recommended build's TensorRT, from NVIDIA's index.
    with pytest.raises(DependencyError, match=r"TensorRT engines need the tensorrt package .*TensorRT 10, CUDA 13.*"
                       r'Fix: pip install --extra-index-url https://pypi\.nvidia\.com "tensorrt-cu13>=10,<11"$'):
        trt.tensorrt_version()

    def no_driver(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    with pytest.raises(DependencyError, match=r"TensorRT needs an NVIDIA GPU and its driver"):
        trt.compute_capability(0)
