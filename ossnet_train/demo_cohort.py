"""The demo cohort: random warps of the MNI ICBM152 2009a template, labelled with white matter.

Every subject is the *same* average brain (nilearn's copy of the ICBM152 2009a nonlinear
symmetric T1 template and its white-matter probability map) moved and deformed by a seeded
random transform, with MRI-like intensity changes. It gives a real-anatomy segmentation task
that anyone can regenerate without downloading patient data; it is not a substitute for real
subjects and not for clinical use (docs/data.md).

Generative model for the subject with seed ``s`` (parameters in :class:`DemoParams`; all
randomness from ``numpy.random.SeedSequence(s)``):

1. Geometry (one backward sampling map, output voxel -> template voxel):
   ``q = S^-1 R^T (p - c - t) + c + d(p)`` in mm, where ``p`` is the output voxel's world
   position, ``c`` the grid centre, ``R`` a rotation (up to +-8 degrees about each axis),
   ``S`` an anisotropic scaling (up to +-8 % per axis), ``t`` a shift (up to +-4 mm per axis)
   and ``d`` a smooth free-form displacement (cubic B-spline, 24 mm control spacing, rms
   2 mm per axis). The subject's anatomy is therefore the template rotated, scaled and shifted
   by (R, S, t), then gently deformed.
2. The T1 and the white-matter probability are sampled through that map with trilinear
   interpolation (outside the template: 0); label = warped probability > 0.5.
3. Intensity: ``x = (T1 / 255) ** gamma * bias * gain``, with gamma log-uniform in
   [0.8, 1.25], gain uniform in [0.8, 1.2] and ``bias = exp(b)``, ``b`` a cubic B-spline
   field with 60 mm control spacing and rms 0.15.
4. Gaussian blur with sigma uniform in [0, 0.7] voxel; Rician noise
   ``sqrt((x + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma_n^2)``, ``sigma_n`` uniform in
   [0.01, 0.05] times the nominal full scale (``gain``).

Image and label share the template's grid (197 x 233 x 189, 1 mm) and affine; the anatomy
moves inside it (without an acquisition; with one, see below). The image is stored as int16 with a header slope (``max / 4095``: 12-bit
like scanner data; the quantisation step is at most 1/40 of the smallest noise sigma, so it
adds under 0.01 % to the noise variance, and the files are about half the size of float32).

The warps are numpy only: the affine part and the B-spline displacement are composed into
one sampling map, evaluated slab by slab (``chunk_slices`` slices along the first axis) so
memory stays near the size of the output, and the B-spline is upsampled separably with its
four nonzero taps per axis.

With an :class:`ossnet_train.acquisition.Acquisition` (``make-demo-data --variety acquisition``,
drawn per seed by :func:`ossnet_train.acquisition.draw_acquisition`), the same anatomy is
"acquired" differently: its gamma, a monotone contrast curve, the bias-field strength and the
noise level replace the draws above, and after the blur (widened by the slice profile of a coarse
axis) the image, label and brain mask (warped template T1 > 0, optionally dilated) are cut to a
field of view, resampled to the subject's voxel spacing, given Rician noise, zeroed outside the
mask (zero background), zero-padded and stored as uint8, int16 (with or without a slope) or
float32 (docs/data.md#acquisition-variety).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.errors import DependencyError, InputError, OutputExistsError, describe
from ossnet_deploy.morphology import max_filter
from ossnet_train import acquisition as acq_mod
from ossnet_train.acquisition import ACQUISITION_VERSION, VARIETIES, Acquisition, AcquisitionRanges

__all__ = [
    "GENERATOR_VERSION",
    "MNI_NOTICE",
    "TEMPLATE_FILES",
    "DemoParams",
    "DemoSubject",
    "MniTemplate",
    "case_id",
    "load_template",
    "make_demo_cohort",
    "make_demo_subject",
    "template_dir",
    "write_subject",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the same seed would give different voxels.
GENERATOR_VERSION = 1

#: The MNI copyright and permission notice for the ICBM152 2009 templates.
MNI_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and "
    "its documentation for any purpose and without fee is hereby granted, provided that the above "
    "copyright notice appear in all copies. The authors and McGill University make no representations "
    "about the suitability of this software for any purpose. It is provided \"as is\" without express "
    "or implied warranty. The authors are not responsible for any data loss, equipment damage, property "
    "loss, or injury to subjects or patients resulting from the use or misuse of this software package."
)

_NOTICE_FILE_TEXT = (
    "The images in this folder are derived from the MNI ICBM152 2009a nonlinear symmetric template\n"
    "(T1 and white-matter probability map, the copies shipped with nilearn), randomly warped by\n"
    "ossnet_train.demo_cohort. All subjects are deformations of one average brain. Not for clinical use.\n\n"
    "Original notice of the template:\n\n" + MNI_NOTICE + "\n"
)

#: Template file names inside ``<nilearn>/datasets/data``.
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

_INSTALL = "pip install --no-deps nilearn (ossnet only reads its bundled template files)"
# Mean over a unit interval of the sum of squared cubic B-spline weights (= integral of B3^2).
_BSPLINE_SQ_MEAN = 151.0 / 315.0


@dataclass(frozen=True)
class DemoParams:
    """Ranges of the random subject model (see the module docstring). Units: mm, voxels, fractions."""

    max_rotation_deg: float = 8.0
    max_scale: float = 0.08
    max_shift_mm: float = 4.0
    ffd_spacing_mm: float = 24.0
    ffd_rms_mm: float = 2.0
    bias_spacing_mm: float = 60.0
    bias_log_rms: float = 0.15
    gamma_range: tuple[float, float] = (0.8, 1.25)
    gain_range: tuple[float, float] = (0.8, 1.2)
    max_blur_sigma_vox: float = 0.7
    noise_range: tuple[float, float] = (0.01, 0.05)
    wm_threshold: float = 0.5
    quantisation_levels: int = 4095
    chunk_slices: int = 16


@dataclass(frozen=True, eq=False)
class MniTemplate:
    """The template on its own grid.

    Attributes:
        t1: ``(197, 233, 189)`` uint8 T1 intensities (0..255).
        gm: same shape, uint8 grey-matter probability x 255.
        wm: same shape, uint8 white-matter probability x 255.
        affine: ``(4, 4)`` float64 voxel-to-world (mm), RAS, 1 mm.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True, eq=False)
