"""Synthetic benchmark volumes: a BraTS-like brain with a multi-blob tumour, a CT-like abdomen with a liver.

numpy only, deterministic per seed (``numpy.random.default_rng(seed)``, draws in a fixed order).
Both phantoms are built from two pieces:

* :class:`StarBlob`: a region that is star-shaped about its centre, ``rho(x) <= 1`` with
  ``rho = |A^-1 (x - c)| / (r (1 + g(u)))``: ``A`` the per-axis semi-axis scale, ``u`` the unit
  direction of ``A^-1 (x - c)`` and ``g`` a sum of a few random cosines of ``u`` (``|g| <=``
  the amplitude, < 1). A star-shaped region is connected, so blobs placed with a gap between
  their bounding spheres are exactly the connected components of the label.
* :func:`wave_field`: a smooth random texture, a normalised sum of plane waves, evaluated on any
  block of voxel coordinates (so 512^3 volumes are written slab by slab).

Voxel units throughout: index ``(i, j, k)`` of the stored array; both phantoms use a diagonal
affine with positive spacings, so the stored array is already RAS+ (``+i`` = the subject's left
to right, ``+j`` posterior to anterior, ``+k`` inferior to superior).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BRATS_SHAPE",
    "LITS_SHAPE",
    "BrainCase",
    "CtCase",
    "StarBlob",
    "brain_tumour_case",
    "ct_liver_case",
    "wave_field",
]

#: (X, Y, Z) of a BraTS volume, 1 mm.
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
#: (X, Y, Z) of the CT workload.
LITS_SHAPE: tuple[int, int, int] = (512, 512, 512)
#: voxels per slab when a volume is filled in slabs along k (bounds the temporaries, ~64 MiB each).
_SLAB_VOXELS = 1 << 24


@dataclass(frozen=True)
class StarBlob:
    """A smooth star-shaped region (see the module docstring); all lengths in voxels.

    centre: ``(3,)`` float64, voxel coordinates of the centre.
    radius: nominal radius ``r`` (before the axis scale and the angular modulation).
    axes: ``(3,)`` semi-axis scale ``A`` (``(1, 1, 1)``: round).
    directions: ``(n, 3)`` unit vectors ``w_n`` of the angular modulation.
    frequencies, phases, amplitudes: ``(n,)``: ``g(u) = sum a_n cos(pi f_n (w_n . u) + p_n)``.
    """

    centre: np.ndarray
    radius: float
    axes: np.ndarray
    directions: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, centre: Sequence[float], radius: float,
               axes: Sequence[float] = (1.0, 1.0, 1.0), waves: int = 4, amplitude: float = 0.25) -> StarBlob:
        """A blob with ``waves`` random cosines whose amplitudes sum to ``amplitude`` (< 1)."""
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        weights = rng.uniform(0.5, 1.0, size=waves)
        return cls(np.asarray(centre, dtype=np.float64), float(radius), np.asarray(axes, dtype=np.float64),
                   directions, rng.integers(1, 4, size=waves).astype(np.float64),
                   rng.uniform(0.0, 2.0 * math.pi, size=waves), amplitude * weights / weights.sum())

    def scaled(self, factor: float) -> StarBlob:
        """The same blob with ``radius * factor`` (volume times ``factor^3``)."""
        return StarBlob(self.centre, self.radius * factor, self.axes, self.directions, self.frequencies,
                        self.phases, self.amplitudes)

    @property
    def extent(self) -> float:
        """Radius of a sphere about the centre that holds the whole blob (voxels)."""
        return self.radius * float(self.axes.max()) * (1.0 + float(np.abs(self.amplitudes).sum()))

    def box(self, shape: Sequence[int]) -> tuple[slice, slice, slice]:
        """Slices of a ``shape`` array covering the blob (clipped to the array)."""
        reach = self.extent + 1.0
        return tuple(slice(max(0, math.floor(c - reach)), min(int(n), math.ceil(c + reach) + 1))
                     for c, n in zip(self.centre, shape, strict=True))  # type: ignore[return-value]

    def rho(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Relative distance ``rho`` (float32, broadcast shape of the index arrays); inside is ``<= 1``.

        ``i``, ``j``, ``k``: voxel coordinates shaped to broadcast, e.g. ``(n, 1, 1)``,
        ``(1, m, 1)``, ``(1, 1, p)`` float32.
        """
        d = [(np.asarray(x, dtype=np.float32) - np.float32(c)) / np.float32(a)
             for x, c, a in zip((i, j, k), self.centre, self.axes, strict=True)]
        norm = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        safe = np.maximum(norm, np.float32(1e-6))
        g = np.zeros(norm.shape, dtype=np.float32)
        for w, f, p, a in zip(self.directions, self.frequencies, self.phases, self.amplitudes, strict=True):
            proj = (d[0] * np.float32(w[0]) + d[1] * np.float32(w[1]) + d[2] * np.float32(w[2])) / safe
            g += np.float32(a) * np.cos(np.float32(math.pi * f) * proj + np.float32(p))
        return norm / (np.float32(self.radius) * (np.float32(1.0) + g))


