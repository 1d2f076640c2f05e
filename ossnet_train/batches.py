"""Training samples: dataset cases -> prepared, shifted, augmented volumes -> points, patches, targets.

Preparing a volume (NIfTI read, reorientation, resampling) is the expensive part, so each case is
prepared once and cached in memory (:class:`CaseCache`); every step then re-does only what is
random: the placement shift (``prepare_volume(..., shift=...)`` on the cached canonical arrays,
which needs no resampling any more), the augmentation, the point sampling and the patch cutting.
With ``max_shift == 0`` (or ``fixed_shape_resample``) the whole prepared volume is cached and a
step only augments it.

Randomness: sample ``g`` (step ``s``, slot ``b``: ``g = s * batch + b``) draws everything from a
generator seeded with ``(seed, g)``, and the case it uses from a per-epoch permutation seeded with
``(seed, epoch)``. A sample therefore does not depend on the worker that makes it, on the number
of workers or on whether the run was resumed: resuming needs only the step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.geometry import labels_to_grid, resample_linear, resample_nearest, to_canonical
from ossnet_deploy.patches import extract_patches, normalise_coords
from ossnet_deploy.preprocess import (
    PreparedVolume,
    PreprocessConfig,
    foreground_of,
    global_pool,
    prepare_volume,
)
from ossnet_train.augment import AugmentConfig, augment_volume
from ossnet_train.datasets import NiftiDataset
from ossnet_train.losses import coarse_target
from ossnet_train.sampling import (
    BAND_WINDOW,
    band_indices,
    border_band,
    border_points,
    frame_points,
    uniform_points,
)

__all__ = [
    "ARCHITECTURES",
    "CaseCache",
    "SampleConfig",
    "TrainingSamples",
    "ValidationCase",
    "bytes_per_case",
    "case_for_sample",
    "sample_rng",
]

#: what a sample is made for: OSS-Net (points) or a U-Net baseline (crops / slices).
ARCHITECTURES = ("ossnet", "unet3d", "unet2d")
# Tags that keep the seed sequences of samples and of epoch permutations apart.
_SAMPLE_TAG = 0x5A3
_EPOCH_TAG = 0xE90
#: ``border`` sampling: share of the points not taken from the band that come from the input's
#: foreground (the preprocessing's own rule); the rest are uniform over the input's region of the
#: grid (background included, never the padding around it).
FOREGROUND_SHARE = 0.8


@dataclass(frozen=True)
class SampleConfig:
    """What one training sample holds.

    points: query points per volume (OSS-Net). sampling: ``"uniform"`` (every voxel of the grid)
    or ``"border"`` (``border_balance`` of the points from the band around the label surface,
    :data:`~ossnet_train.sampling.BAND_WINDOW`; of the rest ``foreground_share`` from the input's
    foreground and the others from the input's region of the grid, so none in the padding).
    coarse_shape: ``(d, h, w)`` of the coarse logits (variants C, D) or None.
    patches: cut local patches (every variant but O-Net); large_patches: the pooled 14^3 one too (B, D).
    architecture: ``"ossnet"``, ``"unet3d"`` (random ``crop`` of the grid) or ``"unet2d"``
    (``slices`` random slices along ``slice_axis``).
    augment: the augmentation; ``augment=None`` switches it off.
    """

    architecture: str = "ossnet"
    points: int = 16384
    sampling: str = "uniform"
    border_balance: float = 0.5
    foreground_share: float = FOREGROUND_SHARE
    coarse_shape: tuple[int, int, int] | None = None
    patches: bool = True
    large_patches: bool = False
    crop: tuple[int, int, int] = (128, 128, 128)
    slices: int = 8
    slice_axis: int = 2
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of global sample ``index`` (``step * batch + slot``) of a run seeded ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SAMPLE_TAG, int(index)]))


def case_for_sample(seed: int, index: int, n_cases: int) -> int:
    """Which case sample ``index`` uses: epochs of ``n_cases`` samples, each a fresh permutation."""
    epoch, slot = divmod(int(index), n_cases)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), _EPOCH_TAG, epoch])).permutation(n_cases)
    return int(order[slot])


@dataclass(frozen=True)
class _Cached:
    """One case ready for fast per-step preparation.

    static: the prepared volume (no shift possible) and its grid label; or, when shifts are drawn,
    the canonical resampled image ``data`` (C, X, Y, Z) float32 with a RAS+ affine at the grid
    spacing and its label ``label`` (X, Y, Z) uint8, from which ``prepare_volume`` places the
    volume without resampling. ``band``: (M, 3) int16 voxels of the border band in the frame of
    ``label`` (static: the grid), or None when sampling uniformly. ``frame``: the input's resampled
    volume as a bool foreground mask (the preprocessing's rule on the raw data), whose voxel ``v``
    sits on grid voxel ``v + frame_offset`` + the step's placement offset; None when sampling
    uniformly.
    """

    case_id: str
    static: PreparedVolume | None
    data: np.ndarray | None
    affine: np.ndarray | None
    label: np.ndarray
    band: np.ndarray | None
    frame: np.ndarray | None = None
    frame_offset: tuple[int, int, int] = (0, 0, 0)

    @property
    def nbytes(self) -> int:
        arrays = [self.label, self.band, self.data, self.frame]
        if self.static is not None:
            arrays += [self.static.padded, self.static.global_volume]
        return int(sum(a.nbytes for a in arrays if a is not None))


class CaseCache:
    """Per-case cache of prepared training volumes (filled lazily, kept for the whole run).

    ``dataset``: the training cases; ``preprocess``: the model's preprocessing; ``band``: also
    cache the border band and the foreground (border sampling); ``band_window``: the band's
    dilation window. Memory: about one padded grid of float32 per channel plus one uint8 grid
    per case (two with ``band``).
    """

    def __init__(self, dataset: NiftiDataset, preprocess: PreprocessConfig, *, band: bool,
                 band_window: int = BAND_WINDOW) -> None:
        self.dataset = dataset
        self.preprocess = preprocess
        self.with_band = band
        self.band_window = band_window
        self.static = preprocess.max_shift == 0 or preprocess.geometry == "fixed_shape_resample"
        self._cache: dict[int, _Cached] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached arrays so far."""
        return sum(c.nbytes for c in self._cache.values())

    def get(self, index: int) -> _Cached:
        """The cached form of case ``index`` (prepared on first use)."""
        if index not in self._cache:
            self._cache[index] = self._prepare(index)
        return self._cache[index]

    def _prepare(self, index: int) -> _Cached:
        case = self.dataset[index]
        source = str(self.dataset.cases[index].channels[0])
        # A shifted case needs only the placement here (the correction of its canonical data
        # follows once, below), so it is prepared without the bias correction.
        preprocess = self.preprocess if self.static else _without_bias_correction(self.preprocess)
        prepared = prepare_volume(case.data, case.affine, preprocess, source=source)
        placement = prepared.placement
        canon = None
        if self.with_band or not self.static:
            # The reoriented, resampled raw data: the foreground's frame, and (shifted) what is placed again.
            canon = to_canonical(case.data, placement.ornt_array)
            if placement.resampled_shape != placement.canonical_shape:
                canon = resample_linear(canon, placement.resampled_shape)
        frame = foreground_of(canon, self.preprocess) if canon is not None and self.with_band else None
        if self.static:
            label = labels_to_grid(case.label, placement, source=source)
            band = self._band(label)
            return _Cached(case.case_id, prepared, None, None, label, band, frame, placement.offset)
        # Keep the reoriented, resampled arrays: placing them again with a shift needs no resampling.
        label = to_canonical(case.label, placement.ornt_array)
        if placement.resampled_shape != placement.canonical_shape:
            label = resample_nearest(label, placement.resampled_shape)
        assert canon is not None  # computed whenever the case is not static
        data = np.ascontiguousarray(canon, dtype=np.float32)
        if self.preprocess.bias_correction != "none":
            # Once per case: the field does not depend on the placement shift (_shifted then
            # prepares with the correction off).
            data = self.preprocess.bias_corrected(data)
        label = np.ascontiguousarray(label, dtype=np.uint8)
        # RAS+ at exactly the grid spacing: prepare_volume will neither reorient nor resample.
        affine = np.diag([*self.preprocess.spacing_mm, 1.0])
        return _Cached(case.case_id, None, data, affine, label, self._band(label), frame)

    def _band(self, label: np.ndarray) -> np.ndarray | None:
        if not self.with_band:
            return None
        flat = band_indices(border_band(label, self.band_window))
        dtype = np.int16 if max(label.shape) < 2**15 else np.int32
        return np.stack(np.unravel_index(flat, label.shape), axis=1).astype(dtype)


@dataclass(frozen=True)
class _Volume:
    """A volume as one step sees it: augmented padded grid, its label, pad values, band flat indices;
    the foreground frame (``_Cached.frame``), its offset in the grid and the flipped axes."""

    padded: np.ndarray
    label: np.ndarray
    pad_values: np.ndarray
    band: np.ndarray | None
    frame: np.ndarray | None = None
    frame_offset: tuple[int, int, int] = (0, 0, 0)
    flipped: tuple[int, ...] = ()


def _without_bias_correction(config: PreprocessConfig) -> PreprocessConfig:
    """``config`` with the bias correction off: for data corrected already, or placement only."""
    return config if config.bias_correction == "none" else replace(config, bias_correction="none")


def _shifted(cached: _Cached, config: PreprocessConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(padded, grid label, pad values, offset of the label frame in the grid) for this step."""
    if cached.static is not None:
        return cached.static.padded, cached.label, cached.static.pad_values, (0, 0, 0)
    shift = rng.integers(-config.max_shift, config.max_shift + 1, size=3)
    assert cached.data is not None and cached.affine is not None  # set whenever static is None
    # The cached canonical data is already bias-corrected when the config asks for it.
    prepared = prepare_volume(cached.data, cached.affine, _without_bias_correction(config),
                              shift=tuple(int(s) for s in shift))
    label = labels_to_grid(cached.label, prepared.placement)
    return prepared.padded, label, prepared.pad_values, prepared.placement.offset


def _band_in_grid(band: np.ndarray, offset: Sequence[int], flipped: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Flat grid indices of the band after placement at ``offset`` and the flips of the augmentation.

    The band (dilated label boundary) commutes with translation and flips, so it is computed once
    per case and moved with the volume instead of being recomputed every step.
    """
    idx = band.astype(np.int64) + np.asarray(offset, dtype=np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid)), axis=1)
    idx = idx[inside]
    for axis in flipped:
        idx[:, axis] = grid[axis] - 1 - idx[:, axis]
    return np.ravel_multi_index(tuple(idx.T), tuple(grid)).astype(np.int64)


def _training_volume(cached: _Cached, preprocess: PreprocessConfig, config: SampleConfig,
                     rng: np.random.Generator) -> _Volume:
    padded, label, pads, offset = _shifted(cached, preprocess, rng)
    flipped: tuple[int, ...] = ()
    if config.augment is not None:
        aug = augment_volume(padded, label, pads, config.augment, rng)
        padded, label, pads, flipped = aug.padded, aug.label, aug.pad_values, aug.flipped
    band = None
    if cached.band is not None:
        band = _band_in_grid(cached.band, offset, flipped, preprocess.shape)
    frame_offset = tuple(int(a) + int(b) for a, b in zip(offset, cached.frame_offset, strict=True))
    return _Volume(padded, label, pads, band, cached.frame, frame_offset, tuple(flipped))  # type: ignore[arg-type]


class TrainingSamples(Dataset):
    """Map-style dataset of training samples, indexed by global sample number ``step * batch + slot``.

    Each item is a dict of numpy arrays (collated by the default DataLoader collate):

    * ``ossnet``: ``volume`` (C, Dg, Hg, Wg) float32 global volume; ``coords`` (N, 3) float32;
      ``patches`` (N, C_p, 7, 7, 7) float32 (not for O-Net); ``targets`` (N,) float32 in {0, 1};
      ``coarse`` (1, d, h, w) float32 max-pooled label (C, D only).
    * ``unet3d``: ``image`` (C, cx, cy, cz) float32 random crop of the padded grid; ``target``
      (cx, cy, cz) float32.
    * ``unet2d``: ``image`` (S, C, P, Q) float32, ``S`` random slices along ``slice_axis``;
      ``target`` (S, P, Q) float32.
    """

    def __init__(self, cache: CaseCache, config: SampleConfig, *, seed: int, length: int) -> None:
        if config.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {config.architecture!r}; expected one of {ARCHITECTURES}")
        if config.sampling not in ("uniform", "border"):
            raise InputError(describe(None, "unknown sampling strategy", expected="'uniform' or 'border'",
                                      found=repr(config.sampling)))
        self.cache = cache
        self.config = config
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = sample_rng(self.seed, index)
        cached = self.cache.get(case_for_sample(self.seed, index, len(self.cache)))
        volume = _training_volume(cached, self.cache.preprocess, self.config, rng)
        if self.config.architecture == "unet3d":
            return self._crop(volume, rng)
        if self.config.architecture == "unet2d":
            return self._slices(volume, rng)
        return self._points(volume, rng)

    def _points(self, volume: _Volume, rng: np.random.Generator) -> dict[str, np.ndarray]:
        config, pre = self.config, self.cache.preprocess
        grid = pre.shape
        if config.sampling == "border" and volume.band is not None:
            idx = border_points(volume.band, grid, config.points, rng, balance=config.border_balance,
                                fill=lambda n, r: _fill_points(volume, grid, n, r, config.foreground_share))
        else:
            idx = uniform_points(grid, config.points, rng)
        sample: dict[str, np.ndarray] = {
            "volume": global_pool(volume.padded, pre.global_downsample),
            "coords": normalise_coords(idx, grid),
            "targets": volume.label[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32),
        }
        if config.patches:
            sample["patches"] = extract_patches(volume.padded, volume.pad_values, idx,
                                                large=config.large_patches, patch_size=pre.patch_size)
        if config.coarse_shape is not None:
            sample["coarse"] = coarse_target(torch.from_numpy(volume.label)[None], config.coarse_shape)[0].numpy()
        return sample

    def _crop(self, volume: _Volume, rng: np.random.Generator) -> dict[str, np.ndarray]:
        grid = volume.label.shape
        crop = [min(c, g) for c, g in zip(self.config.crop, grid, strict=True)]
        start = [int(rng.integers(0, g - c + 1)) for c, g in zip(crop, grid, strict=True)]
        window = tuple(slice(s, s + c) for s, c in zip(start, crop, strict=True))
        return {
            "image": np.ascontiguousarray(volume.padded[(slice(None), *window)]),
            "target": volume.label[window].astype(np.float32),
        }

    def _slices(self, volume: _Volume, rng: np.random.Generator) -> dict[str, np.ndarray]:
        axis = self.config.slice_axis
        size = volume.label.shape[axis]
        chosen = rng.choice(size, size=min(self.config.slices, size), replace=False)
        image = np.take(volume.padded, chosen, axis=axis + 1)  # (C, ..S.., ...)
        target = np.take(volume.label, chosen, axis=axis)
        return {
            "image": np.ascontiguousarray(np.moveaxis(image, axis + 1, 0)),  # (S, C, P, Q)
            "target": np.ascontiguousarray(np.moveaxis(target, axis, 0)).astype(np.float32),  # (S, P, Q)
        }


def _fill_points(volume: _Volume, grid: Sequence[int], n: int, rng: np.random.Generator,
                 foreground_share: float) -> np.ndarray:
    """The non-band points of ``border`` sampling: ``foreground_share`` of them from the input's
    foreground, the rest uniform over the input's region of the grid (uniform over the grid when
    the volume has no frame)."""
    if volume.frame is None:
        return uniform_points(grid, n, rng)
    n_fg = round(n * foreground_share)
    where = {"frame_shape": volume.frame.shape, "offset": volume.frame_offset, "grid_shape": grid,
             "flipped": volume.flipped}
    inside = frame_points(n_fg, rng, mask=volume.frame, **where)
    return np.concatenate([inside, frame_points(n - n_fg, rng, **where)], axis=0)


@dataclass(frozen=True)
class ValidationCase:
    """A validation subject: its prepared volume (no shift, no augmentation), its label on the input grid
    and the preprocessing that prepared it.

    ``label``: (X, Y, Z) uint8 binary target on the stored grid of the subject (what whole-volume
    Dice is computed against, docs/design.md#measuring).
    """

    case_id: str
    prepared: PreparedVolume
    label: np.ndarray
    preprocess: PreprocessConfig

    @classmethod
    def load(cls, dataset: NiftiDataset, index: int, preprocess: PreprocessConfig, *, fit: str = "error") -> ValidationCase:
        case = dataset[index]
        source = str(dataset.cases[index].channels[0])
        prepared = prepare_volume(case.data, case.affine, preprocess, fit=fit, source=source)
        return cls(case.case_id, prepared, case.label, preprocess)


def bytes_per_case(preprocess: PreprocessConfig) -> int:
    """Rough bytes one cached training case holds: its float32 grid per channel plus label, band and
    foreground frame."""
    voxels = math.prod(preprocess.shape)
    return voxels * (4 * len(preprocess.channels) + 1 + 2 + 1)