class DemoSubject:
    """One generated subject, exactly as written to disk.

    Attributes:
        case_id: ``demo_SSSS`` (SSSS = the seed, zero-padded to 4 digits).
        seed: the seed.
        image: float32 T1-like intensities (the stored values times the slope); ``(197, 233, 189)``
            without an acquisition, the acquired field of view at its spacing with one.
        label: same shape, uint8 white matter in {0, 1}.
        affine: ``(4, 4)`` float64, the template's (with an acquisition: of the acquired grid).
        slope: the storage slope (image = stored * slope).
        drawn: the random values drawn for this subject (JSON-ready; ``acquisition`` with one).
        dtype: the stored data type: ``int16`` (default), ``uint8`` or ``float32``.
    """

    case_id: str
    seed: int
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    slope: float
    drawn: dict[str, Any]
    dtype: str = "int16"


def case_id(seed: int) -> str:
    """The case id of the subject with ``seed``: ``demo_0007``."""
    return f"demo_{seed:04d}"


def template_dir() -> Path:
    """The folder of nilearn's bundled template files (nilearn is located, never imported).

    Raises:
        DependencyError: nilearn is not installed or its template files are missing.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            describe(None, "the demo cohort needs nilearn's MNI template files", expected="the nilearn package",
                     found="not installed", fix=_INSTALL)
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DependencyError(
            describe(folder, "nilearn's MNI template files are missing", expected=", ".join(TEMPLATE_FILES.values()),
                     found=f"missing {', '.join(missing)}", fix=f"reinstall nilearn: {_INSTALL}")
        )
    return folder


@functools.lru_cache(maxsize=1)
def load_template() -> MniTemplate:
    """Load the three template volumes (cached; about 25 MB).

    Raises:
        DependencyError: nilearn or its files are missing.
        InputError: the files do not hold the expected grid.
    """
    folder = template_dir()
    images = {key: nib.load(folder / name) for key, name in TEMPLATE_FILES.items()}
    arrays: dict[str, np.ndarray] = {}
    for key, img in images.items():
        data = np.asanyarray(img.dataobj)
        if data.ndim != 3 or data.dtype != np.uint8 or (arrays and data.shape != arrays["t1"].shape):
            raise InputError(
                describe(folder / TEMPLATE_FILES[key], "unexpected template file",
                         expected="a 3D uint8 volume on the T1's grid", found=f"{data.dtype} {data.shape}",
                         fix=f"reinstall nilearn: {_INSTALL}")
            )
        arrays[key] = np.ascontiguousarray(data)
    affine = np.asarray(images["t1"].affine, dtype=np.float64)
    return MniTemplate(arrays["t1"], arrays["gm"], arrays["wm"], affine)


# --------------------------------------------------------------------------- B-splines


def _bspline_taps(n_out: int, spacing_vox: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Cubic B-spline upsampling taps for one axis.

    Control point ``m`` sits at voxel ``(m - 1) * spacing_vox``, so ``n_ctrl = floor((n_out - 1)
    / spacing_vox) + 4`` points cover the axis with the full 4-tap support everywhere.

    Returns:
        ``first`` ``(n_out,)`` int64 index of the first of the four taps, ``weights``
        ``(4, n_out)`` float64 (each column sums to 1), and ``n_ctrl``.
    """
    t = np.arange(n_out, dtype=np.float64) / spacing_vox + 1.0
    cell = np.floor(t)
    f = t - cell
    weights = np.stack([
        (1.0 - f) ** 3 / 6.0,
        (3.0 * f**3 - 6.0 * f**2 + 4.0) / 6.0,
        (-3.0 * f**3 + 3.0 * f**2 + 3.0 * f + 1.0) / 6.0,
        f**3 / 6.0,
    ])
    n_ctrl = math.floor((n_out - 1) / spacing_vox) + 4
    return cell.astype(np.int64) - 1, weights, n_ctrl


