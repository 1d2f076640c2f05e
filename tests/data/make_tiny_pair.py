"""Create the tiny exported pairs and golden files that ``tests/deploy`` (no torch) tests against.

Run from the repository root (needs torch, onnx, onnxscript)::

    python tests/data/make_tiny_pair.py

For each of ``c`` (skip encoder + coarse head) and ``a`` (plain encoder, no coarse head) it

1. builds a tiny OSS-Net on a 32^3 grid (global 16^3, 1 channel "t1", encoder (1, 8, 16),
   decoder width 32, 3 blocks, so C's latent is 4 x 64) with the demo preset's preprocessing, perturbs every weight and
   calibrates the normalisation statistics on a phantom (``ossnet_export.testing.perturb_``),
   then trains it briefly (Adam, BCE on the phantom's object) so its segmentation follows the
   object ("trained-ish": a real surface, not a constant);
2. saves a checkpoint in a temporary folder and exports it with ``ossnet_export`` into
   ``tests/data/tiny_<v>/`` (``encoder.onnx``, ``decoder.onnx``, verified against PyTorch);
3. writes ``tests/data/tiny_<v>_golden.npz`` with PyTorch's answers on a phantom:

   ``volume``            (X, Y, Z) float32, the phantom as a NIfTI stores it (1 channel)
   ``affine``            (4, 4) float64, its voxel-to-world matrix (axis 0 flipped)
   ``query_idx``         (N, 3) int64 grid voxels (object, border, background, grid corners)
   ``coords``            (N, 3) float32 decoder coordinates of ``query_idx``
   ``patches``           (N, 1, 7, 7, 7) float32 patches of ``query_idx`` (ossnet_deploy)
   ``latent``            (1, K, L) float32 PyTorch encoder output
   ``coarse_logits``     (1, 1, d, h, w) float32 (C only)
   ``logits``            (N, 1) float32 PyTorch decoder logits for ``query_idx``
   ``region``            (3, 2) int64 start/stop of the input's region of the grid
   ``dense_region``      region-shaped uint8: PyTorch dense segmentation (logit > 0)
   ``dense_input``       (X, Y, Z) uint8: the same mapped back onto the input grid

Everything is seeded; re-running rewrites the same values (up to float rounding of the
platform). Each pair is 0.7-0.8 MB (the decoder holds the patch encoder's two 343 x 343
identity masks, 0.23 MB).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ossnet_deploy.geometry import labels_to_input
from ossnet_deploy.metadata import COARSE_LOGITS, COORDS, LATENT, PATCHES
from ossnet_deploy.preprocess import encoder_input, preprocess_preset
from ossnet_export.export_onnx import ExportOptions, export_checkpoint
from ossnet_export.testing import perturb_
from ossnet_export.verify import (
    decoder_feed,
    dense_labels,
    make_case,
    make_phantom,
    query_points,
    torch_decode,
    torch_reference,
)
from ossnet_train.checkpoint import save_checkpoint
from ossnet_train.registry import create_model

HERE = Path(__file__).resolve().parent
GRID = (32, 32, 32)
TRAIN_STEPS = 40
QUERIES_PER_STEP = 512
#: Seed of the golden phantom's texture and query sampling (the training phantom uses another).
GOLDEN_SEED = 3


def _train(model: torch.nn.Module, case: object, preprocess: object, *, seed: int) -> float:
    """A few Adam steps of BCE on the phantom's object (plus the coarse head on the pooled label)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    volume = torch.from_numpy(np.ascontiguousarray(encoder_input(case.prepared)))
    label = torch.from_numpy(case.label_grid.astype(np.float32))[None, None]
    model.train()
    loss = torch.zeros(())
    for step in range(TRAIN_STEPS):
        idx = query_points(case.label_grid, QUERIES_PER_STEP, seed=seed * 1000 + step)
        feed = decoder_feed(case.prepared, idx, model.config, preprocess, np.zeros((1, 1, 1), np.float32))
        target = torch.from_numpy(case.label_grid[tuple(idx.T)].astype(np.float32))[None, :, None]
        patches = torch.from_numpy(feed[PATCHES])[None] if PATCHES in feed else None
        out = model(volume, torch.from_numpy(feed[COORDS])[None], patches)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target)
        if out.coarse_logits is not None:
            pooled = torch.nn.functional.max_pool3d(label, label.shape[-1] // out.coarse_logits.shape[-1])
            loss = loss + 0.1 * torch.nn.functional.binary_cross_entropy_with_logits(out.coarse_logits, pooled)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return float(loss.detach())


def make(variant: str, *, seed: int) -> None:
    """Build, export and write the golden file of one tiny variant."""
    torch.manual_seed(seed)
    model = create_model(variant, "demo", global_shape=(16, 16, 16), encoder_channels=(1, 8, 16),
                         decoder_width=32, decoder_blocks=3)
    preprocess = replace(preprocess_preset("demo"), shape=GRID)
    case = make_case(preprocess, (61, 389), seed=seed)
    perturb_(model, seed=seed, calibrate=(case, preprocess))
    loss = _train(model, case, preprocess, seed=seed)

    out = HERE / f"tiny_{variant}"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(Path(tmp) / f"tiny_{variant}.pt", model, preprocess)
        result = export_checkpoint(checkpoint, out, options=ExportOptions(overwrite=True))

    phantom = make_phantom(preprocess, seed=GOLDEN_SEED)
    golden_case = make_case(preprocess, (200, 201), seed=GOLDEN_SEED)
    outputs, logits = torch_reference(model, golden_case, preprocess)
    idx = golden_case.queries[0]
    feed = decoder_feed(golden_case.prepared, idx, model.config, preprocess, outputs[LATENT])
    np.testing.assert_array_equal(torch_decode(model, feed), logits[0])
    region = golden_case.prepared.region
    dense = dense_labels(lambda f: torch_decode(model, f), golden_case, model.config, preprocess, outputs[LATENT], region)
    grid = np.zeros(preprocess.shape, dtype=np.uint8)
    grid[region] = dense
    arrays = {
        "volume": phantom.image[0],
        "affine": phantom.affine,
        "query_idx": idx,
        "coords": feed[COORDS],
        "patches": feed[PATCHES],
        "latent": outputs[LATENT],
        "logits": logits[0],
        "region": np.array([[s.start, s.stop] for s in region], dtype=np.int64),
        "dense_region": dense,
        "dense_input": labels_to_input(grid, golden_case.prepared.placement),
    }
    if COARSE_LOGITS in outputs:
        arrays[COARSE_LOGITS] = outputs[COARSE_LOGITS]
    golden = HERE / f"tiny_{variant}_golden.npz"
    np.savez_compressed(golden, **arrays)
    sizes = ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in result.files.items())
    print(f"tiny_{variant}: final training loss {loss:.3f}; {sizes}; golden {golden.stat().st_size / 1024:.0f} KiB; "
          f"dense foreground {int(dense.sum())} of {dense.size} region voxels; "
          f"parity max |diff| {max(d.max_abs for d in result.parity.deviations):.2g}")


def main() -> int:
    torch.set_num_threads(1)
    make("c", seed=1)
    make("a", seed=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
