"""A bad preprocessing configuration keeps the meaning of where it came from.

:class:`~ossnet_deploy.preprocess.PreprocessConfig` raises :class:`InputError` itself (tests in
test_preprocess.py); a configuration read from a model file is the model's fault, so the runtime
turns it into :class:`ModelFormatError` naming the graph and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_models import threshold_decoder, threshold_encoder, threshold_pair_metadata

from ossnet_deploy import Segmenter
from ossnet_deploy.errors import InputError, ModelFormatError
from ossnet_deploy.metadata import KEY_PREPROCESS
from ossnet_deploy.preprocess import PreprocessConfig

PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
              "intensity": "zscore_foreground"}


def _pair_with_preprocess_metadata(folder: Path, stored: dict[str, object]) -> None:
    """A valid threshold pair whose ``ossnet.preprocess`` metadata is ``stored`` (in both graphs)."""
    config = PreprocessConfig.from_dict(PREPROCESS)
    coarse = tuple(g // 4 for g in config.global_shape)
    enc_props, dec_props = threshold_pair_metadata(PREPROCESS, coarse_shape=coarse)  # type: ignore[arg-type]
    for props in (enc_props, dec_props):
        props[KEY_PREPROCESS] = json.dumps(stored)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder.onnx").write_bytes(threshold_encoder(
        len(config.channels), config.global_shape, (6, 16), coarse_shape=coarse, metadata=enc_props))
    (folder / "decoder.onnx").write_bytes(threshold_decoder(config.patch_channels(), (6, 16), metadata=dec_props))


def test_invalid_preprocessing_in_a_model_file_is_a_model_format_error(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _pair_with_preprocess_metadata(folder, {**PREPROCESS, "patch_size": 6})
    with pytest.raises(ModelFormatError) as info:
        Segmenter.from_dir(folder, device="cpu", threads=1)
    message = str(info.value)
    assert not isinstance(info.value, InputError)
    assert message.startswith(str(folder / "encoder.onnx") + ": the model's preprocessing metadata is invalid")
    assert "PreprocessConfig.patch_size (expected a positive odd int; found 6)" in message
    assert message.endswith("Fix: re-export the model with this version of ossnet-export")


def test_the_same_configuration_given_directly_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"PreprocessConfig\.patch_size \(expected a positive odd int; found 6\)"):
        PreprocessConfig.from_dict({**PREPROCESS, "patch_size": 6})
