"""What a model's training inputs looked like, and warnings for inputs and outputs far outside it.

A model answers confidently on anything; a T2-weighted image, an inverted contrast, a CT or pure
noise given to a T1 white-matter model still yields labels. So every prepared volume carries an
:class:`InputProfile` (after normalisation, over its foreground: a few intensity quantiles per
channel, and how much of the volume is foreground), training records the range of those
profiles and of the label fraction over its cases as a :class:`ModelDomain` (checkpoint and
ONNX metadata key ``ossnet.domain``, omitted when absent, so older runtimes ignore it), and the
runtime compares (docs/design.md#input-and-output-checks):

* :func:`check_input`: a channel's intensity quantiles or rim contrast outside the training
  range widened by a margin, more negative raw voxels than training had, or far less foreground;
* :func:`check_output`: an empty segmentation (always, with or without a domain), or a label
  fraction of the foreground outside the training range widened by a margin.

Each finding is one sentence with the figures and a hint; ``Segmenter`` emits them as
:class:`DomainWarning` and lists them in its statistics, and ``ossnet-segment
--fail-on-warning`` turns them into failures. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PROFILE_QUANTILES",
    "RIM_VOXELS",
    "DomainWarning",
    "InputProfile",
    "ModelDomain",
    "check_input",
    "check_output",
    "profile_channels",
]

PROFILE_QUANTILES = (5.0, 25.0, 50.0, 75.0, 95.0)
"""Percentiles of the normalised foreground intensities that profile a channel."""

RIM_VOXELS = 2
"""Depth of the foreground rim of :attr:`InputProfile.rim_contrast`, in voxels of the profile's
every-other-voxel grid (4 voxels at the model's spacing)."""

# Margins around the training range, in normalised units (z for z-scores) for intensities: half
# the training spread plus a floor, so that a narrow training range does not flag ordinary
# variation; and a factor for fractions. Measured (benchmarks/probe_domain_checks.py): with the
# domain of six `make-demo-data --variety acquisition` subjects, none of the robustness
# benchmark's 60 held-out inputs (seeds 5000-5005, 10 storage conditions) is flagged, while the
# inverted, T2-like, CT and noise versions of the bundled sample all are; with six plain
# subjects, 3 of the 6 doubled-bias-field inputs are flagged (a bias beyond that training).
_QUANTILE_MARGIN_FLOOR = 0.5
_QUANTILE_MARGIN_SPREAD = 0.5
_FRACTION_FACTOR = 2.0
_PROFILE_SAMPLES = 1 << 20
_RIM_MARGIN_FLOOR = 0.3
_NEGATIVE_MARGIN = 0.01


class DomainWarning(UserWarning):
    """An input or an output lies far outside what the model saw in training."""


@dataclass(frozen=True)
class InputProfile:
    """One prepared input, summarised for the domain checks.

    Attributes:
        quantiles: per channel, the :data:`PROFILE_QUANTILES` of its normalised intensities over
            the foreground (the whole input when the foreground is empty).
        rim_contrast: per channel, the mean normalised intensity of the foreground's outer rim
            (4 voxels deep, :data:`RIM_VOXELS`) minus that of the rest: the sign of a contrast's
            layout, which a histogram alone does not show (T1 brain: a dark rim of grey matter and
            CSF around bright white matter; an inverted or T2-like image: a bright rim).
        negative_fraction: share of the input's voxels whose raw value is below zero (MR magnitude
            images have none; a CT's air is -1000 HU).
        foreground_voxels: foreground voxels of the input that landed in the model grid.
        input_voxels: voxels of the input (at the model's spacing) that landed in the grid.
    """

    quantiles: tuple[tuple[float, ...], ...]
    rim_contrast: tuple[float, ...]
    negative_fraction: float
    foreground_voxels: int
    input_voxels: int

    @property
    def foreground_fraction(self) -> float:
        """Foreground voxels per input voxel in the grid."""
        return self.foreground_voxels / max(self.input_voxels, 1)


def profile_channels(values: Sequence[np.ndarray], offsets: Sequence[float], scales: Sequence[float]) -> tuple[
        tuple[float, ...], ...]:
    """Normalised quantiles per channel from raw foreground values (quantiles are taken raw and
    mapped with the channel's ``(raw - offset) / scale``: the map is monotone, so it commutes)."""
    out = []
    for raw, offset, scale in zip(values, offsets, scales, strict=True):
        if raw.size == 0:
            out.append(tuple(0.0 for _ in PROFILE_QUANTILES))
            continue
        # A regular subsample of at most ~1 M values: the quantiles need not be exact, and a
        # whole field of view of a 1 mm head is 9 M values.
        q = np.percentile(raw[:: max(1, raw.size // _PROFILE_SAMPLES)], PROFILE_QUANTILES)
        out.append(tuple(float((v - offset) / scale) for v in q))
    return tuple(out)


@dataclass(frozen=True)
class ModelDomain:
    """The range of the training inputs' profiles and label fractions.

    Attributes:
        channels: channel names, in model order.
        quantiles_low / quantiles_high: per channel, the smallest / largest value of each
            profile quantile over the training cases.
        rim_low / rim_high: per channel, the smallest / largest rim contrast.
        negative_fraction: the largest share of negative raw voxels.
        foreground_fraction: ``(smallest, largest)`` over the training cases.
        label_fraction: ``(smallest, largest)`` labelled voxels per foreground voxel.
        cases: how many cases the ranges come from.
    """

    channels: tuple[str, ...]
    quantiles_low: tuple[tuple[float, ...], ...]
    quantiles_high: tuple[tuple[float, ...], ...]
    rim_low: tuple[float, ...]
    rim_high: tuple[float, ...]
    negative_fraction: float
    foreground_fraction: tuple[float, float]
    label_fraction: tuple[float, float]
    cases: int

    @classmethod
    def from_cases(cls, channels: Sequence[str], profiles: Sequence[InputProfile],
                   label_fractions: Sequence[float]) -> ModelDomain:
        """The domain of a set of training cases (their profiles and label fractions)."""
        if not profiles or len(profiles) != len(label_fractions):
            raise ValueError(f"need one label fraction per profile, got {len(profiles)} and {len(label_fractions)}")
        q = np.asarray([p.quantiles for p in profiles], dtype=np.float64)  # (cases, C, Q)
        fg = [p.foreground_fraction for p in profiles]
        rim = np.asarray([p.rim_contrast for p in profiles], dtype=np.float64)  # (cases, C)
        return cls(
            channels=tuple(channels),
            quantiles_low=tuple(tuple(float(v) for v in row) for row in q.min(axis=0)),
            quantiles_high=tuple(tuple(float(v) for v in row) for row in q.max(axis=0)),
            rim_low=tuple(float(v) for v in rim.min(axis=0)),
            rim_high=tuple(float(v) for v in rim.max(axis=0)),
            negative_fraction=float(max(p.negative_fraction for p in profiles)),
            foreground_fraction=(float(min(fg)), float(max(fg))),
            label_fraction=(float(min(label_fractions)), float(max(label_fractions))),
            cases=len(profiles),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``ossnet.domain`` metadata value)."""
        return {
            "channels": list(self.channels),
            "quantiles": list(PROFILE_QUANTILES),
            "quantiles_low": [list(r) for r in self.quantiles_low],
            "quantiles_high": [list(r) for r in self.quantiles_high],
            "rim_low": list(self.rim_low),
            "rim_high": list(self.rim_high),
            "negative_fraction": self.negative_fraction,
            "foreground_fraction": list(self.foreground_fraction),
            "label_fraction": list(self.label_fraction),
            "cases": self.cases,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelDomain:
        """Inverse of :meth:`to_dict`; ``ValueError`` for a malformed value."""
        try:
            if tuple(float(v) for v in data["quantiles"]) != PROFILE_QUANTILES:
                raise ValueError(f"quantiles {data['quantiles']} (this ossnet profiles {PROFILE_QUANTILES})")
            channels = tuple(str(c) for c in data["channels"])
            low = tuple(tuple(float(v) for v in r) for r in data["quantiles_low"])
            high = tuple(tuple(float(v) for v in r) for r in data["quantiles_high"])
            rim_low = tuple(float(v) for v in data["rim_low"])
            rim_high = tuple(float(v) for v in data["rim_high"])
            negative = float(data["negative_fraction"])
            fg = tuple(float(v) for v in data["foreground_fraction"])
            lab = tuple(float(v) for v in data["label_fraction"])
            cases = int(data["cases"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed domain: {exc!r}") from None
        shape_ok = len(low) == len(high) == len(rim_low) == len(rim_high) == len(channels) and all(
            len(r) == len(PROFILE_QUANTILES) for r in (*low, *high))
        if not shape_ok or len(fg) != 2 or len(lab) != 2:
            raise ValueError("malformed domain: ranges do not match the channels and quantiles")
        return cls(channels, low, high, rim_low, rim_high, negative, (fg[0], fg[1]), (lab[0], lab[1]), cases)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def check_input(profile: InputProfile, domain: ModelDomain) -> list[str]:
    """Findings (sentences) where ``profile`` lies outside ``domain``; empty when it fits."""
    findings = []
    for c, name in enumerate(domain.channels):
        got = profile.quantiles[c]
        low, high = domain.quantiles_low[c], domain.quantiles_high[c]
        outside = []
        for k, (v, lo, hi) in enumerate(zip(got, low, high, strict=True)):
            margin = _QUANTILE_MARGIN_FLOOR + _QUANTILE_MARGIN_SPREAD * (hi - lo)
            if not lo - margin <= v <= hi + margin:
                outside.append(f"p{PROFILE_QUANTILES[k]:g} {v:.2f} (training {lo:.2f}..{hi:.2f})")
        rim, rim_lo, rim_hi = profile.rim_contrast[c], domain.rim_low[c], domain.rim_high[c]
        rim_margin = _RIM_MARGIN_FLOOR + _QUANTILE_MARGIN_SPREAD * (rim_hi - rim_lo)
        if not rim_lo - rim_margin <= rim <= rim_hi + rim_margin:
            outside.append(f"the foreground's rim is {rim:+.2f} against its inside (training {rim_lo:+.2f}.."
                           f"{rim_hi:+.2f}), as in an inverted or different contrast")
        if outside:
            findings.append(
                f"channel {name!r}: the normalised intensities of the input's foreground lie outside what the "
                f"model was trained on: {'; '.join(outside)}. Check that the image is the modality the model "
                f"expects ({', '.join(domain.channels)}) with the usual contrast (not inverted, not another "
                "sequence or a CT)")
    if profile.negative_fraction > domain.negative_fraction + _NEGATIVE_MARGIN:
        findings.append(
            f"{profile.negative_fraction:.1%} of the input's voxels are negative (training at most "
            f"{domain.negative_fraction:.1%}): a CT (air at -1000 HU) or an image normalised beforehand? Give the "
            "model the raw image of the modality it expects")
    # Only a lower bound: a field of view cropped to the anatomy is mostly foreground, legitimately.
    lo, hi = domain.foreground_fraction
    fraction = profile.foreground_fraction
    if fraction < lo / _FRACTION_FACTOR:
        findings.append(
            f"the foreground is {fraction:.1%} of the input (training {lo:.1%}..{hi:.1%}): the image may hold "
            "little of the expected anatomy")
    return findings


def check_output(label_voxels: int, profile: InputProfile, domain: ModelDomain | None) -> list[str]:
    """Findings on the segmentation: empty (unless the training had empty cases), or a label
    fraction of the foreground outside the domain's range widened by a factor 2 either way."""
    # An empty result is plausible only for a model whose training had empty cases.
    if label_voxels == 0 and (domain is None or domain.label_fraction[0] > 0.0):
        return ["the segmentation is empty: nothing was labelled. If the input should hold the structure, it "
                "is probably unlike the model's training images (modality, contrast, background, field of view)"]
    if domain is None or profile.foreground_voxels == 0 or label_voxels == 0:
        return []
    fraction = label_voxels / profile.foreground_voxels
    lo, hi = domain.label_fraction
    if not lo / _FRACTION_FACTOR <= fraction <= hi * _FRACTION_FACTOR:
        return [f"the segmentation covers {fraction:.1%} of the input's foreground (training {lo:.1%}..{hi:.1%}): "
                "check the input and the result before using it"]
    return []
