"""The bundled default model (``ossnet_deploy/models/mni-wm-demo``) and the bundled sample (``examples/``).

These run the shipped graphs on the shipped held-out subject, exactly as the README's first
Quickstart command does, in whichever environment runs the tests (the runtime-only one
included, where the model comes from the installed package, not from the source tree).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ossnet_deploy import Segmenter
from ossnet_deploy.cli import main
from ossnet_deploy.metrics import dice
from ossnet_deploy.model import DEFAULT_MODEL_DIR, find_model_files
from ossnet_deploy.onnx_metadata import read_graph_metadata

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SAMPLE = EXAMPLES / "demo_3004_t1.nii.gz"
SAMPLE_LABEL = EXAMPLES / "demo_3004_wm.nii.gz"
#: The sample's Dice when the model was packaged was 0.9246 (evaluation.json, "sample"); a
#: model or runtime change that loses more than about 0.015 of it fails here.
MIN_SAMPLE_DICE = 0.91


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_dir(device="cpu")


@pytest.fixture(scope="module")
def segmented(segmenter: Segmenter) -> tuple[nib.Nifti1Image, object]:
    return segmenter.segment_with_stats(SAMPLE)


def test_the_bundled_pair_describes_itself() -> None:
    files = find_model_files(None)
    assert files.encoder.parent == DEFAULT_MODEL_DIR
    encoder, decoder = read_graph_metadata(files.encoder), read_graph_metadata(files.decoder)
    assert encoder.pair_id == decoder.pair_id
    assert encoder.model_config["variant"] == "c" and encoder.model_config["preset"] == "demo"
    assert json.loads(json.dumps(encoder.labels)) == {"1": "white_matter"}
    for name in ("MODEL_CARD.md", "MNI_NOTICE.txt"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name


def test_the_sample_is_small_and_held_out() -> None:
    total = sum(p.stat().st_size for p in EXAMPLES.iterdir() if p.is_file())
    assert total <= 5_000_000, f"examples/ holds {total / 1e6:.2f} MB; the limit is 5 MB"
    training = json.loads((DEFAULT_MODEL_DIR / "evaluation.json").read_text())["training"]
    assert "demo_3004" not in training["train_cases"] + training["val_cases"]


def test_segmenting_the_sample_matches_its_label(segmented: tuple[nib.Nifti1Image, object]) -> None:
    image, stats = segmented
    source = nib.load(SAMPLE)
    assert image.shape == source.shape
    np.testing.assert_allclose(image.affine, source.affine, rtol=0, atol=1e-6)
    labels = np.asarray(image.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    truth = np.asanyarray(nib.load(SAMPLE_LABEL).dataobj) > 0
    score = dice(labels > 0, truth)
    assert score >= MIN_SAMPLE_DICE, f"Dice {score:.4f} on the sample; the packaged model scored higher"
    assert stats.total_queries < 0.25 * stats.dense_queries  # the adaptive schedule did its job


def test_ossnet_segment_uses_the_bundled_model_by_default(tmp_path: Path,
                                                          segmented: tuple[nib.Nifti1Image, object]) -> None:
    out = tmp_path / "wm.nii.gz"
    result = CliRunner().invoke(main, ["-i", str(SAMPLE), "-o", str(out), "-d", "cpu", "--preview"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix("").with_suffix(".png").is_file()
    # Same graphs, same input, same schedule: the same labels as the Python API's.
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), np.asarray(segmented[0].dataobj))
