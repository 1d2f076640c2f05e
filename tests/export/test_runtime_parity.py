"""The torch-free runtime against PyTorch: the same scheduler, the same preprocessing, live.

For exported tiny models (tests/export/conftest.py: perturbed, calibrated weights, so the
segmentation is not trivial), ``Segmenter`` (ONNX Runtime, CPU) must agree with the PyTorch
model run through the very same pipeline (``ossnet_deploy.pipeline``) (Dice >= 0.999), and ``adaptive`` must agree
with ``dense`` (Dice >= 0.999). The phantom is stored LAS-like and written to a NIfTI file, so
reading, reorientation and the header copy are part of the comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from ossnet_deploy.geometry import labels_to_grid
from ossnet_deploy.metrics import dice
from ossnet_deploy.pipeline import bind_decoder, segment_prepared
from ossnet_deploy.preprocess import PreparedVolume, PreprocessConfig, encoder_input, prepare_volume
from ossnet_deploy.scheduler import SchedulerConfig
from ossnet_deploy.segmenter import Segmenter
from ossnet_export.verify import make_phantom
from ossnet_train.torch_pair import TorchPair

DICE_MIN = 0.999


def _torch_run(model: torch.nn.Module, image: np.ndarray, affine: np.ndarray, preprocess: PreprocessConfig,
               ) -> tuple[PreparedVolume, Callable[[np.ndarray], np.ndarray]]:
    """Prepare like the runtime and encode with PyTorch: (prepared, decode callable)."""
    prepared = prepare_volume(image, affine, preprocess)
    runner = TorchPair(model)
    latent = runner.encode(encoder_input(prepared)).latent
    return prepared, bind_decoder(prepared, preprocess, runner, latent)


def _torch_segmentation(model: torch.nn.Module, image: np.ndarray, affine: np.ndarray, preprocess: PreprocessConfig,
                        mode: str, threshold: float) -> tuple[np.ndarray, int]:
    """PyTorch through the runtime's own pipeline: (labels on the stored grid, decoder queries)."""
    prepared = prepare_volume(image, affine, preprocess)
    config = SchedulerConfig(mode=mode, threshold_logit=threshold, max_queries=4096)
    model.eval()
    result = segment_prepared(prepared, preprocess, TorchPair(model), config)
    return result.labels, result.stats.total_queries


def _balanced_threshold(model: torch.nn.Module, image: np.ndarray, affine: np.ndarray,
                        preprocess: PreprocessConfig, label: np.ndarray) -> float:
    """A logit threshold that separates the phantom's object from the rest.

    The tiny models have perturbed, not trained, weights: at logit 0 they call nearly every
    voxel foreground, and a parity test on a full volume proves nothing. Midway between the
    median logit inside the object and outside it gives a structured segmentation instead.
    """
    prepared, decode = _torch_run(model, image, affine, preprocess)
    grid_label = labels_to_grid(label, prepared.placement)
    inside = np.argwhere(grid_label[prepared.region] > 0)
    outside = np.argwhere(grid_label[prepared.region] == 0)
    origin = np.array([s.start for s in prepared.region])
    rng = np.random.default_rng(0)
    pick = outside[rng.choice(len(outside), size=min(len(outside), 4 * len(inside)), replace=False)]
    return float((np.median(decode(inside + origin)) + np.median(decode(pick + origin))) / 2)


def _segmenter(directory: Path, mode: str, threshold: float) -> Segmenter:
    """The exported pair with the decision threshold moved (a fact of the model in its metadata)."""
    base = Segmenter.from_dir(directory, device="cpu", threads=1, mode=mode)
    facts = replace(base.encoder_meta.scheduler, threshold_logit=threshold)
    return Segmenter(base.encoder, base.decoder, replace(base.encoder_meta, scheduler=facts), base.decoder_meta,
                     mode=mode, model_dir=directory)


# C: coarse seeding, one channel; D: two channels and large patches.
@pytest.mark.parametrize("variant", ["c", "d"])
def test_runtime_matches_pytorch_through_the_same_scheduler(
    tiny_export: Callable[[str], Any], tmp_path: Path, variant: str
) -> None:
    exported = tiny_export(variant)
    model, preprocess = exported.model, exported.preprocess
    phantom = make_phantom(preprocess, seed=3)
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(phantom.image, 0, -1), phantom.affine), path)
    stored = nib.load(path)
    data = np.asarray(stored.dataobj, dtype=np.float32)
    image = np.moveaxis(data, -1, 0) if data.ndim == 4 else data[None]  # (C, X, Y, Z) as prepare_volume wants
    threshold = _balanced_threshold(model, image, stored.affine, preprocess, phantom.label)

    ort_dense_img, ort_stats = _segmenter(exported.directory, "dense", threshold).segment_with_stats(path)
    ort_dense = np.asarray(ort_dense_img.dataobj)
    torch_dense, torch_queries = _torch_segmentation(model, image, stored.affine, preprocess, "dense", threshold)
    fraction = float(ort_dense.mean())
    assert 0.01 < fraction < 0.99, f"trivial segmentation ({fraction:.3f} foreground): the test would prove nothing"
    assert ort_stats.total_queries == torch_queries
    assert dice(ort_dense, torch_dense) >= DICE_MIN
    np.testing.assert_allclose(ort_dense_img.affine, stored.affine, atol=1e-6)

    ort_adaptive_img, adaptive_stats = _segmenter(exported.directory, "adaptive", threshold).segment_with_stats(path)
    ort_adaptive = np.asarray(ort_adaptive_img.dataobj)
    assert adaptive_stats.total_queries < ort_stats.total_queries
    assert dice(ort_adaptive, ort_dense) >= DICE_MIN
    torch_adaptive, _ = _torch_segmentation(model, image, stored.affine, preprocess, "adaptive", threshold)
    assert dice(ort_adaptive, torch_adaptive) >= DICE_MIN


REPO = Path(__file__).resolve().parents[2]


def test_bundled_model_matches_its_checkpoint_on_the_sample() -> None:
    """The shipped graphs against the committed checkpoint they came from, on the shipped sample.

    A trained model on a real 1 mm volume: ONNX Runtime and PyTorch through the same adaptive
    schedule must agree (Dice >= 0.999), and the segmentation must be far from trivial.
    """
    from ossnet_train.checkpoint import load_model

    model, stored = load_model(REPO / "models" / "mni-wm-demo.pt")
    preprocess = PreprocessConfig.from_dict(stored.preprocess)
    sample = REPO / "examples" / "demo_3004_t1.nii.gz"
    source = nib.load(sample)
    image = np.asarray(source.dataobj, dtype=np.float32)[None]
    segmenter = Segmenter.from_dir(device="cpu", mode="adaptive")
    assert segmenter.encoder_meta.pair_id == stored.weights_sha256()
    ort_img, stats = segmenter.segment_with_stats(sample)
    ort = np.asarray(ort_img.dataobj)
    threshold = segmenter.encoder_meta.scheduler.threshold_logit
    torch_labels, torch_queries = _torch_segmentation(model, image, source.affine, preprocess, "adaptive", threshold)
    assert 0.05 < float(ort.mean()) < 0.5
    assert dice(ort, torch_labels) >= DICE_MIN
    assert abs(torch_queries - stats.total_queries) <= 0.001 * stats.total_queries