def _upsample_axis(coef: np.ndarray, axis: int, taps: tuple[np.ndarray, np.ndarray, int],
                   rows: slice = slice(None)) -> np.ndarray:
    """Evaluate the B-spline along ``axis`` (4 taps each; elementwise ops only, so deterministic)."""
    first, weights, _ = taps
    first, weights = first[rows], weights[:, rows]
    shape = [1] * coef.ndim
    shape[axis] = first.size
    out = np.zeros((*coef.shape[:axis], first.size, *coef.shape[axis + 1:]), dtype=np.float64)
    for m in range(4):
        out += np.take(coef, first + m, axis=axis) * weights[m].reshape(shape)
    return out


@dataclass(frozen=True, eq=False)
class _Spline:
    """A 3D cubic B-spline field, partly evaluated: the last two axes are already upsampled."""

    partial: np.ndarray  # (..., n_ctrl_i, J, K)
    taps_i: tuple[np.ndarray, np.ndarray, int]

    @classmethod
    def random(cls, rng: np.random.Generator, shape: tuple[int, int, int], spacing_vox: tuple[float, float, float],
               rms: float, components: int) -> _Spline:
        taps = [_bspline_taps(n, s) for n, s in zip(shape, spacing_vox, strict=True)]
        # Coefficient sigma chosen so the field's rms over the grid is ``rms`` per component.
        sigma = rms / _BSPLINE_SQ_MEAN**1.5
        coef = rng.standard_normal((components, *(t[2] for t in taps))) * sigma
        partial = _upsample_axis(_upsample_axis(coef, 3, taps[2]), 2, taps[1])
        return cls(partial, taps[0])

    def slab(self, rows: slice) -> np.ndarray:
        """The field on slices ``rows`` of the first axis: ``(components, len(rows), J, K)`` float64."""
        return _upsample_axis(self.partial, 1, self.taps_i, rows)


