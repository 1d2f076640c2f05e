"""Measure what a model's training inputs look like: the :class:`~ossnet_deploy.domain.ModelDomain`
that travels in the checkpoint (``provenance["domain"]``) and the exported encoder's metadata
(``ossnet.domain``), so the runtime can warn about inputs and outputs far outside it
(docs/design.md#input-and-output-checks).

Each case goes through the runtime's own ``prepare_volume`` (no shift, no augmentation): its
:class:`~ossnet_deploy.domain.InputProfile` and its label fraction (labelled grid voxels per
foreground grid voxel) are what the runtime computes for an input and its segmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ossnet_deploy.domain import InputProfile, ModelDomain
from ossnet_deploy.errors import InputError
from ossnet_deploy.geometry import labels_to_grid
from ossnet_deploy.preprocess import PreprocessConfig, prepare_volume
from ossnet_train.datasets import Case

__all__ = ["case_profile", "measure_domain"]


def case_profile(case: Case, preprocess: PreprocessConfig, *, fit: str = "downsample") -> tuple[InputProfile, float]:
    """``(profile, label fraction)`` of one case as the runtime would see it."""
    prepared = prepare_volume(case.data, case.affine, preprocess, fit=fit)
    profile = prepared.profile
    if profile is None:  # prepare_volume always profiles; a guard for the type checker
        raise RuntimeError("prepare_volume returned no profile")
    label = labels_to_grid(case.label, prepared.placement)[prepared.region]
    labelled = int(np.count_nonzero(label))
    return profile, labelled / max(profile.foreground_voxels, 1)


def measure_domain(
    cases: Sequence[Case] | Callable[[int], Case],
    preprocess: PreprocessConfig,
    *,
    count: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ModelDomain:
    """The domain of ``cases`` (a sequence, or ``get(i)`` with ``count``) under ``preprocess``.

    Cases whose data the runtime would refuse (:class:`InputError`) are skipped and logged.

    Raises:
        InputError: no case could be profiled.
    """
    n = len(cases) if count is None and isinstance(cases, Sequence) else int(count or 0)
    get = cases.__getitem__ if isinstance(cases, Sequence) else cases
    profiles: list[InputProfile] = []
    fractions: list[float] = []
    for i in range(n):
        try:
            profile, fraction = case_profile(get(i), preprocess)
        except InputError as exc:
            if log is not None:
                log(f"domain: case {i} skipped: {exc}")
            continue
        profiles.append(profile)
        fractions.append(fraction)
    if not profiles:
        raise InputError("no training case could be profiled for the model's domain")
    return ModelDomain.from_cases(preprocess.channels, profiles, fractions)
