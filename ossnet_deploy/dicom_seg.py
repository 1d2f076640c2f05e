"""DICOM SEG out: a segmentation of a DICOM series as a BINARY Segmentation object.

The rules (docs/design.md#dicom):

* BINARY segmentation (what PACS viewers show), one segment per model label, built with
  highdicom from the source series' headers, so it references every source instance, shares
  its Study and Frame of Reference, and each frame is one source slice pixel for pixel (the
  geometry follows the source; nothing is resampled).
* Segment descriptions carry the label name and its coded category and type
  (``ossnet_deploy.label_codes``: the model's ``ossnet.label_codes``, else the known table),
  algorithm type AUTOMATIC and the algorithm identification: name (the model folder), family
  "Artificial Intelligence" (DICOM CID 7162), version (ossnet's) and parameters (the model
  pair id, variant and scheduler mode).
* Research use only: the statement is the Content Description and the Series Description.
* Frames where a segment is empty are omitted.
* Written through ``ossnet_deploy.atomic`` (temporary name, then rename; never overwritten
  without ``overwrite``).

highdicom is imported lazily (the ``dicom`` extra: ``pip install "ossnet[dicom]"``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from ossnet_deploy.atomic import atomic_write
from ossnet_deploy.dicom_series import DICOM_INSTALL, DicomSeriesRef
from ossnet_deploy.errors import DependencyError, InputError, describe
from ossnet_deploy.label_codes import LabelCode

__all__ = ["RESEARCH_USE_ONLY", "SEG_SUFFIX", "SegAlgorithm", "is_seg_name", "write_seg"]

PathLike = str | os.PathLike[str]

SEG_SUFFIX = ".dcm"
RESEARCH_USE_ONLY = "RESEARCH USE ONLY - not for clinical use"
#: SeriesNumber of the SEG series (the source's numbers are the scanner's; this one is ours).
SEG_SERIES_NUMBER = 9901


def is_seg_name(path: PathLike) -> bool:
    """True for an output name ending in ``.dcm`` (case-insensitive)."""
    return Path(path).name.lower().endswith(SEG_SUFFIX)


def _highdicom() -> ModuleType:
    try:
        import highdicom
    except ImportError:
        raise DependencyError(describe(None, "writing DICOM SEG needs highdicom", found="highdicom is not installed",
                                       fix=DICOM_INSTALL)) from None
    return highdicom


@dataclass(frozen=True)
class SegAlgorithm:
    """What made the segmentation, for the SEG's algorithm identification.

    Attributes:
        name: the model's name (its folder, e.g. ``"mni-wm-demo"``).
        version: the ossnet version that ran it.
        parameters: e.g. ``{"pair_id": ..., "variant": ..., "mode": ...}`` (strings).
    """

    name: str
    version: str
    parameters: Mapping[str, str] = field(default_factory=dict)


def _lo(text: str) -> str:
    # LO values hold at most 64 characters and no backslash.
    return text.replace("\\", "/")[:64]


def write_seg(
    labels: np.ndarray,
    series: DicomSeriesRef,
    path: PathLike,
    *,
    label_names: Mapping[str, str],
    label_codes: Mapping[str, LabelCode],
    algorithm: SegAlgorithm,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` of a DICOM series as a BINARY DICOM SEG, atomically.

    Args:
        labels: ``(X, Y, Z)`` uint8 labels on the series' grid, as ``DicomVolume.data`` is laid
            out (X = column, Y = row, Z = slice in ``series.headers`` order).
        series: the source series (``DicomVolume.series``).
        path: the output file, ``*.dcm``.
        label_names: label value (decimal string) -> name, the model's ``labels``.
        label_codes: label value -> coded meaning, for every value in ``label_names``.
        algorithm: the algorithm identification.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        InputError: ``path`` is not named ``.dcm``.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        DependencyError: highdicom is not installed.
        ValueError: ``labels`` does not fit the series, or holds a value the model does not name
            (programming errors, not user input).
    """
    target = Path(path)
    if not is_seg_name(target):
        raise InputError(describe(target, "a DICOM SEG output must be named .dcm", expected="a name ending in .dcm",
                                  found=f"suffix {''.join(target.suffixes) or '(none)'}",
                                  fix="name the output e.g. case_seg.dcm"))
    labels = np.asarray(labels)
    if labels.shape != series.shape:
        raise ValueError(f"labels {labels.shape} do not fit the series grid {series.shape}")
    present = {int(v) for v in np.unique(labels)} - {0}
    unnamed = sorted(present - {int(v) for v in label_names})
    if unnamed:
        raise ValueError(f"label values {unnamed} have no name in the model's labels")
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    values = sorted(label_names, key=int)
    # Frames in the source's order: frame k is slice k, row r, column c = labels[c, r, k].
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))
    stacked = np.zeros((*frames.shape, len(values)), dtype=np.uint8)
    for s, value in enumerate(values):
        stacked[..., s] = frames == int(value)
    family = codes.cid7162.ArtificialIntelligence
    identification = hd.AlgorithmIdentificationSequence(
        name=_lo(algorithm.name), family=family, version=_lo(algorithm.version),
        parameters={key: _lo(str(val)) for key, val in algorithm.parameters.items()} or None)
    descriptions = []
    for number, value in enumerate(values, start=1):
        code = label_codes[value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=_lo(label_names[value]),
            segmented_property_category=hd.sr.CodedConcept(code.category.value, code.category.scheme,
                                                           code.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(code.type.value, code.type.scheme, code.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=identification,
            tracking_uid=hd.UID(), tracking_id=_lo(f"{algorithm.name} label {value}")))
    seg = hd.seg.Segmentation(
        source_images=list(series.headers), pixel_array=stacked, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ossnet",
        manufacturer_model_name=_lo(algorithm.name), software_versions=_lo(algorithm.version),
        device_serial_number="none", content_description=RESEARCH_USE_ONLY, content_label="OSSNET",
        omit_empty_frames=True)
    seg.SeriesDescription = _lo(f"{algorithm.name} SEG - {RESEARCH_USE_ONLY}")
    with atomic_write(target, overwrite=overwrite) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return target