# --------------------------------------------------------------------------- the subject


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _trilinear(stack: np.ndarray, dims: tuple[int, int, int], u: np.ndarray) -> np.ndarray:
    """Sample a zero-padded multi-channel volume at voxel positions.

    Args:
        stack: ``((X + 4) * (Y + 4) * (Z + 4), 2)`` uint8 C-contiguous, the template's two
            channels padded by 2 zero voxels per side, flattened in C order.
        dims: ``(X, Y, Z)``, the unpadded sizes.
        u: ``(3, N)`` float64 positions in unpadded voxel units.

    Returns:
        ``(N, 2)`` float32; positions outside the template read 0 (linear falloff over the
        outermost voxel).
    """
    padded = [d + 4 for d in dims]
    base = np.zeros(u.shape[1], dtype=np.int64)
    fracs = []
    for axis in range(3):
        # Clipping into the 2-voxel zero margin makes every outside position read exact zeros.
        p = np.clip(u[axis] + 2.0, 0.0, dims[axis] + 2.0)
        i0 = np.floor(p)
        fracs.append((p - i0).astype(np.float32)[:, None])
        base = base * padded[axis] + i0.astype(np.int64)
    si, sj = padded[1] * padded[2], padded[2]
    fi, fj, fk = fracs

    # One 1D gather of uint16 fetches both uint8 channels of a voxel (2D row gathers are slower).
    packed = stack.view(np.uint16).ravel()

    def lerp_k(offset: int) -> np.ndarray:
        a = packed[base + offset].view(np.uint8).reshape(-1, 2).astype(np.float32)
        b = packed[base + offset + 1].view(np.uint8).reshape(-1, 2).astype(np.float32)
        return a + (b - a) * fk

    c00, c01, c10, c11 = lerp_k(0), lerp_k(sj), lerp_k(si), lerp_k(si + sj)
    c0 = c00 + (c01 - c00) * fj
    c1 = c10 + (c11 - c10) * fj
    return c0 + (c1 - c0) * fi