def _grid(box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable float32 voxel coordinates of a box: ``(n, 1, 1)``, ``(1, m, 1)``, ``(1, 1, p)``."""
    i, j, k = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
    return i[:, None, None], j[None, :, None], k[None, None, :]


Clip = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _blob_voxels(blob: StarBlob, shape: Sequence[int], clip: Clip | None = None) -> int:
    """Voxels of ``blob`` inside the array (and inside ``clip(i, j, k)``, a bool mask, when given)."""
    box = blob.box(shape)
    grid = _grid(box)
    inside = blob.rho(*grid) <= 1.0
    if clip is not None:
        inside &= clip(*grid)
    return int(np.count_nonzero(inside))


def _fit_volume(blobs: list[StarBlob], shape: Sequence[int], target: float, rounds: int = 4,
                clip: Clip | None = None) -> list[StarBlob]:
    """Scale every radius by one factor so that the blobs' total voxel count is close to ``target``."""
    for _ in range(rounds):
        total = sum(_blob_voxels(b, shape, clip) for b in blobs)
        if total == 0:
            raise ValueError("blob volume fit: the blobs hold no voxel")
        factor = (target / total) ** (1.0 / 3.0)
        if abs(factor - 1.0) < 2e-3:
            break
        blobs = [b.scaled(factor) for b in blobs]
    return blobs


def wave_field(rng: np.random.Generator, waves: int, wavelength: float) -> WaveField:
    """A smooth random texture: ``waves`` plane waves of about ``wavelength`` voxels, values in [-1, 1]."""
    directions = rng.normal(size=(waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lengths = wavelength * rng.uniform(0.7, 1.4, size=waves)
    return WaveField(directions * (2.0 * math.pi / lengths)[:, None], rng.uniform(0, 2 * math.pi, size=waves))


@dataclass(frozen=True)
class WaveField:
    """``f(x) = sum_n cos(k_n . x + p_n) / sqrt(n / 2)``, clipped to [-1, 1] (float32); from :func:`wave_field`."""

    wavevectors: np.ndarray
    phases: np.ndarray

    def __call__(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Field at broadcastable float32 voxel coordinates (shape of their broadcast)."""
        out = np.zeros(np.broadcast_shapes(i.shape, j.shape, k.shape), dtype=np.float32)
        for kv, p in zip(self.wavevectors, self.phases, strict=True):
            out += np.cos(i * np.float32(kv[0]) + j * np.float32(kv[1]) + k * np.float32(kv[2]) + np.float32(p))
        out *= np.float32(1.0 / math.sqrt(len(self.phases) / 2.0))
        return np.clip(out, -1.0, 1.0, out=out)


# --------------------------------------------------------------------------------- brain


@dataclass(frozen=True, eq=False)
class BrainCase:
    """One BraTS-like case.

    channels: ``(4, X, Y, Z)`` int16 intensities in BraTS order (flair, t1, t1ce, t2); 0 outside
        the brain (skull-stripped, as BraTS).
    label: ``(X, Y, Z)`` uint8 BraTS values: 1 necrotic core, 2 oedema, 4 enhancing, 0 elsewhere.
    affine: ``(4, 4)`` 1 mm diagonal.
    tumour_voxels: whole-tumour voxels (= mm^3); blobs: number of tumour blobs (connected components).
    """

    channels: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tumour_voxels: int
    blobs: int


# Tissue intensities per channel (flair, t1, t1ce, t2), arbitrary units (x 1000 when stored).
_WM = (0.60, 1.00, 1.00, 0.55)
_GM = (0.72, 0.75, 0.78, 0.70)
_CSF = (0.20, 0.30, 0.32, 1.00)
_OEDEMA = (1.30, 0.65, 0.68, 1.20)
_ENHANCING = (1.10, 0.70, 1.50, 0.90)
_NECROSIS = (0.50, 0.40, 0.45, 1.10)
#: angular modulation of the tumour blobs (their extent is (1 + this) x their radius).
_TUMOUR_AMPLITUDE = 0.2
#: rho thresholds of the sub-regions: necrosis below the first, enhancing rim below the second.
_CORE_RHO = (0.45, 0.70)


def brain_tumour_case(seed: int, shape: Sequence[int] = BRATS_SHAPE, tumour_cm3: tuple[float, float] = (50.0, 150.0),
                      blob_count: tuple[int, int] = (2, 4), noise: float = 0.03) -> BrainCase:
    """A brain-like 4-channel volume with a whole tumour of ``tumour_cm3`` in 2-4 separate blobs.

    At ``BRATS_SHAPE`` the tumour volume is drawn uniformly from ``tumour_cm3`` (cm^3 = 1000
    voxels); for other shapes the range is scaled by the voxel count (tests use tiny shapes).
    The brain is a deformed ellipsoid with a grey/white pattern, two ventricles, a bias field and
    Gaussian noise (``noise`` x the white-matter T1 intensity); the tumour blobs are
    :class:`StarBlob` s, each with oedema, an enhancing rim and a necrotic core, blended over about
    2 voxels at their edges (the label is the hard region).
    """
    rng = np.random.default_rng(seed)
    shape3 = tuple(int(s) for s in shape)
    scale = math.prod(shape3) / math.prod(BRATS_SHAPE)
    target = rng.uniform(*tumour_cm3) * 1000.0 * scale
    n_blobs = int(rng.integers(blob_count[0], blob_count[1] + 1))
    centre = np.array(shape3, dtype=np.float64) / 2.0
    semi = np.array(shape3, dtype=np.float64) * np.array([0.29, 0.354, 0.40])
    brain = StarBlob.random(rng, centre, 1.0, axes=semi, waves=5, amplitude=0.06)
    gyri = wave_field(rng, 14, 0.10 * min(shape3) + 2.0)
    bias = wave_field(rng, 3, 1.5 * max(shape3))
    ventricles = [StarBlob.random(rng, centre + np.array([s * 0.06 * shape3[0], 0.02 * shape3[1], 0.04 * shape3[2]]),
                                  1.0, axes=np.array([0.025, 0.09, 0.05]) * np.array(shape3), amplitude=0.15)
                  for s in (-1.0, 1.0)]
    blobs = _place_tumour(rng, brain, n_blobs, target, shape3)

    i, j, k = _grid((slice(0, shape3[0]), slice(0, shape3[1]), slice(0, shape3[2])))
    inside = brain.rho(i, j, k) <= 1.0
    white = gyri(i, j, k)
    # Soft tissue classes: white-matter weight from the texture, plus CSF in the ventricles.
    w_white = np.clip(0.5 + 2.0 * white, 0.0, 1.0)
    w_csf = np.zeros(shape3, dtype=np.float32)
    for v in ventricles:
        w_csf = np.maximum(w_csf, np.clip((1.0 - v.rho(i, j, k)) * 4.0, 0.0, 1.0))
    tissue = [((1 - w_csf) * (w_white * wm + (1 - w_white) * gm) + w_csf * csf)
              for wm, gm, csf in zip(_WM, _GM, _CSF, strict=True)]

    label = np.zeros(shape3, dtype=np.uint8)
    for blob in blobs:
        box = blob.box(shape3)
        rho = blob.rho(*_grid(box))
        sub = label[box]
        sub[rho <= 1.0] = 2
        sub[rho <= _CORE_RHO[1]] = 4
        sub[rho <= _CORE_RHO[0]] = 1
        # Edge blending over ~2 voxels: weight of the tumour tissue against the brain's.
        edge = np.clip((1.0 - rho) * blob.radius / 2.0 + 0.5, 0.0, 1.0)
        rim = np.clip((_CORE_RHO[1] - rho) * blob.radius / 2.0 + 0.5, 0.0, 1.0)
        core = np.clip((_CORE_RHO[0] - rho) * blob.radius / 2.0 + 0.5, 0.0, 1.0)
        for c in range(4):
            lesion = (1 - rim) * _OEDEMA[c] + rim * ((1 - core) * _ENHANCING[c] + core * _NECROSIS[c])
            tissue[c][box] = (1 - edge) * tissue[c][box] + edge * lesion
    label[~inside] = 0

    gain = 1.0 + 0.1 * bias(i, j, k)
    channels = np.zeros((4, *shape3), dtype=np.int16)
    for c in range(4):
        values = tissue[c] * gain + rng.standard_normal(shape3, dtype=np.float32) * np.float32(noise)
        values = np.clip(values * 1000.0, 1.0, 32000.0)
        channels[c] = np.where(inside, values, 0.0).astype(np.int16)
    affine = np.eye(4)
    return BrainCase(channels, label, affine, int(np.count_nonzero(label)), len(blobs))


def _place_tumour(rng: np.random.Generator, brain: StarBlob, n_blobs: int, target: float,
                  shape: tuple[int, int, int]) -> list[StarBlob]:
    """``n_blobs`` blobs inside the brain, at least 2 voxels apart, with ``target`` voxels in total.

    Blobs are placed one after the other (largest first) at random centres inside the brain's
    ellipsoid shrunk by the blob's reach and by the brain outline's modulation; a blob that finds
    no free place restarts the whole placement.
    """
    shares = np.sort(rng.dirichlet(np.full(n_blobs, 3.0)))[::-1]
    # Nominal radii; the fit below rescales them by a few per cent at most.
    radii = [(3.0 * target * s / (4.0 * math.pi)) ** (1.0 / 3.0) for s in shares]
    shrink = 1.0 - float(np.abs(brain.amplitudes).sum()) - 0.02
    for _ in range(200):
        blobs: list[StarBlob] = []
        for r in radii:
            blob = None
            for _ in range(500):
                candidate = StarBlob.random(rng, brain.centre, r, amplitude=_TUMOUR_AMPLITUDE)
                room = brain.axes * shrink - (1.05 * candidate.extent + 2.0)
                if room.min() <= 0:
                    raise ValueError(f"a tumour blob of radius {r:.1f} does not fit a brain of shape {shape}")
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                centre = brain.centre + direction * room * rng.uniform(0.0, 1.0) ** (1.0 / 3.0)
                candidate = StarBlob(centre, r, candidate.axes, candidate.directions, candidate.frequencies,
                                     candidate.phases, candidate.amplitudes)
                if all(np.linalg.norm(centre - b.centre) > 1.05 * (candidate.extent + b.extent) + 2.0
                       for b in blobs):
                    blob = candidate
                    break
            if blob is None:
                break
            blobs.append(blob)
        if len(blobs) == n_blobs:
            return _fit_volume(blobs, shape, target)
    raise ValueError(f"could not place {n_blobs} separate tumour blobs in a brain of shape {shape}")


# ------------------------------------------------------------------------------------ CT


@dataclass(frozen=True, eq=False)
class CtCase:
    """One CT-like abdomen.

    hu: ``(X, Y, Z)`` int16 Hounsfield units (air -1000).
    label: ``(X, Y, Z)`` uint8 LiTS values: 1 liver, 2 lesion, 0 elsewhere.
    affine: ``(4, 4)`` diagonal with the spacing (mm).
    liver_fraction: (liver + lesion) voxels / all voxels.
    """

    hu: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    liver_fraction: float


def _clip_k(box: tuple[slice, slice, slice], k_range: tuple[int, int]) -> tuple[slice, slice, slice] | None:
    """``box`` with its k slice clipped to ``[k_range)``; None when they do not overlap."""
    start, stop = max(box[2].start, k_range[0]), min(box[2].stop, k_range[1])
    return (box[0], box[1], slice(start, stop)) if start < stop else None


#: relative body radius inside which soft tissue (not the fat rim) lies.
_SOFT_RHO = 0.92


@dataclass(frozen=True)
class _Body:
    """An elliptic cylinder along k whose outline wobbles with the angle and along k (voxels)."""

    centre: tuple[float, float]
    axes: tuple[float, float]
    length: float
    phases: np.ndarray

    def rho(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Relative radius (float32, broadcast shape); inside the body is ``<= 1``."""
        u = (i - np.float32(self.centre[0])) / np.float32(self.axes[0])
        v = (j - np.float32(self.centre[1])) / np.float32(self.axes[1])
        theta = np.arctan2(v, u)
        wobble = ((1.0 + 0.04 * np.cos(2 * theta + self.phases[0]) + 0.03 * np.cos(3 * theta + self.phases[1]))
                  * (1.0 + 0.04 * np.sin(np.float32(2 * math.pi / self.length) * k + self.phases[2])))
        return (np.sqrt(u * u + v * v) / wobble).astype(np.float32)


def ct_liver_case(seed: int, shape: Sequence[int] = LITS_SHAPE, liver_fraction: tuple[float, float] = (0.04, 0.05),
                  spacing: Sequence[float] = (0.8, 0.8, 1.0), noise_hu: float = 12.0) -> CtCase:
    """A CT-like volume: body (fat rim, soft tissue, spine), a liver of ``liver_fraction`` of the grid.

    The liver is a :class:`StarBlob` on the subject's right (``+i``), upper abdomen, 100 HU (portal-venous phase); one to
    three small hypodense lesions (50 HU, label 2) inside it; Gaussian noise of ``noise_hu``. Filled in
    slabs along ``k``, so a 512^3 case needs about the output arrays plus ~0.5 GiB.
    """
    rng = np.random.default_rng(seed)
    shape3 = tuple(int(s) for s in shape)
    x, y, z = (float(s) for s in shape3)
    body = _Body((0.5 * x, 0.5 * y), (0.42 * x, 0.31 * y), z, rng.uniform(0, 2 * math.pi, size=3))
    texture = wave_field(rng, 8, 0.06 * min(shape3) + 2.0)
    target = rng.uniform(*liver_fraction) * math.prod(shape3)
    axes = (1.0, 0.85, 0.8)
    radius = (3.0 * target / (4.0 * math.pi * math.prod(axes))) ** (1.0 / 3.0)
    liver = StarBlob.random(rng, (0.58 * x, 0.52 * y, 0.6 * z), radius, axes=axes, waves=5, amplitude=0.15)
    # The liver is cut by the abdominal wall, so its volume is fitted inside the soft tissue.
    liver = _fit_volume([liver], shape3, target, clip=lambda i, j, k: body.rho(i, j, k) <= _SOFT_RHO)[0]
    lesions = []
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.normal(size=3)
        offset *= 0.4 * liver.radius * liver.axes / np.linalg.norm(offset)
        lesions.append(StarBlob.random(rng, liver.centre + offset, 0.12 * liver.radius, amplitude=0.2))

    hu = np.empty(shape3, dtype=np.int16)
    label = np.zeros(shape3, dtype=np.uint8)
    i = np.arange(shape3[0], dtype=np.float32)[:, None, None]
    j = np.arange(shape3[1], dtype=np.float32)[None, :, None]
    step = max(1, _SLAB_VOXELS // (shape3[0] * shape3[1]))
    for k0 in range(0, shape3[2], step):
        k = np.arange(k0, min(k0 + step, shape3[2]), dtype=np.float32)[None, None, :]
        r_body = body.rho(i, j, k)
        slab = np.full(r_body.shape, -1000.0, dtype=np.float32)
        slab[r_body <= 1.0] = -100.0  # subcutaneous fat
        soft = r_body <= _SOFT_RHO
        del r_body
        tex = texture(i, j, k)
        slab[soft] = 40.0 + 15.0 * tex[soft]
        spine = ((i - np.float32(0.5 * x)) ** 2 + (j - np.float32(0.5 * y - 0.6 * body.axes[1])) ** 2
                 <= np.float32((0.045 * x) ** 2))
        slab[np.broadcast_to(spine, slab.shape)] = 700.0
        # Liver and lesions only inside their boxes (clipped to this slab), in slab coordinates.
        slab_range = (k0, k0 + slab.shape[2])
        box = _clip_k(liver.box(shape3), slab_range)
        if box is not None:
            local = (box[0], box[1], slice(box[2].start - k0, box[2].stop - k0))
            in_liver = (liver.rho(*_grid(box)) <= 1.0) & soft[local]
            lab = label[:, :, k0:k0 + slab.shape[2]][local]
            lab[in_liver] = 1
            part = slab[local]
            part[in_liver] = 100.0 + 8.0 * tex[local][in_liver]
            for lesion in lesions:
                hit = (lesion.rho(*_grid(box)) <= 1.0) & in_liver
                lab[hit] = 2
                part[hit] = 50.0
        del tex, soft
        slab += rng.standard_normal(slab.shape, dtype=np.float32) * np.float32(noise_hu)
        hu[:, :, k0:k0 + slab.shape[2]] = np.clip(np.rint(slab), -1024, 3071).astype(np.int16)
    affine = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    return CtCase(hu, label, affine, float(np.count_nonzero(label)) / math.prod(shape3))
