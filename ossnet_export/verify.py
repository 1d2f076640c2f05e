"""Parity of exported graphs with PyTorch, on inputs built the way the runtime builds them.

Every export (and ``ossnet-export verify``) runs the ONNX graphs with ONNX Runtime (CPU) and the
model in PyTorch on the same inputs and compares, elementwise, ``|ort - torch| <= atol + rtol *
|torch|`` (numpy's ``allclose`` rule; fp32 defaults ``rtol=1e-4``, ``atol=1e-5``):

* encoder: ``latent`` and (C, D) ``coarse_logits`` of a structured phantom;
* decoder: ``logits`` at two different query counts, fed the PyTorch latent so each graph is
  judged on its own.

Inputs come from :mod:`ossnet_deploy.preprocess` (``prepare_volume``, ``extract_patches``,
``normalise_coords``) applied to :func:`make_phantom`: ellipsoids of different intensity per
channel under a smooth multiplicative bias, with a little seeded texture, placed on the preset's
geometry; queries are spread over the object, its border and the background (grid corners
included, so patches reach into the padding). Bare noise would hide errors that only show on
realistic intensity ranges and on padded patches.

Also here: :func:`decoder_sensitivity` (whether the decoder's logits move with each of its
inputs), and the dense decode used by the fp16 gate and the golden files (:func:`dense_labels`,
through ``ossnet_deploy.scheduler`` in ``dense`` mode). The weight perturbation that keeps tests
honest on untrained models (``perturb_``, ``calibrate_``) lives in :mod:`ossnet_export.testing`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ossnet_deploy.errors import ModelFormatError, describe
from ossnet_deploy.geometry import labels_to_grid
from ossnet_deploy.metadata import COARSE_LOGITS, COORDS, LATENT, LOGITS, PATCHES, VOLUME
from ossnet_deploy.pipeline import DecoderFeed, DecoderRun, Encoding, segment_region
from ossnet_deploy.preprocess import PreparedVolume, PreprocessConfig, encoder_input, prepare_volume
from ossnet_deploy.scheduler import SchedulerConfig
from ossnet_train.config import ModelConfig

__all__ = [
    "FP32_ATOL",
    "FP32_RTOL",
    "Deviation",
    "ParityError",
    "ParityReport",
    "Phantom",
    "VerificationCase",
    "compare",
    "decoder_feed",
    "decoder_sensitivity",
    "dense_labels",
    "gate_box",
    "make_case",
    "make_phantom",
    "onnx_decode",
    "query_points",
    "torch_decode",
    "torch_reference",
]

FP32_RTOL = 1e-4
FP32_ATOL = 1e-5


class ParityError(ModelFormatError):
    """An exported graph disagrees with PyTorch (or an fp16 graph with fp32) beyond tolerance."""


# ----------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True)
class Deviation:
    """The elementwise comparison of one output tensor.

    Attributes:
        tensor: what was compared, e.g. ``"decoder logits (N=389)"``.
        shape: the tensor's shape.
        max_abs: largest ``|actual - expected|``.
        max_rel: largest ``|actual - expected| / |expected|`` over elements with ``expected != 0``.
        worst_index: index of the element furthest outside (or least inside) the tolerance.
        actual: its value in the graph under test.
        expected: its value in the reference.
        excess: ``|actual - expected| / (atol + rtol * |expected|)`` there; > 1 fails
            (``inf`` for a non-finite value).
        rtol: relative tolerance.
        atol: absolute tolerance.
    """

    tensor: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...]
    actual: float
    expected: float
    excess: float
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        """Every element within ``atol + rtol * |expected|``."""
        return self.excess <= 1.0

    def describe(self) -> str:
        """One line naming the tensor, the index and the two values."""
        bound = self.atol + self.rtol * abs(self.expected)
        return (
            f"{self.tensor} {list(self.shape)}: largest deviation at index {self.worst_index}: "
            f"{self.actual:.8g} vs reference {self.expected:.8g} (|diff| {abs(self.actual - self.expected):.3g}, "
            f"allowed {bound:.3g} = atol {self.atol:g} + rtol {self.rtol:g} * |reference|); "
            f"max |diff| over the tensor {self.max_abs:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (for ``ossnet.parity``)."""
        return {
            "tensor": self.tensor,
            "shape": list(self.shape),
            "max_abs": _finite(self.max_abs),
            "max_rel": _finite(self.max_rel),
            "worst_index": list(self.worst_index),
            "excess": _finite(self.excess),
        }


