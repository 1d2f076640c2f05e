"""The OpenVINO decoder backend (``device="openvino"``) against ONNX Runtime on the bundled model.

Skipped where openvino is not installed (the runtime-only CI environment); the full
environment installs the ``openvino`` extra and runs them.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ossnet_deploy import Segmenter
from ossnet_deploy.backends.ort import OrtBackend
from ossnet_deploy.devices import parse_device, plan_providers
from ossnet_deploy.errors import DependencyError, InputError, ModelFormatError
from ossnet_deploy.metrics import dice
from ossnet_deploy.model import DEFAULT_MODEL_DIR

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo_3004_t1.nii.gz"
DECODER = DEFAULT_MODEL_DIR / "decoder.onnx"

# Same graph, same fp32 inputs; only the order of float operations differs (OpenVINO fuses the
# elementwise chains and may contract multiply-adds). Measured on 100,000 random voxels of the
# sample: at most 6.2e-5 (99.9 % below 3.3e-5), about equally for logits near 0 and near 20, so
# the bound is absolute: rounding inside the network, not in proportion to the output. ONNX
# Runtime and PyTorch differ by the same order (up to 1.8e-5, docs/benchmarks.md). 2e-4 leaves
# room for other CPUs' kernels; a wrong fusion or a padded row leaking in moves logits by >> 1e-3.
RTOL, ATOL = 0.0, 2e-4


def _feed(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "coords": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "patches": (rng.standard_normal((n, 1, 7, 7, 7)) * 0.5).astype(np.float32),
        "latent": (rng.standard_normal((1, 6, 336)) * 0.3).astype(np.float32),
    }


def test_device_strings() -> None:
    assert parse_device("openvino").kind == "openvino"
    assert parse_device(" OV ").kind == "openvino"
    with pytest.raises(InputError, match="unknown device"):
        parse_device("openvino:1")
    # The encoder's part of an openvino request is ONNX Runtime's CPU provider.
    assert plan_providers("openvino", available=("CPUExecutionProvider",)).kind == "cpu"


def test_missing_openvino_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ossnet_deploy.backends.openvino import OpenVinoBackend

    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(DependencyError, match=r"ossnet\[openvino\]"):
        OpenVinoBackend(DECODER)
    with pytest.raises(DependencyError, match="openvino"):
        Segmenter.from_dir(device="openvino")


def test_bad_arguments_and_files(tmp_path: Path) -> None:
    from ossnet_deploy.backends.openvino import OpenVinoBackend

    with pytest.raises(ModelFormatError, match="not found"):
        OpenVinoBackend(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    pytest.importorskip("openvino")
    with pytest.raises(ModelFormatError, match="cannot load"):
        OpenVinoBackend(bad)
    for threads in (0, -1, True, 1.5):
        with pytest.raises(InputError, match="thread count"):
            OpenVinoBackend(DECODER, threads=threads)  # type: ignore[arg-type]
    for buckets in ((), (0,), (1024, -8), (2.5,), (True,), ("1024",)):
        with pytest.raises(InputError, match="buckets"):
            OpenVinoBackend(DECODER, buckets=buckets)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def backends() -> tuple[object, OrtBackend]:
    pytest.importorskip("openvino")
    from ossnet_deploy.backends.openvino import OpenVinoBackend

    # Small buckets so that full pieces, padded tails and the choice between buckets all occur.
    return OpenVinoBackend(DECODER, threads=2, buckets=(64, 16)), OrtBackend(DECODER, threads=2)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 64, 65, 100, 200])
def test_matches_onnx_runtime_for_every_query_count(backends: tuple[object, OrtBackend], n: int) -> None:
    ov, ort = backends
    assert ov.buckets == (64, 16)  # type: ignore[attr-defined]
    feed = _feed(n, seed=n)
    got = ov.run(feed)["logits"]  # type: ignore[attr-defined]
    want = ort.run(feed)["logits"]
    assert got.shape == want.shape == (n, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_rows_do_not_depend_on_their_neighbours(backends: tuple[object, OrtBackend]) -> None:
    ov, _ = backends
    feed = _feed(100, seed=7)
    whole = ov.run(feed)["logits"]  # type: ignore[attr-defined]
    # Row 70 of a 100-row call sits in a padded 64-bucket tail; alone it runs in the 16-bucket.
    alone = ov.run({k: (v[70:71] if k != "latent" else v) for k, v in feed.items()})["logits"]  # type: ignore[attr-defined]
    np.testing.assert_allclose(alone[0], whole[70], rtol=RTOL, atol=ATOL)


def test_specs_and_checks_are_the_graphs(backends: tuple[object, OrtBackend]) -> None:
    ov, ort = backends
    assert ov.inputs == ort.inputs and ov.outputs == ort.outputs  # type: ignore[attr-defined]
    assert ov.metadata_props == ort.metadata_props  # type: ignore[attr-defined]
    feed = _feed(10)
    feed["patches"] = feed["patches"][:9]
    with pytest.raises(InputError, match="differs between inputs"):
        ov.run(feed)  # type: ignore[attr-defined]


def test_concurrent_runs_agree(backends: tuple[object, OrtBackend]) -> None:
    ov, _ = backends
    feeds = [_feed(90, seed=s) for s in range(4)]
    expected = [ov.run(f)["logits"] for f in feeds]  # type: ignore[attr-defined]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = ov.run(feeds[i % 4])["logits"]  # type: ignore[attr-defined]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_array_equal(results[i], expected[i % 4])


def test_closed_backend_refuses_to_run() -> None:
    pytest.importorskip("openvino")
    from ossnet_deploy.backends.openvino import OpenVinoBackend
    from ossnet_deploy.errors import OssnetError

    ov = OpenVinoBackend(DECODER, threads=1, buckets=(8,))
    ov.close()
    with pytest.raises(OssnetError, match="closed"):
        ov.run(_feed(3))


def test_segmenting_the_sample_matches_onnx_runtime() -> None:
    pytest.importorskip("openvino")
    ours = Segmenter.from_dir(device="openvino", threads=2)
    reference = Segmenter.from_dir(device="cpu", threads=2)
    assert ours.device == "openvino" and ours.max_queries == reference.max_queries
    state = reference.encode(SAMPLE)
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, s, 5000) for s in reference.preprocess.shape], axis=1)
    got, want = ours.query(state, idx), reference.query(state, idx)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    labels_ov = np.asarray(ours.segment(SAMPLE).dataobj)
    labels_ort = np.asarray(reference.segment(SAMPLE).dataobj)
    # Identical but for voxels whose logit lies within rounding of the threshold.
    assert dice(labels_ov > 0, labels_ort > 0) > 0.9999


def test_auto_on_a_cpu_runs_the_decoder_in_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from ossnet_deploy import devices

    # A CPU-only onnxruntime (the GPU providers, where a test machine has them, are hidden).
    monkeypatch.setattr(devices, "available_providers", lambda: ("CPUExecutionProvider",))
    auto = Segmenter.from_dir(threads=1)
    assert auto.device == "openvino"
    assert auto.pair.encoder.device == "cpu"  # the encoder stays in ONNX Runtime
    # An explicit cpu is ONNX Runtime alone.
    assert Segmenter.from_dir(device="cpu", threads=1).device == "cpu"


def test_auto_without_openvino_runs_onnx_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from ossnet_deploy import devices

    monkeypatch.setattr(devices, "available_providers", lambda: ("CPUExecutionProvider",))
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    auto = Segmenter.from_dir(threads=1)
    assert auto.device == "cpu"
