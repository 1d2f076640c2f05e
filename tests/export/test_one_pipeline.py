"""One pipeline, three callers: the runtime, training validation and export verification.

``Segmenter`` (ONNX Runtime), ``ossnet_train.validate.segment_grid`` (PyTorch) and
``ossnet_export.verify.dense_labels`` (the exported decoder fed PyTorch's latent) all segment a
volume through ``ossnet_deploy.pipeline``; on one tiny exported model and one phantom their
labels must be identical, voxel for voxel (docs/design.md#one-pipeline).

The tiny models have perturbed weights that call nearly every voxel foreground at logit 0, so
the decision threshold is moved into the widest gap between the sorted logits of the region's
voxels between their 30th and 70th percentiles: a segmentation of about half the region with a
long, ragged surface, where a changed patch, coordinate or placement would flip voxels, while
ONNX Runtime's and PyTorch's float32 rounding (about 1e-6 logits here) cannot, since no voxel's
logit is nearer the threshold than half that gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ossnet_deploy.geometry import labels_to_grid, region_labels_to_input
from ossnet_deploy.model import ModelPair
from ossnet_deploy.pipeline import bind_decoder
from ossnet_deploy.preprocess import encoder_input, prepare_volume
from ossnet_deploy.segmenter import Segmenter
from ossnet_export.verify import VerificationCase, cpu_session, dense_labels, make_phantom, onnx_decode
from ossnet_train.torch_pair import TorchPair
from ossnet_train.validate import segment_grid

CPU = torch.device("cpu")


@pytest.mark.parametrize("variant", ["c", "d"])
def test_runtime_validation_and_verification_give_identical_labels(
    tiny_export: Callable[[str], Any], variant: str
) -> None:
    exported = tiny_export(variant)
    model, preprocess = exported.model, exported.preprocess
    phantom = make_phantom(preprocess, seed=5)
    image, affine = phantom.image, phantom.affine
    array = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # NIfTI layout (X, Y, Z[, C])

    prepared = prepare_volume(image, affine, preprocess)
    with torch.no_grad():
        latent = model.encode(torch.from_numpy(np.ascontiguousarray(encoder_input(prepared)))).latent.numpy()
    threshold, margin = _threshold_in_a_gap(prepared, preprocess, TorchPair(model), latent)
    assert margin > 1e-5, f"no logit gap near the median (half-gap {margin:.2g})"
    session = cpu_session(exported.directory / "decoder.onnx")
    verification = VerificationCase(prepared, labels_to_grid(phantom.label, prepared.placement), (), "phantom")

    for mode in ("dense", "reference", "adaptive"):
        runtime = np.asarray(_segmenter(exported.directory, mode, threshold).segment((array, affine)).dataobj)
        fraction = float(runtime.mean())
        assert 0.05 < fraction < 0.95, f"{mode}: trivial segmentation ({fraction:.4f}), the test would prove nothing"

        region_labels, _ = segment_grid(model, prepared, preprocess, device=CPU, mode=mode, max_queries=4096,
                                        threshold_logit=threshold)
        validation = region_labels_to_input(region_labels, prepared.placement)
        np.testing.assert_array_equal(validation, runtime, err_msg=f"validation vs runtime, {mode}")

    # Verification decodes densely with the exported decoder and PyTorch's latent.
    # Subtracting a float32 threshold keeps each float32 logit's side of it exactly.
    verified = dense_labels(lambda feed: onnx_decode(session, feed) - np.float32(threshold), verification,
                            model.config, preprocess, latent, prepared.region)
    dense, _ = segment_grid(model, prepared, preprocess, device=CPU, mode="dense", threshold_logit=threshold)
    np.testing.assert_array_equal(verified, dense, err_msg="verification vs validation, dense")
    assert 0.05 < float(dense.mean()) < 0.95


def _segmenter(directory: Path, mode: str, threshold: float) -> Segmenter:
    """The exported pair with the decision threshold moved (a fact of the model in its metadata)."""
    base = ModelPair.open(directory, device="cpu", threads=1)
    facts = replace(base.encoder_meta.scheduler, threshold_logit=threshold)
    pair = ModelPair(base.encoder, base.decoder_backend, replace(base.encoder_meta, scheduler=facts),
                     base.decoder_meta, folder=directory)
    return Segmenter(pair, mode=mode)


def _threshold_in_a_gap(prepared: Any, preprocess: Any, runner: TorchPair, latent: np.ndarray) -> tuple[float, float]:
    """(threshold, half-gap): the midpoint of the widest gap between sorted dense logits in the
    30th-70th percentile band, as a float32 value so that every side compares the same number."""
    decode = bind_decoder(prepared, preprocess, runner, latent)
    axes = [np.arange(r.start, r.stop) for r in prepared.region]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)
    logits = np.sort(np.concatenate([decode(idx[i : i + 4096]) for i in range(0, len(idx), 4096)]))
    lo, hi = int(0.3 * len(logits)), int(0.7 * len(logits))
    gaps = np.diff(logits[lo:hi])
    k = int(np.argmax(gaps))
    threshold = float(np.float32((float(logits[lo + k]) + float(logits[lo + k + 1])) / 2))
    margin = min(threshold - float(logits[lo + k]), float(logits[lo + k + 1]) - threshold)
    return threshold, margin