def _finite(value: float) -> float | str:
    return float(value) if math.isfinite(value) else str(value)


def compare(tensor: str, actual: np.ndarray, expected: np.ndarray, *, rtol: float, atol: float) -> Deviation:
    """Compare ``actual`` with ``expected`` elementwise (float64 arithmetic).

    Raises:
        ParityError: the shapes differ (a graph with the wrong output shape).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ParityError(
            describe(None, f"{tensor} has the wrong shape", expected=str(e.shape), found=str(a.shape),
                     fix="re-export the graphs")
        )
    if a.size == 0:
        return Deviation(tensor, a.shape, 0.0, 0.0, (), 0.0, 0.0, 0.0, rtol, atol)
    if not np.isfinite(e).all():
        # Not an export problem: the model itself overflows on a plain input.
        bad = int(np.count_nonzero(~np.isfinite(e)))
        raise ParityError(
            describe(None, f"PyTorch itself gives non-finite {tensor} on the verification volume",
                     expected="finite values", found=f"{bad} of {e.size} values NaN/inf",
                     fix="the checkpoint's weights have diverged (check its training log); export a healthy checkpoint")
        )
    diff = np.abs(a - e)
    excess = diff / (atol + rtol * np.abs(e))
    excess[~np.isfinite(a) | ~np.isfinite(e)] = np.inf
    flat = int(np.argmax(excess))
    worst = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    nonzero = e != 0
    max_rel = float(np.max(diff[nonzero] / np.abs(e[nonzero]))) if nonzero.any() else 0.0
    return Deviation(
        tensor=tensor,
        shape=tuple(int(s) for s in a.shape),
        max_abs=float(np.max(diff)) if np.isfinite(diff).all() else math.inf,
        max_rel=max_rel,
        worst_index=worst,
        actual=float(a[worst]),
        expected=float(e[worst]),
        excess=float(excess[worst]),
        rtol=rtol,
        atol=atol,
    )


@dataclass(frozen=True)
class ParityReport:
    """All comparisons of one verification run.

    Attributes:
        deviations: one :class:`Deviation` per compared tensor.
        reference: what the inputs were (``"phantom"`` or a volume path).
        query_counts: decoder query counts used.
        extra: further figures (e.g. fp16 Dice, input sensitivity), JSON-ready.
    """

    deviations: tuple[Deviation, ...]
    reference: str
    query_counts: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every tensor within tolerance."""
        return all(d.ok for d in self.deviations)

    @property
    def worst(self) -> Deviation:
        """The comparison closest to (or furthest beyond) its tolerance."""
        return max(self.deviations, key=lambda d: d.excess)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures for ``ossnet.parity``."""
        first = self.deviations[0]
        return {
            "reference": self.reference,
            "rtol": first.rtol,
            "atol": first.atol,
            "query_counts": list(self.query_counts),
            "passed": self.ok,
            "max_abs": {d.tensor: _finite(d.max_abs) for d in self.deviations},
            "max_rel": {d.tensor: _finite(d.max_rel) for d in self.deviations},
            "worst": self.worst.to_dict(),
            **self.extra,
        }

    def raise_if_failed(self, path: str | os.PathLike[str] | None, what: str) -> None:
        """Raise :class:`ParityError` naming the largest deviation unless every tensor passed."""
        if self.ok:
            return
        raise ParityError(
            describe(
                path,
                f"{what} failed verification",
                expected="every value within tolerance",
                found=self.worst.describe(),
                fix="re-export from the checkpoint; if it persists, report it with the checkpoint "
                "(nothing was written to the destination)",
            )
        )


# ----------------------------------------------------------------------------------------
# Phantom and queries


@dataclass(frozen=True)
class Phantom:
    """A structured synthetic volume as a file would store it.

    Attributes:
        image: ``(C, X, Y, Z)`` float32 raw intensities in stored axis order (MRI-like
            arbitrary units, or HU for ``ct_window``).
        affine: ``(4, 4)`` float64 voxel-to-world (mm); axis 0 is stored flipped (LAS-like),
            so preparation exercises the reorientation.
        label: ``(X, Y, Z)`` uint8, 1 inside the "object" ellipsoid.
    """

    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray


def _ellipsoid(grids: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def make_phantom(preprocess: PreprocessConfig, *, seed: int = 0, shape: Sequence[int] | None = None) -> Phantom:
    """Build a phantom that fits the preset's geometry.

    Head/body ellipsoid, an "object" ellipsoid off-centre (the label) and a darker inner
    ellipsoid; per channel the three tissues get different intensities (the object's contrast
    flips sign between channels), times a smooth bias field, plus 2 % seeded texture.
    ``fixed_spacing_pad``: stored at the grid spacing (no resampling), 85 % of the grid so the
    grid keeps a padding margin; ``fixed_shape_resample`` (CT, HU): half the grid, resampled up.

    Args:
        preprocess: the preset's preprocessing.
        seed: texture seed.
        shape: stored spatial shape, overriding the default (e.g. a small region for a gate).
    """
    grid = np.asarray(preprocess.shape)
    if shape is None:
        factor = 0.85 if preprocess.geometry == "fixed_spacing_pad" else 0.5
        shape = tuple(max(8, int(s * factor)) for s in grid)
    dims = tuple(int(s) for s in shape)
    axes = np.ogrid[tuple(slice(0, s) for s in dims)]
    grids = [a.astype(np.float32) for a in axes]
    centre = [(s - 1) / 2 for s in dims]
    body = _ellipsoid(grids, centre, [0.46 * s for s in dims])
    obj_centre = [c + 0.12 * s for c, s in zip(centre, dims, strict=True)]
    obj = _ellipsoid(grids, obj_centre, [0.2 * s for s in dims])
    inner = _ellipsoid(grids, [c - 0.15 * s for c, s in zip(centre, dims, strict=True)], [0.1 * s for s in dims])
    bias = 1.0 + 0.15 * np.sin(grids[0] / dims[0] * math.pi) * np.cos(grids[1] / dims[1] * math.pi / 2) + 0.1 * (
        grids[2] / dims[2]
    )
    rng = np.random.default_rng(seed)
    n_channels = len(preprocess.channels)
    image = np.empty((n_channels, *dims), dtype=np.float32)
    ct = preprocess.intensity == "ct_window"
    for c in range(n_channels):
        if ct:
            tissue, object_value, inner_value, background = 40.0, 120.0, -30.0, -1000.0
        else:
            tissue = 100.0 * (1.0 + 0.25 * c)
            object_value = 100.0 * (2.0 - 0.6 * c)
            inner_value = 40.0 + 10.0 * c
            background = preprocess.background_raw
        channel = np.full(dims, background, dtype=np.float32)
        channel[body] = tissue
        channel[body & obj] = object_value
        channel[body & inner] = inner_value
        scale = abs(tissue) * 0.02
        texture = rng.standard_normal(dims, dtype=np.float32) * np.float32(scale)
        inside = body if not ct else np.ones(dims, dtype=bool)
        channel[inside] = (channel * bias + texture)[inside]
        if not ct:
            # MRI background stays exactly at its raw value so the foreground box is the body.
            channel[body] = np.maximum(channel[body], preprocess.foreground_threshold + 1.0)
        image[c] = channel
    spacing = np.asarray(preprocess.spacing_mm if preprocess.geometry == "fixed_spacing_pad" else (0.8, 0.8, 1.5))
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (dims[0] * spacing[0] / 2, -dims[1] * spacing[1] / 2, -dims[2] * spacing[2] / 2)
    return Phantom(image=image, affine=affine, label=(body & obj).astype(np.uint8))


def _border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` (bool, 3D) with a 6-neighbour outside it, within its bounding box."""
    found = np.argwhere(mask)
    out = np.zeros_like(mask)
    if found.size == 0:
        return out
    lo = np.maximum(found.min(axis=0) - 1, 0)
    hi = found.max(axis=0) + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sub = mask[box]
    padded = np.pad(sub, 1, constant_values=False)
    interior = sub.copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    out[box] = sub & ~interior
    return out