def _gaussian_blur(volume: np.ndarray, sigma: float | tuple[float, float, float]) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels, one or one per axis; zero outside the grid), float32."""
    sigmas = (sigma,) * 3 if isinstance(sigma, (int, float)) else tuple(sigma)
    out = volume
    for axis in range(3):
        if sigmas[axis] < 0.05:  # the kernel is a delta to float32 precision
            continue
        radius = max(1, math.ceil(3.0 * sigmas[axis]))
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (offsets / sigmas[axis]) ** 2)
        kernel = (kernel / kernel.sum()).astype(np.float32)
        src = out
        out = src * kernel[radius]
        n = src.shape[axis]
        for o in range(1, radius + 1):
            if o >= n:
                break
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - o), slice(o, n)
            out[tuple(hi)] += kernel[radius - o] * src[tuple(lo)]
            out[tuple(lo)] += kernel[radius + o] * src[tuple(hi)]
    return out


def make_demo_subject(seed: int, params: DemoParams | None = None, *,
                      acquisition: Acquisition | None = None) -> DemoSubject:
    """Generate one subject (deterministic in ``seed``; a few seconds on one core).

    Args:
        seed: a non-negative integer; the case id is :func:`case_id` of it.
        params: the model's ranges (default :class:`DemoParams`).
        acquisition: how the subject is acquired (``draw_acquisition(seed)`` for the cohort's
            ``acquisition`` variety); None: the version-1 subject on the template's grid. The
            anatomy (warp and label) does not depend on it.

    Returns:
        The :class:`DemoSubject` (image exactly as stored).

    Raises:
        DependencyError: nilearn's template files are missing.
    """
    if int(seed) != seed or seed < 0:
        raise InputError(describe(None, "invalid demo seed", expected="an integer >= 0", found=repr(seed)))
    p = params or DemoParams()
    tpl = load_template()
    dims: tuple[int, int, int] = tpl.t1.shape  # type: ignore[assignment]
    rng_geo, rng_ffd, rng_bias, rng_int, rng_n1, rng_n2 = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(6)
    )

    angles = rng_geo.uniform(-p.max_rotation_deg, p.max_rotation_deg, 3)
    scales = 1.0 + rng_geo.uniform(-p.max_scale, p.max_scale, 3)
    shift = rng_geo.uniform(-p.max_shift_mm, p.max_shift_mm, 3)
    gamma = float(np.exp(rng_int.uniform(np.log(p.gamma_range[0]), np.log(p.gamma_range[1]))))
    gain = float(rng_int.uniform(*p.gain_range))
    blur = float(rng_int.uniform(0.0, p.max_blur_sigma_vox))
    noise_frac = float(rng_int.uniform(*p.noise_range))
    bias_rms = p.bias_log_rms
    if acquisition is not None:  # the acquisition's values replace these draws (the streams stay aligned)
        gamma, noise_frac, bias_rms = acquisition.gamma, acquisition.noise_fraction, acquisition.bias_log_rms

    a3, a0 = tpl.affine[:3, :3], tpl.affine[:3, 3]
    a3_inv = np.linalg.inv(a3)
    voxel_mm = np.sqrt((a3**2).sum(axis=0))
    centre = a3 @ ((np.asarray(dims) - 1) / 2.0) + a0
    linear = np.diag(1.0 / scales) @ _rotation(angles).T
    # Template voxel u = a3^-1 (linear (a3 x + a0 - centre - shift) + centre + d - a0), split into
    # u = mat x + vec + a3^-1 d.
    mat = a3_inv @ linear @ a3
    vec = a3_inv @ (linear @ (a0 - centre - shift) + centre - a0)
    ffd = _Spline.random(rng_ffd, dims, tuple(p.ffd_spacing_mm / voxel_mm), p.ffd_rms_mm, 3)
    bias = _Spline.random(rng_bias, dims, tuple(p.bias_spacing_mm / voxel_mm), bias_rms, 1)

    stack = np.zeros([d + 4 for d in dims] + [2], dtype=np.uint8)
    stack[2:-2, 2:-2, 2:-2, 0] = tpl.t1
    stack[2:-2, 2:-2, 2:-2, 1] = tpl.wm
    stack = stack.reshape(-1, 2)

    image = np.empty(dims, dtype=np.float32)
    label = np.empty(dims, dtype=np.uint8)
    brain = np.empty(dims, dtype=bool) if acquisition is not None else None
    jj, kk = np.meshgrid(np.arange(dims[1]), np.arange(dims[2]), indexing="ij")
    threshold = p.wm_threshold * 255.0
    for start in range(0, dims[0], p.chunk_slices):
        rows = slice(start, min(start + p.chunk_slices, dims[0]))
        ii = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None, None]
        disp = np.einsum("ab,b...->a...", a3_inv, ffd.slab(rows))
        u = np.stack([mat[c, 0] * ii + mat[c, 1] * jj + mat[c, 2] * kk + vec[c] + disp[c] for c in range(3)])
        sampled = _trilinear(stack, dims, u.reshape(3, -1)).reshape(*u.shape[1:], 2)
        label[rows] = sampled[..., 1] > threshold
        field = np.exp(bias.slab(rows)[0]).astype(np.float32)
        t1 = sampled[..., 0] / np.float32(255.0)
        if acquisition is not None:
            brain[rows] = sampled[..., 0] > 0  # type: ignore[index]
            t1 = acq_mod.contrast_curve(t1, acquisition.contrast_knots)
        image[rows] = t1 ** np.float32(gamma) * field * np.float32(gain)
    if acquisition is not None:
        assert brain is not None
        return _acquire(seed, image, label, brain, tpl.affine, acquisition, blur, float(np.float32(noise_frac * gain)),
                        rng_n1, rng_n2, p, {"rotation_deg": angles.tolist(), "scale": scales.tolist(),
                                            "shift_mm": shift.tolist(), "gamma": gamma, "gain": gain,
                                            "blur_sigma_vox": blur, "bias_log_rms": bias_rms})
    image = _gaussian_blur(image, blur)

    sigma_n = np.float32(noise_frac * gain)
    for start in range(0, dims[0], p.chunk_slices):
        rows = slice(start, min(start + p.chunk_slices, dims[0]))
        n1 = rng_n1.standard_normal(image[rows].shape, dtype=np.float32)
        n2 = rng_n2.standard_normal(image[rows].shape, dtype=np.float32)
        image[rows] = np.sqrt((image[rows] + sigma_n * n1) ** 2 + (sigma_n * n2) ** 2)

    slope = float(np.float32(float(image.max()) / p.quantisation_levels))
    stored = np.rint(image / np.float32(slope)).astype(np.int16)
    drawn = {
        "rotation_deg": angles.tolist(),
        "scale": scales.tolist(),
        "shift_mm": shift.tolist(),
        "gamma": gamma,
        "gain": gain,
        "blur_sigma_vox": blur,
        "noise_sigma": float(sigma_n),
    }
    return DemoSubject(case_id(int(seed)), int(seed), stored.astype(np.float32) * np.float32(slope), label,
                       tpl.affine.copy(), slope, drawn)


def _acquire(seed: int, image: np.ndarray, label: np.ndarray, brain: np.ndarray, affine: np.ndarray,
             acq: Acquisition, blur: float, sigma_n: float, rng_n1: np.random.Generator,
             rng_n2: np.random.Generator, p: DemoParams, drawn: dict[str, Any]) -> DemoSubject:
    """The acquisition steps after the warp (module docstring; ossnet_train.acquisition)."""
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = np.asarray(acq.spacing_mm) / voxel_mm
    # The slice profile of a coarse axis adds to the blur (variances add); a 1 mm axis keeps it.
    sigmas = tuple(math.sqrt(blur**2 + acq_mod.slice_profile_sigma(float(f)) ** 2) for f in factors)
    image = _gaussian_blur(image, sigmas)  # type: ignore[arg-type]
    if acq.mask_dilation_vox > 0:
        brain = max_filter(brain, 2 * acq.mask_dilation_vox + 1)
    lo, hi = acq_mod.fov_window(brain, acq)
    image, label, brain = (acq_mod.take_window(v, lo, hi) for v in (image, label, brain))
    out_affine = acq_mod.shift_affine(affine, lo)
    image, (label, brain), out_affine = acq_mod.resample_spacing(image, [label, brain], out_affine, acq.spacing_mm)
    sigma = np.float32(sigma_n)
    for start in range(0, image.shape[0], p.chunk_slices):
        rows = slice(start, min(start + p.chunk_slices, image.shape[0]))
        n1 = rng_n1.standard_normal(image[rows].shape, dtype=np.float32)
        n2 = rng_n2.standard_normal(image[rows].shape, dtype=np.float32)
        image[rows] = np.sqrt((image[rows] + sigma * n1) ** 2 + (sigma * n2) ** 2)
    if acq.background == "zero":
        acq_mod.zero_background(image, brain)
    if any(acq.zero_pad_mm):
        (image, label), out_affine = acq_mod.zero_pad([image, label], out_affine, acq.zero_pad_mm)
    stored, slope = acq_mod.store(image, acq)
    drawn = {**drawn, "noise_sigma": float(sigma), "acquisition": {
        **acq.to_dict(), "fov_lo_vox": list(lo), "fov_hi_vox": list(hi), "shape": list(stored.shape)}}
    return DemoSubject(case_id(int(seed)), int(seed), stored.astype(np.float32) * np.float32(slope),
                       np.ascontiguousarray(label, dtype=np.uint8), out_affine, slope, drawn, stored.dtype.name)


def write_subject(subject: DemoSubject, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write one subject in the nnU-Net layout (atomically; the same subject gives the same bytes).

    Args:
        subject: from :func:`make_demo_subject`.
        out_dir: the dataset folder; files go to ``imagesTr/<case>_0000.nii.gz`` (the subject's
            ``dtype``: int16 or uint8 with its slope, or float32) and ``labelsTr/<case>.nii.gz`` (uint8).
        overwrite: replace existing files.

    Returns:
        The image and label paths.

    Raises:
        OutputExistsError: a file exists and ``overwrite`` is False.
    """
    root = Path(out_dir)
    if subject.dtype == "float32":
        image = nib.Nifti1Image(np.asarray(subject.image, dtype=np.float32), subject.affine)
    else:
        stored = np.rint(subject.image / np.float32(subject.slope)).astype(subject.dtype)
        image = nib.Nifti1Image(stored, subject.affine)
        image.header.set_slope_inter(subject.slope, 0.0)
    image.header["descrip"] = f"ossnet demo {subject.case_id} v{GENERATOR_VERSION}".encode()
    label = nib.Nifti1Image(subject.label, subject.affine)
    label.header["descrip"] = b"white matter (MNI ICBM152 2009a warp)"
    paths = (root / "imagesTr" / f"{subject.case_id}_0000.nii.gz", root / "labelsTr" / f"{subject.case_id}.nii.gz")
    for img, path in zip((image, label), paths, strict=True):
        img.header.set_xyzt_units("mm")
        img.header.set_qform(subject.affine, code=1)
        img.header.set_sform(subject.affine, code=1)
        with atomic_write(path, overwrite=overwrite) as tmp:
            nib.save(img, tmp)
    return paths


