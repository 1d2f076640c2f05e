"""The one preset table (ossnet_deploy.presets) and the preprocessing built from it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from ossnet_deploy.preprocess import PREPROCESS_PRESETS, PreprocessConfig, preprocess_preset
from ossnet_deploy.presets import GLOBAL_DOWNSAMPLE, PRESETS


def test_the_table_names_the_presets_in_order():
    assert list(PRESETS) == ["brats", "lits", "demo"]
    assert list(PREPROCESS_PRESETS) == list(PRESETS)
    assert all(preset.name == name for name, preset in PRESETS.items())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preprocessing_is_built_from_the_table(name: str):
    preset = PRESETS[name]
    config = PREPROCESS_PRESETS[name]
    assert config.shape == preset.grid_shape and config.channels == preset.channels
    assert config == PreprocessConfig(**preset.preprocess_kwargs())
    # The model half agrees with it by construction: channels and the half-resolution global volume.
    assert config.global_downsample == GLOBAL_DOWNSAMPLE
    assert config.global_shape == preset.global_shape
    assert preset.in_channels == len(config.channels) == preset.encoder_channels[0]
    # The table names only PreprocessConfig settings, and never the large patch (the variant decides).
    assert set(preset.preprocessing) <= {f.name for f in fields(PreprocessConfig)} - {"large_patches"}
    assert not config.large_patches and preprocess_preset(name, large_patches=True).large_patches


def test_the_table_needs_neither_numpy_nor_torch():
    code = ("import sys, ossnet_deploy.presets; "
            "heavy = sorted(m for m in ('numpy', 'torch', 'ossnet_train') if m in sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