def query_points(label_grid: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` query voxels ``(count, 3)`` int64: a third in the object, a third on its border,
    the rest in the background, always including the 8 grid corners (patches that reach into
    the padding).

    Args:
        label_grid: the object mask on the padded grid (``labels_to_grid`` of the phantom's label).
        count: number of queries (>= 8).
        seed: sampling seed.
    """
    if count < 8:
        raise ValueError(f"count must be >= 8 (the grid corners are always queried), got {count}")
    rng = np.random.default_rng(seed)
    mask = label_grid.astype(bool)
    shape = np.asarray(mask.shape)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    n_object = (count - 8) // 3
    n_border = (count - 8) // 3
    n_background = count - 8 - n_object - n_border
    parts = [corners]
    for pool, n in ((np.argwhere(mask), n_object), (np.argwhere(_border(mask)), n_border)):
        if len(pool) == 0:
            parts.append(rng.integers(0, shape, size=(n, 3)))
        else:
            parts.append(pool[rng.choice(len(pool), size=n, replace=len(pool) < n)])
    parts.append(rng.integers(0, shape, size=(n_background, 3)))
    return np.concatenate(parts).astype(np.int64)


def decoder_feed(
    prepared: PreparedVolume, idx: np.ndarray, config: ModelConfig, preprocess: PreprocessConfig, latent: np.ndarray
) -> dict[str, np.ndarray]:
    """The decoder graph's inputs for query voxels ``idx`` (N, 3) int64, by input name.

    ``coords`` (N, 3) and, except O-Net, ``patches`` (N, C_p, 7, 7, 7) float32 from the
    runtime's own :class:`ossnet_deploy.pipeline.DecoderFeed`; ``latent`` (1, K, L) float32 as given.
    """
    feed = DecoderFeed(prepared, preprocess, patches=config.uses_patches)(idx)
    feed[LATENT] = np.ascontiguousarray(latent, dtype=np.float32)
    return feed


class _FeedRunner:
    """A decoder that takes whole feeds (latent included) as the pipeline's pair runner.

    Verification decodes PyTorch and ONNX with one latent, so the encoder never runs here.
    """

    def __init__(self, logits_fn: Callable[[dict[str, np.ndarray]], np.ndarray], uses_patches: bool) -> None:
        self._logits_fn = logits_fn
        self.uses_patches = uses_patches

    def encode(self, volume: np.ndarray) -> Encoding:
        raise NotImplementedError("verification passes the encoding it compares against")

    def decoder(self, latent: np.ndarray) -> DecoderRun:
        bound = np.ascontiguousarray(latent, dtype=np.float32)
        return lambda feed: self._logits_fn({**feed, LATENT: bound})


@dataclass(frozen=True)
class VerificationCase:
    """One prepared volume and its query sets.

    Attributes:
        prepared: the phantom (or reference volume) through ``prepare_volume``.
        label_grid: uint8 object mask on the grid (zeros for a reference volume without label).
        queries: one ``(N, 3)`` int64 array per query count.
        reference: ``"phantom"`` or the volume's path.
    """

    prepared: PreparedVolume
    label_grid: np.ndarray
    queries: tuple[np.ndarray, ...]
    reference: str


def make_case(
    preprocess: PreprocessConfig,
    query_counts: Sequence[int],
    *,
    seed: int = 0,
    volume: tuple[np.ndarray, np.ndarray, str] | None = None,
) -> VerificationCase:
    """Prepare the phantom (or ``volume`` = (image (C, X, Y, Z), affine, path)) and cut query sets."""
    if volume is None:
        phantom = make_phantom(preprocess, seed=seed)
        prepared = prepare_volume(phantom.image, phantom.affine, preprocess)
        label_grid = labels_to_grid(phantom.label, prepared.placement)
        reference = "phantom"
    else:
        image, affine, path = volume
        prepared = prepare_volume(image, affine, preprocess, source=path, fit="downsample")
        # Without a label, "object" = the brightest tenth of the input's region (first channel).
        region = prepared.padded[0][prepared.region]
        label_grid = np.zeros(preprocess.shape, dtype=np.uint8)
        label_grid[prepared.region] = region > np.quantile(region, 0.9)
        reference = os.fspath(path)
    queries = tuple(query_points(label_grid, n, seed=seed + i) for i, n in enumerate(query_counts))
    return VerificationCase(prepared, label_grid, queries, reference)


# ----------------------------------------------------------------------------------------
# Running both sides


def torch_reference(
    model: nn.Module, case: VerificationCase, preprocess: PreprocessConfig
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """PyTorch outputs: encoder outputs by name, and decoder logits (N, 1) per query set.

    The model runs in eval mode under ``torch.no_grad`` in float32 on the CPU.
    """
    model.eval()
    config: ModelConfig = model.config
    with torch.no_grad():
        encoded = model.encode(torch.from_numpy(np.ascontiguousarray(encoder_input(case.prepared))))
        outputs = {LATENT: encoded.latent.numpy()}
        if encoded.coarse_logits is not None:
            outputs[COARSE_LOGITS] = encoded.coarse_logits.numpy()
        logits = [
            torch_decode(model, decoder_feed(case.prepared, idx, config, preprocess, outputs[LATENT]))
            for idx in case.queries
        ]
    return outputs, logits


def torch_decode(model: nn.Module, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """``model.decode`` on a decoder feed (numpy in, ``(N, 1)`` float32 numpy out)."""
    with torch.no_grad():
        patches = torch.from_numpy(feed[PATCHES]) if PATCHES in feed else None
        return model.decode(torch.from_numpy(feed[COORDS]), patches, torch.from_numpy(feed[LATENT])).numpy()


def onnx_decode(session: Any, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """An ONNX Runtime decoder session on a decoder feed -> ``(N, 1)`` float32 logits."""
    names = [i.name for i in session.get_inputs()]
    return session.run([LOGITS], {name: feed[name] for name in names})[0]


def cpu_session(path: str | os.PathLike[str]) -> Any:
    """A CPU ONNX Runtime session (all graph optimisations, as the runtime uses)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def verify_pair(
    encoder_path: str | os.PathLike[str],
    decoder_path: str | os.PathLike[str],
    model: nn.Module,
    preprocess: PreprocessConfig,
    case: VerificationCase,
    *,
    rtol: float = FP32_RTOL,
    atol: float = FP32_ATOL,
    reference: tuple[dict[str, np.ndarray], list[np.ndarray]] | None = None,
) -> ParityReport:
    """Compare both graphs with PyTorch on ``case``; the decoder is fed the PyTorch latent.

    ``reference``: :func:`torch_reference` of the same model and case, if already computed.
    """
    reference, logits = reference if reference is not None else torch_reference(model, case, preprocess)
    encoder = cpu_session(encoder_path)
    got = encoder.run(None, {VOLUME: np.ascontiguousarray(encoder_input(case.prepared))})
    deviations = []
    for out, value in zip(encoder.get_outputs(), got, strict=True):
        if out.name not in reference:
            raise ParityError(describe(encoder_path, f"unexpected encoder output {out.name!r}",
                                       expected=str(sorted(reference)), fix="re-export the graphs"))
        deviations.append(compare(f"encoder {out.name}", value, reference[out.name], rtol=rtol, atol=atol))
    decoder = cpu_session(decoder_path)
    for idx, expected in zip(case.queries, logits, strict=True):
        feed = decoder_feed(case.prepared, idx, model.config, preprocess, reference[LATENT])
        deviations.append(
            compare(f"decoder logits (N={len(idx)})", onnx_decode(decoder, feed), expected, rtol=rtol, atol=atol)
        )
    return ParityReport(tuple(deviations), case.reference, tuple(len(q) for q in case.queries))


# ----------------------------------------------------------------------------------------
# Dense decoding (fp16 gate, golden files)


def gate_box(case: VerificationCase, side: int) -> tuple[slice, slice, slice]:
    """A box of at most ``side``^3 grid voxels centred on the object (or the input's region)."""
    found = np.argwhere(case.label_grid)
    if found.size:
        centre = (found.min(axis=0) + found.max(axis=0)) // 2
    else:
        centre = np.array([(s.start + s.stop) // 2 for s in case.prepared.region])
    grid = case.label_grid.shape
    box = []
    for c, g in zip(centre, grid, strict=True):
        n = min(side, g)
        start = int(min(max(int(c) - n // 2, 0), g - n))
        box.append(slice(start, start + n))
    return (box[0], box[1], box[2])


def dense_labels(
    logits_fn: Callable[[dict[str, np.ndarray]], np.ndarray],
    case: VerificationCase,
    config: ModelConfig,
    preprocess: PreprocessConfig,
    latent: np.ndarray,
    region: tuple[slice, slice, slice],
    *,
    max_queries: int = 8192,
) -> np.ndarray:
    """Dense segmentation (uint8, region-shaped) of ``region`` by any decoder.

    ``logits_fn(feed) -> (N, 1)`` is :func:`torch_decode` or :func:`onnx_decode` bound to a
    model or session; the runtime's pipeline in ``dense`` mode queries every voxel.
    """
    runner = _FeedRunner(logits_fn, config.uses_patches)
    result = segment_region(case.prepared, preprocess, runner, SchedulerConfig(mode="dense", max_queries=max_queries),
                            region=region, encoding=Encoding(np.ascontiguousarray(latent, dtype=np.float32)))
    return result.labels


# ----------------------------------------------------------------------------------------
# Does the decoder use every input?


def decoder_sensitivity(model: nn.Module, feed: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
    """Largest change of the decoder's logits when one input is changed, per input name.

    ``coords`` are mirrored through the grid centre, ``patches`` get standard normal
    noise (one normalised intensity unit), the ``latent`` noise of its own standard deviation.
    A decoder that ignores an input shows ~0 for it.
    """
    rng = np.random.default_rng(seed)
    base = torch_decode(model, feed)
    out = {}
    for name, value in feed.items():
        if name == COORDS:
            # The grid mirrored through its centre: every query moves, most by a large distance.
            changed = -value
        elif name == PATCHES:
            changed = value + rng.standard_normal(value.shape, dtype=np.float32)
        else:
            changed = value + rng.standard_normal(value.shape, dtype=np.float32) * np.float32(max(float(value.std()), 1e-3))
        out[name] = float(np.max(np.abs(torch_decode(model, {**feed, name: changed.astype(np.float32)}) - base)))
    return out


def stored_volume(path: str | os.PathLike[str], preprocess: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Load a reference volume (any input form ``ossnet-segment`` accepts: a NIfTI file, a case
    folder, ...) as ``(image (C, X, Y, Z) float32, affine, path)`` for :func:`make_case`.

    Raises:
        InputError: from ``ossnet_deploy.inputs.resolve_volume`` (unreadable file, wrong
            channel count, ...).
    """
    from ossnet_deploy.inputs import resolve_volume

    volume = resolve_volume(Path(path), preprocess.channels, min_side=preprocess.patch_size)
    return volume.data, volume.affine, os.fspath(path)
