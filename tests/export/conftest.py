"""Tiny OSS-Net models with perturbed, calibrated weights, and one export of each variant.

Sizes: grid 32^3 (global 16^3), encoder 1 block, decoder width 16 with 2 blocks for C and D
(block 1 has the identity shortcut; K = 3 latent channels) and 1 block for O-Net, A and B, so a
dynamo export takes a few seconds. O-Net, A and C use the demo preset's
preprocessing (1 channel); B and D the brats preset's with 2 channels, so multi-channel input
and large patches (C_p = 4) are covered. Weights go through
:func:`ossnet_export.testing.perturb_` with calibration on the phantom, so every decoder input
moves the logits (a fresh model's CBN conditioning is zero).

O-Net, A, B and D are exported in-process with :func:`export_model`. C is a freshly *trained*
checkpoint (a few Adam steps on random data) exported by the command line in a subprocess
(``python -m ossnet_export.cli CKPT -o DIR --trt``), so the same folder serves the variant tests
and the command-line tests without a second export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from ossnet_deploy.preprocess import PreprocessConfig, preprocess_preset
from ossnet_export.export_onnx import ExportOptions, ExportResult, export_model
from ossnet_export.testing import perturb_
from ossnet_export.verify import make_case
from ossnet_train.checkpoint import save_checkpoint
from ossnet_train.config import VARIANT_SPECS
from ossnet_train.model import OSSNet
from ossnet_train.registry import create_model

#: Query counts of the in-process exports (fewer than the CLI's defaults; still two different ones).
TEST_QUERY_COUNTS = (37, 150)
#: The CLI's default verification query counts.
CLI_QUERY_COUNTS = (61, 389)
_GRID = (32, 32, 32)
#: Perturbation seed per variant. D's (3) gives logits of both signs in the fp16 gate's box with a
#: margin of 0.07 logits to the threshold there (measured), so that gate test is not decided by
#: rounding luck.
_SEEDS = {"onet": 0, "a": 1, "b": 2, "c": 3, "d": 3}


def make_tiny_model(variant: str, *, seed: int | None = None) -> tuple[OSSNet, PreprocessConfig]:
    """A perturbed, calibrated tiny model of ``variant`` and its preprocessing."""
    multi = VARIANT_SPECS[variant].large_patches
    preset = "brats" if multi else "demo"
    channels = ("flair", "t1") if multi else ("t1",)
    torch.manual_seed(0)
    model = create_model(variant, preset, global_shape=(16, 16, 16), encoder_channels=(len(channels), 4),
                         decoder_width=16, decoder_blocks=2 if variant in ("c", "d") else 1)
    preprocess = replace(preprocess_preset(preset, large_patches=model.config.large_patches),
                         shape=_GRID, channels=channels)
    case = make_case(preprocess, (61, 389))
    perturb_(model, seed=_SEEDS[model.config.variant] if seed is None else seed, calibrate=(case, preprocess))
    return model, preprocess


def train_a_few_steps_(model: OSSNet, *, steps: int = 3, seed: int = 7) -> OSSNet:
    """A few Adam steps of the training forward on random data (BCE, + coarse head); eval mode after."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        volume = torch.randn((1, config.in_channels, *config.global_shape), generator=generator)
        coords = torch.rand((1, 64, 3), generator=generator) * 2 - 1
        patches = torch.randn((1, 64, config.patch_channels, 7, 7, 7), generator=generator)
        target = (torch.rand((1, 64, 1), generator=generator) > 0.5).float()
        out = model(volume, coords, patches)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target)
        if out.coarse_logits is not None:
            loss = loss + 0.1 * out.coarse_logits.square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ossnet_export.cli ARGS`` in a fresh process (what the console script runs)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "ossnet_export.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, check=False)


@dataclass(frozen=True)
class TinyExport:
    """A tiny model and its exported folder.

    Attributes:
        model: the model exported (eval mode).
        preprocess: its preprocessing.
        directory: the folder holding encoder.onnx and decoder.onnx.
        query_counts: the verification query counts the export used.
        result: the in-process :class:`ExportResult` (None for the command-line export).
        checkpoint: the checkpoint file (command-line export only).
        process: the command-line run (command-line export only).
    """

    model: OSSNet
    preprocess: PreprocessConfig
    directory: Path
    query_counts: tuple[int, int]
    result: ExportResult | None = None
    checkpoint: Path | None = None
    process: subprocess.CompletedProcess[str] | None = None


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyExport]:
    """``tiny_export(variant)``: each variant exported once per session (C through the CLI)."""
    cache: dict[str, TinyExport] = {}

    def get(variant: str) -> TinyExport:
        if variant in cache:
            return cache[variant]
        model, preprocess = make_tiny_model(variant)
        root = tmp_path_factory.mktemp(f"export_{variant}")
        if variant == "c":
            train_a_few_steps_(model)
            checkpoint = save_checkpoint(root / "tiny_c.pt", model, preprocess)
            out = root / "cli_out"
            process = run_cli(str(checkpoint), "-o", str(out), "--trt", "--opt-queries", "1024",
                              "--max-queries", "4096")
            cache[variant] = TinyExport(model, preprocess, out, CLI_QUERY_COUNTS, checkpoint=checkpoint,
                                        process=process)
        else:
            out = root / "pair"
            result = export_model(model, preprocess, out, options=ExportOptions(query_counts=TEST_QUERY_COUNTS))
            cache[variant] = TinyExport(model, preprocess, out, TEST_QUERY_COUNTS, result=result)
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., tuple[OSSNet, PreprocessConfig]]:
    """``tiny_model(variant, seed=None)``: a fresh perturbed, calibrated tiny model and its preprocessing."""
    return make_tiny_model


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args)``: run ``ossnet-export`` in a subprocess."""
    return run_cli