def _make_and_write(seed: int, params: DemoParams, root: Path, overwrite: bool,
                    variety: str = "none") -> dict[str, object]:
    """Generate and write one subject; its ``dataset.json`` record."""
    started = time.perf_counter()
    acquisition = acq_mod.draw_acquisition(seed) if variety == "acquisition" else None
    subject = make_demo_subject(seed, params, acquisition=acquisition)
    write_subject(subject, root, overwrite=overwrite)
    logger.info("demo subject %s written in %.1f s", subject.case_id, time.perf_counter() - started)
    record: dict[str, object] = {"case": subject.case_id, "seed": seed, "image_slope": subject.slope,
                                 "drawn": subject.drawn}
    if acquisition is not None:
        voxel = np.sqrt((subject.affine[:3, :3] ** 2).sum(axis=0))
        record.update({"image_dtype": subject.dtype, "shape": list(subject.image.shape),
                       "spacing_mm": [round(float(v), 6) for v in voxel]})
    return record


def make_demo_cohort(
    out_dir: str | os.PathLike[str],
    n_subjects: int,
    seed_start: int,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    params: DemoParams | None = None,
    jobs: int = 1,
    variety: str = "none",
) -> list[str]:
    """Write a demo cohort in the nnU-Net layout.

    Writes ``imagesTr/demo_SSSS_0000.nii.gz`` (int16 with slope), ``labelsTr/demo_SSSS.nii.gz``
    (uint8) for seeds ``seed_start .. seed_start + n_subjects - 1``, then ``dataset.json``
    (subjects, seeds, drawn values, generator version and parameters) and ``MNI_NOTICE.txt``.
    Every file goes through a temporary name in its folder and is renamed into place.

    Args:
        out_dir: the dataset folder (created if needed).
        n_subjects: how many subjects (>= 1).
        seed_start: the first seed (>= 0).
        overwrite: replace existing files; otherwise any existing output is refused before
            anything is generated.
        progress: called as ``progress(done, total)`` after each subject.
        params: the model's ranges (default :class:`DemoParams`).
        jobs: subjects generated at once, each in its own process (every subject depends only on
            its seed, so the output is the same for any ``jobs``).
        variety: ``"none"`` (the version-1 cohort: template grid, Rician background, int16 with a
            slope; the same files as before the option existed) or ``"acquisition"`` (every
            subject its own background, field of view, spacing, storage, contrast, bias and noise,
            drawn from its seed: :func:`ossnet_train.acquisition.draw_acquisition`).

    Returns:
        The case ids written, in seed order.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is False.
        DependencyError: nilearn's template files are missing.
    """
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise InputError(describe(None, "invalid number of demo subjects", expected="an integer >= 1",
                                  found=repr(n_subjects)))
    if int(seed_start) != seed_start or seed_start < 0:
        raise InputError(describe(None, "invalid first seed", expected="an integer >= 0", found=repr(seed_start)))
    if variety not in VARIETIES:
        raise InputError(describe(None, "unknown demo variety", expected=" | ".join(VARIETIES), found=repr(variety)))
    p = params or DemoParams()
    root = Path(out_dir)
    seeds = list(range(int(seed_start), int(seed_start) + int(n_subjects)))
    targets = [root / "dataset.json", root / "MNI_NOTICE.txt"]
    for s in seeds:
        targets += [root / "imagesTr" / f"{case_id(s)}_0000.nii.gz", root / "labelsTr" / f"{case_id(s)}.nii.gz"]
    if not overwrite:
        existing = [t for t in targets if t.exists()]
        if existing:
            raise OutputExistsError(
                describe(existing[0], f"demo output already exists ({len(existing)} of {len(targets)} files)",
                         fix="pass overwrite=True / --overwrite, or choose another folder")
            )
    tpl = load_template()  # fail on a missing nilearn before creating folders
    if int(jobs) != jobs or jobs < 1:
        raise InputError(describe(None, "invalid number of jobs", expected="an integer >= 1", found=repr(jobs)))
    subjects: list[dict[str, object]] = []
    if jobs == 1:
        for done, s in enumerate(seeds, start=1):
            subjects.append(_make_and_write(s, p, root, overwrite, variety))
            if progress is not None:
                progress(done, len(seeds))
    else:
        with ProcessPoolExecutor(max_workers=min(int(jobs), len(seeds))) as pool:
            futures = [pool.submit(_make_and_write, s, p, root, overwrite, variety) for s in seeds]
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()  # re-raise a worker's error here
                if progress is not None:
                    progress(done, len(seeds))
            subjects = [f.result() for f in futures]  # seed order
    meta = {
        "name": "ossnet-mni-wm-demo",
        "description": "Random warps of the MNI ICBM152 2009a template (one average brain); "
                       "label = white matter. Not for clinical use.",
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "white_matter": 1},
        "numTraining": len(seeds),
        "file_ending": ".nii.gz",
        "generator": {
            "module": "ossnet_train.demo_cohort",
            "version": GENERATOR_VERSION,
            "parameters": asdict(p),
            "image_storage": f"int16 with scl_slope = image max / {p.quantisation_levels}",
        },
        "template": {
            "source": "nilearn/datasets/data (MNI ICBM152 2009a nonlinear symmetric, uint8 'converted')",
            "files": [TEMPLATE_FILES["t1"], TEMPLATE_FILES["wm"]],
            "shape": list(tpl.t1.shape),
            "affine": tpl.affine.tolist(),
        },
        "subjects": subjects,
        "notice": "MNI_NOTICE.txt",
    }
    if variety != "none":  # a version-1 cohort's dataset.json stays as it was
        meta["generator"].update({  # type: ignore[attr-defined]
            "variety": variety,
            "acquisition_version": ACQUISITION_VERSION,
            "acquisition_ranges": asdict(AcquisitionRanges()),
            "image_storage": "per subject: subjects[i].image_dtype (uint8, int16 with or without a slope, "
                             "float32) and drawn.acquisition",
        })
    with atomic_write(root / "MNI_NOTICE.txt", overwrite=overwrite) as tmp:
        tmp.write_text(_NOTICE_FILE_TEXT, encoding="utf-8")
    with atomic_write(root / "dataset.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return [case_id(s) for s in seeds]
