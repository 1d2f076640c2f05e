"""The TensorRT glue without a GPU: profiles, provider options, cache keys, side files, refusals.

Nothing here builds an engine; :func:`ossnet_export.trt.build_engine` is exercised on a GPU by
``benchmarks/gpu_smoke.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ossnet_deploy.backends.trt_engine import engine_json_path, read_engine_info, write_engine_info
from ossnet_deploy.errors import DependencyError, InputError, ModelFormatError
from ossnet_deploy.metadata import (
    COORDS,
    LATENT,
    NUM_QUERIES,
    PATCHES,
    IOSpec,
    TensorSpec,
)
from ossnet_deploy.onnx_metadata import sha256_file
from ossnet_deploy.preprocess import preprocess_preset
from ossnet_export import trt
from ossnet_export.export_onnx import graph_metadata
from ossnet_export.graphs import decoder_io, encoder_io
from ossnet_train.config import model_config

BRATS_C = model_config("c", "brats")
GPU_ENV = trt.TrtEnvironment(
    providers=(trt.TRT_PROVIDER, trt.CUDA_PROVIDER, trt.CPU_PROVIDER),
    tensorrt_version="10.13.0.35",
    compute_capability="8.9",
)
CPU_ENV = trt.TrtEnvironment(providers=(trt.CPU_PROVIDER,), tensorrt_version=None, compute_capability=None)


def test_decoder_profile_strings_follow_the_query_profile() -> None:
    shapes = trt.profile_shapes(decoder_io(BRATS_C), trt.QueryProfile(1, 16384, 32768))
    assert list(shapes) == [COORDS, PATCHES, LATENT]
    assert trt.profile_string(shapes, 0) == "coords:1x3,patches:1x4x7x7x7,latent:1x6x320"
    assert trt.profile_string(shapes, 1) == "coords:16384x3,patches:16384x4x7x7x7,latent:1x6x320"
    assert trt.profile_string(shapes, 2) == "coords:32768x3,patches:32768x4x7x7x7,latent:1x6x320"


def test_onet_decoder_profile_has_no_patches() -> None:
    shapes = trt.profile_shapes(decoder_io(model_config("onet", "demo")), trt.QueryProfile(2, 3, 5))
    assert trt.profile_string(shapes, 2) == "coords:5x3,latent:1x1x336"


def test_static_encoder_gets_no_profile_options(tmp_path: Path) -> None:
    shapes = trt.profile_shapes(encoder_io(BRATS_C), trt.QueryProfile())
    assert shapes == {"volume": ((1, 4, 128, 128, 80),) * 3}
    options = trt.provider_options(shapes=shapes, cache_dir=tmp_path, cache_prefix="p", context_path=None)
    assert not any(key.startswith("trt_profile") for key in options)
    assert "trt_dump_ep_context_model" not in options


def test_provider_options_for_a_context_model_build(tmp_path: Path) -> None:
    shapes = trt.profile_shapes(decoder_io(BRATS_C), trt.QueryProfile(1, 8, 64))
    ctx = tmp_path / "decoder_ctx.onnx"
    options = trt.provider_options(
        shapes=shapes, cache_dir=tmp_path / "cache", cache_prefix="ossnet_decoder_0123", context_path=ctx,
        device_id=1, builder_optimization_level=5,
    )
    assert all(isinstance(v, str) for v in options.values())
    assert options["device_id"] == "1"
    assert options["trt_engine_cache_enable"] == "1"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert options["trt_engine_cache_prefix"] == "ossnet_decoder_0123"
    assert options["trt_timing_cache_enable"] == "1"
    assert options["trt_builder_optimization_level"] == "5"
    # TensorRT 11 has no FP16 builder flag: precision comes from the graph, never from the EP.
    assert options["trt_fp16_enable"] == "0"
    assert options["trt_profile_min_shapes"] == "coords:1x3,patches:1x4x7x7x7,latent:1x6x320"
    assert options["trt_profile_opt_shapes"] == "coords:8x3,patches:8x4x7x7x7,latent:1x6x320"
    assert options["trt_profile_max_shapes"] == "coords:64x3,patches:64x4x7x7x7,latent:1x6x320"
    assert options["trt_dump_ep_context_model"] == "1"
    assert options["trt_ep_context_file_path"] == str(ctx)
    assert options["trt_ep_context_embed_mode"] == "1"


def test_builder_level_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="builder_optimization_level"):
        trt.provider_options(shapes={}, cache_dir=tmp_path, cache_prefix="p", context_path=None,
                             builder_optimization_level=6)


@pytest.mark.parametrize(("lo", "opt", "hi"), [(0, 1, 2), (5, 4, 8), (1, 9, 8)])
def test_query_profile_must_be_ordered(lo: int, opt: int, hi: int) -> None:
    with pytest.raises(InputError, match="min_queries <= opt_queries <= max_queries"):
        trt.QueryProfile(lo, opt, hi)


def test_unknown_dynamic_dimension_is_refused() -> None:
    io = IOSpec(inputs=(TensorSpec(COORDS, "float32", ("batch", 3)),), outputs=())
    with pytest.raises(ModelFormatError, match="unknown dynamic dimension"):
        trt.profile_shapes(io, trt.QueryProfile())


def test_cache_key_covers_everything_an_engine_is_tied_to() -> None:
    shapes = trt.profile_shapes(decoder_io(BRATS_C), trt.QueryProfile())
    base = {"role": "decoder", "onnx_sha256": "ab" * 32, "tensorrt_version": "10.13", "compute_capability": "8.9",
            "shapes": shapes}
    key = trt.cache_key(**base)
    assert re.fullmatch(r"ossnet_decoder_[0-9a-f]{16}", key)
    assert trt.cache_key(**base) == key
    other_shapes = trt.profile_shapes(decoder_io(BRATS_C), trt.QueryProfile(1, 16384, 65536))
    variants = [
        {"onnx_sha256": "cd" * 32},
        {"tensorrt_version": "11.1"},
        {"compute_capability": "9.0"},
        {"shapes": other_shapes},
    ]
    keys = {trt.cache_key(**{**base, **change}) for change in variants}
    assert key not in keys and len(keys) == len(variants)
    assert trt.cache_key(**{**base, "role": "decoder.fp16"}).startswith("ossnet_decoder_fp16_")


def test_context_model_names() -> None:
    assert trt.context_model_path("out/decoder.onnx") == Path("out/decoder_ctx.onnx")
    assert trt.context_model_path("out/decoder.fp16.onnx") == Path("out/decoder.fp16_ctx.onnx")
    assert engine_json_path(trt.context_model_path("out/encoder.onnx")) == Path("out/encoder_ctx.engine.json")
    assert trt.engine_paths(["a/decoder.onnx"]) == [(Path("a/decoder_ctx.onnx"), Path("a/decoder_ctx.engine.json"))]


def test_missing_tensorrt_gives_one_message_with_the_install_command() -> None:
    with pytest.raises(DependencyError) as info:
        trt.require_environment(CPU_ENV)
    message = str(info.value)
    assert "\n" not in message
    assert message.count(trt.TRT_INSTALL_COMMAND) == 1
    # The TensorRT major the recommended onnxruntime-gpu's provider links against, from NVIDIA's index
    # (never a bare `tensorrt`, which resolves to TensorRT 11).
    assert ('pip uninstall -y onnxruntime && pip install --extra-index-url https://pypi.nvidia.com '
            '"onnxruntime-gpu[cuda,cudnn]==1.31.1" "tensorrt-cu13>=10,<11"') in message
    for missing in ("no TensorrtExecutionProvider", "tensorrt package is not installed", "no NVIDIA GPU"):
        assert missing in message
    assert "ONNX graphs were written and verified" in message


def test_a_complete_environment_passes() -> None:
    trt.require_environment(GPU_ENV)
    assert GPU_ENV.missing() == []
    partial = trt.TrtEnvironment(providers=GPU_ENV.providers, tensorrt_version="10.13", compute_capability=None)
    assert partial.missing() == ["no NVIDIA GPU 0 was found"]


def test_a_tensorrt_major_the_provider_cannot_load_is_refused_with_its_fix() -> None:
    from ossnet_deploy.backends.elf_needed import read_dynamic
    from ossnet_deploy.gpu_versions import ProviderNeeds

    fixture = Path(__file__).resolve().parents[1] / "data" / "gpu" / "onnxruntime_gpu-1.31.1_providers_tensorrt.elf"
    needs = ProviderNeeds("onnxruntime-gpu 1.31.1", read_dynamic(fixture).needed)
    trt11 = trt.TrtEnvironment(providers=GPU_ENV.providers, tensorrt_version="11.4.0.106", compute_capability="9.0",
                               provider_needs=needs, tensorrt_distributions=("tensorrt", "tensorrt-cu13"))
    with pytest.raises(DependencyError) as info:
        trt.require_environment(trt11)
    message = str(info.value)
    assert "TensorRT 11.4.0.106 (tensorrt, tensorrt-cu13) is installed, but onnxruntime-gpu 1.31.1 needs TensorRT 10" in message
    assert message.endswith('run `pip uninstall -y tensorrt tensorrt-cu13 && pip install --extra-index-url '
                            'https://pypi.nvidia.com "tensorrt-cu13>=10,<11"`, then re-run with --trt')
    trt10 = trt.TrtEnvironment(**{**trt11.__dict__, "tensorrt_version": "10.16.1.11",
                                  "tensorrt_distributions": ("tensorrt-cu13", "tensorrt-cu13-libs")})
    trt.require_environment(trt10)
    # onnxruntime-gpu present, tensorrt missing: only TensorRT is to be installed.
    none = trt.TrtEnvironment(**{**trt11.__dict__, "tensorrt_version": None, "tensorrt_distributions": ()})
    assert none.install_command() == 'pip install --extra-index-url https://pypi.nvidia.com "tensorrt-cu13>=10,<11"'


def test_detect_environment_reports_this_machine() -> None:
    import onnxruntime as ort

    env = trt.detect_environment()
    assert env.providers == tuple(ort.get_available_providers())
    assert (env.missing() == []) == (
        trt.TRT_PROVIDER in env.providers and env.tensorrt_version is not None and env.compute_capability is not None
    )


def test_build_engine_refuses_before_touching_anything(tmp_path: Path) -> None:
    source = tmp_path / "decoder.onnx"
    source.write_bytes(b"not read")
    with pytest.raises(DependencyError, match=r'"tensorrt-cu13>=10,<11"'):
        trt.build_engine(source, env=CPU_ENV, profile=trt.QueryProfile(), inputs={}, precision="fp32",
                         cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx"]


def _side_file(tmp_path: Path) -> tuple[Path, Path, trt.TrtEnvironment]:
    """A fake source graph and its engine side file written by the glue."""
    source = tmp_path / "decoder.onnx"
    source.write_bytes(b"pretend ONNX bytes")
    config = model_config("c", "demo")
    meta = graph_metadata(
        "decoder", decoder_io(config), config, preprocess_preset("demo"), weights_id="12" * 32,
        labels={"1": "white_matter"}, parity={"fp32": None}, provenance={"opset": 20},
    )
    shapes = trt.profile_shapes(meta.io, trt.QueryProfile(1, 4, 8))
    info = trt.engine_info(meta, env=GPU_ENV, source_onnx_sha256=sha256_file(source), shapes=shapes,
                           precision="fp32", parity={"max_abs": 1e-4})
    ctx = trt.context_model_path(source)
    side = write_engine_info(info, ctx)
    return ctx, side, GPU_ENV


def test_engine_side_file_round_trips(tmp_path: Path) -> None:
    ctx, side, env = _side_file(tmp_path)
    assert side == tmp_path / "decoder_ctx.engine.json"
    info = trt.verify_engine_side_file(ctx, source_onnx=tmp_path / "decoder.onnx", env=env)
    assert info == read_engine_info(ctx)
    assert info.tensorrt_version == "10.13.0.35" and info.compute_capability == "8.9"
    assert info.profile_shapes[COORDS] == ((1, 3), (4, 3), (8, 3))
    assert info.metadata.labels == {"1": "white_matter"}
    assert info.metadata.io.get(COORDS).shape == (NUM_QUERIES, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tensorrt_version": "11.1.0"}, r"TensorRT 10\.13\.0\.35 vs 11\.1\.0 installed"),
        ({"compute_capability": "9.0"}, r"compute capability 8\.9 vs 9\.0 on this GPU"),
    ],
)
def test_engine_for_another_setup_is_refused(tmp_path: Path, change: dict[str, str], message: str) -> None:
    ctx, _, env = _side_file(tmp_path)
    other = trt.TrtEnvironment(**{**env.__dict__, **change})
    with pytest.raises(ModelFormatError, match=message):
        trt.verify_engine_side_file(ctx, source_onnx=tmp_path / "decoder.onnx", env=other)


def test_engine_from_another_graph_is_refused(tmp_path: Path) -> None:
    ctx, _, env = _side_file(tmp_path)
    (tmp_path / "decoder.onnx").write_bytes(b"re-exported graph")
    with pytest.raises(ModelFormatError, match="source ONNX sha256"):
        trt.verify_engine_side_file(ctx, source_onnx=tmp_path / "decoder.onnx", env=env)


def test_engine_without_side_file_is_refused(tmp_path: Path) -> None:
    ctx, side, env = _side_file(tmp_path)
    side.unlink()
    with pytest.raises(ModelFormatError, match="engine has no side file"):
        trt.verify_engine_side_file(ctx, source_onnx=tmp_path / "decoder.onnx", env=env)


def test_parity_feeds_are_cut_to_each_end_of_the_profile() -> None:
    shapes = trt.profile_shapes(decoder_io(model_config("a", "demo")), trt.QueryProfile(1, 5, 12))
    inputs = {
        COORDS: np.arange(15, dtype=np.float32).reshape(5, 3),
        PATCHES: np.zeros((5, 1, 7, 7, 7), dtype=np.float32),
        LATENT: np.ones((1, 1, 336), dtype=np.float32),
    }
    for which, n in ((0, 1), (1, 5), (2, 12)):
        feed = trt.profile_feeds(shapes, which, inputs)
        assert feed[COORDS].shape == (n, 3) and feed[PATCHES].shape == (n, 1, 7, 7, 7)
        assert feed[LATENT].shape == (1, 1, 336)
        np.testing.assert_array_equal(feed[COORDS], np.concatenate([inputs[COORDS]] * 3)[:n])

