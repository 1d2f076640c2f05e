"""The presets (``brats``, ``lits``, ``demo``): one table for the preprocessing and the model sizes.

A preset names a data family and fixes two halves that must agree: how a stored image becomes
model input (grid, channels, geometry, intensities, augmentation axes) and the network's sizes
(encoder widths, decoder width). Both halves live in :data:`PRESETS` below, and everything else
is derived from it:

* :data:`ossnet_deploy.preprocess.PREPROCESS_PRESETS` / :func:`ossnet_deploy.preprocess.preprocess_preset`
  build a ``PreprocessConfig`` from :meth:`Preset.preprocess_kwargs`;
* :data:`ossnet_train.config.PRESETS` (``ModelPreset``), which ``model_config`` reads, takes
  :attr:`Preset.in_channels`, :attr:`Preset.encoder_channels`, :attr:`Preset.global_shape` and
  :attr:`Preset.decoder_width`.

Why here, in the runtime package: the dependency rule is deploy <- train <- export
(``ossnet_deploy`` never imports torch or the other two packages), and the runtime needs the
preprocessing while training needs both halves. The model sizes are plain integers, so the
whole table can live torch-free at the bottom of that chain, where both sides can import it;
putting it in ``ossnet_train`` would make the runtime depend on training. The facts the two
halves used to repeat by hand are stated once: the model's input channels are the preset's
channel names (``in_channels = len(channels)``) and its global volume is half the preprocessing
grid (``global_shape = grid_shape / 2``, the pooling ``PreprocessConfig.global_downsample`` does).
Pure Python: importing this module loads neither numpy nor torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["GLOBAL_DOWNSAMPLE", "PRESETS", "Preset"]

#: The model's global volume is the preprocessing grid mean-pooled by this factor on every axis
#: (``PreprocessConfig.global_downsample``'s default; the exporter refuses any other).
GLOBAL_DOWNSAMPLE = 2


@dataclass(frozen=True)
class Preset:
    """Both halves of one preset, as plain values.

    ``channels``: channel names in model order; ``grid_shape``: the full-resolution model grid
    ``(D, H, W)`` (``PreprocessConfig.shape``); ``encoder_widths``: the residual encoder's block
    widths after the input (``encoder_channels[1:]``); ``decoder_width``: width of the decoder's
    blocks; ``preprocessing``: the remaining ``PreprocessConfig`` keyword arguments (the large
    patch is not among them: it follows the variant, see ``preprocess_preset``).
    """

    name: str
    channels: tuple[str, ...]
    grid_shape: tuple[int, int, int]
    encoder_widths: tuple[int, ...]
    decoder_width: int
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """Image channels C of the model: one per channel name."""
        return len(self.channels)

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        """The encoder's channel chain, input first: ``(in_channels, *encoder_widths)``."""
        return (self.in_channels, *self.encoder_widths)

    @property
    def global_shape(self) -> tuple[int, int, int]:
        """The model's global (half-resolution) volume: ``grid_shape / GLOBAL_DOWNSAMPLE``."""
        g = GLOBAL_DOWNSAMPLE
        return (self.grid_shape[0] // g, self.grid_shape[1] // g, self.grid_shape[2] // g)

    def preprocess_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of this preset's ``PreprocessConfig`` (without the large patch)."""
        return {"shape": self.grid_shape, "channels": self.channels, **self.preprocessing}


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "brats": Preset(
            "brats",
            channels=("flair", "t1", "t1ce", "t2"),
            grid_shape=(256, 256, 160),
            encoder_widths=(16, 32, 64, 128),
            decoder_width=512,
            preprocessing=MappingProxyType({
                "geometry": "fixed_spacing_pad",
                "intensity": "zscore_foreground",
                "spacing_mm": (1.0, 1.0, 1.0),
                "max_shift": 8,
                "background_raw": 0.0,
                "flip_axes": (0,),
            }),
        ),
        "lits": Preset(
            "lits",
            channels=("ct",),
            grid_shape=(512, 512, 512),
            encoder_widths=(8, 16, 32, 64, 128),
            decoder_width=512,
            preprocessing=MappingProxyType({
                "geometry": "fixed_shape_resample",
                "intensity": "ct_window",
                "ct_window_hu": (-250.0, 250.0),
                "background_raw": -250.0,
                # Body vs air; only used if the intensity is switched to zscore_foreground.
                "foreground_threshold": -500.0,
                # The liver is lateralised: a mirrored abdomen never occurs at inference.
                "flip_axes": (),
            }),
        ),
        "demo": Preset(
            "demo",
            channels=("t1",),
            grid_shape=(224, 256, 192),
            encoder_widths=(16, 32, 64, 128),
            decoder_width=128,
            preprocessing=MappingProxyType({
                "geometry": "fixed_spacing_pad",
                "intensity": "zscore_foreground",
                # Skull-stripped T1 comes with zero or noisy backgrounds and any field of view; the
                # tissue rule finds the same brain in all of them (docs/design.md#intensities).
                "foreground": "tissue",
                "spacing_mm": (1.0, 1.0, 1.0),
                "max_shift": 8,
                "background_raw": 0.0,
                "flip_axes": (0,),
            }),
        ),
    }
)
