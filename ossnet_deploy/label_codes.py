"""Coded meanings of a model's labels, for DICOM SEG segment descriptions (docs/design.md#dicom).

A DICOM SEG describes every segment with a coded *category* and *type* (e.g. category
"Anatomical Structure", type "White Matter"), so PACS viewers and downstream tools know what
was segmented without parsing free text. A model carries them in its optional metadata key
``ossnet.label_codes`` (``GraphMetadata.label_codes``); a model exported before the key
existed (the first bundled ``mni-wm-demo`` among them) gets them from :data:`KNOWN_LABEL_CODES` by
label name. The exporter writes the same table's entries into new models, so one table is the
source of both.

Every code here is a SNOMED CT concept (coding scheme designator ``SCT``) that DICOM PS3.16
lists in the context groups for segmentations: CID 7150 "Segmentation Property Categories" for
the category, CID 7151 "Segmentation Property Types" for the type. The values were checked
against pydicom's copy of PS3.16 (``pydicom.sr._concepts_dict``, scheme ``SCT``: the concept's
value, meaning and the CIDs that list it); ``source`` records that per entry.

Pure Python: no pydicom import here, so models can be read without the ``dicom`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ossnet_deploy.errors import InputError, describe

__all__ = ["KNOWN_LABEL_CODES", "Code", "LabelCode", "known_codes_metadata", "label_codes_for", "parse_label_codes"]


@dataclass(frozen=True)
class Code:
    """One coded concept: ``(scheme, value, meaning)``, e.g. ``("SCT", "389080008", "White Matter")``."""

    scheme: str
    value: str
    meaning: str

    def to_list(self) -> list[str]:
        """JSON form ``[scheme, value, meaning]``."""
        return [self.scheme, self.value, self.meaning]


@dataclass(frozen=True)
class LabelCode:
    """The coded meaning of one label value.

    Attributes:
        category: the segmented property category (DICOM CID 7150).
        type: the segmented property type (DICOM CID 7151).
        source: where the codes come from, in words (kept in the model's metadata).
    """

    category: Code
    type: Code
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"category": [...], "type": [...], "source": "..."}``."""
        return {"category": self.category.to_list(), "type": self.type.to_list(), "source": self.source}


_ANATOMY = Code("SCT", "91723000", "Anatomical Structure")  # CID 7150
_ABNORMAL = Code("SCT", "49755003", "Morphologically Abnormal Structure")  # CID 7150
_TISSUE = Code("SCT", "85756007", "Tissue")  # CID 7150
_PS316 = "SNOMED CT via DICOM PS3.16 CID 7150 (category) and CID 7151 (type), checked in pydicom 3.0 " \
         "(pydicom.sr._concepts_dict)"


def _entry(category: Code, value: str, meaning: str) -> LabelCode:
    return LabelCode(category, Code("SCT", value, meaning), _PS316)


#: Label name (as models name them in ``ossnet.labels``, lower case) -> coded meaning.
KNOWN_LABEL_CODES: Mapping[str, LabelCode] = {
    # The demo model's label is all white matter of the MNI brain (cerebral and cerebellar), so the
    # concept covering both, not "Cerebral White Matter" (68523003).
    "white_matter": _entry(_ANATOMY, "389080008", "White Matter"),
    "gray_matter": _entry(_ANATOMY, "389081007", "Gray Matter"),
    "grey_matter": _entry(_ANATOMY, "389081007", "Gray Matter"),
    "csf": _entry(_TISSUE, "65216001", "Cerebrospinal Fluid"),
    "brain": _entry(_ANATOMY, "12738006", "Brain"),
    "liver": _entry(_ANATOMY, "10200004", "Liver"),
    "kidney": _entry(_ANATOMY, "64033007", "Kidney"),
    "spleen": _entry(_ANATOMY, "78961009", "Spleen"),
    "tumor": _entry(_ABNORMAL, "108369006", "Neoplasm"),
    "tumour": _entry(_ABNORMAL, "108369006", "Neoplasm"),
    "edema": _entry(_ABNORMAL, "79654002", "Edema"),
    "necrosis": _entry(_ABNORMAL, "6574001", "Necrosis"),
}


def parse_label_codes(data: Any, where: str) -> dict[str, LabelCode]:
    """Read the JSON form of ``ossnet.label_codes`` (label value -> :meth:`LabelCode.to_dict`).

    Raises:
        ValueError: a malformed entry (the metadata reader turns it into ``ModelFormatError``).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} is not an object")
    out: dict[str, LabelCode] = {}
    for value, entry in data.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}[{value!r}] is not an object")
        codes = []
        for part in ("category", "type"):
            triple = entry.get(part)
            if not (isinstance(triple, list | tuple) and len(triple) == 3
                    and all(isinstance(t, str) and t for t in triple)):
                raise ValueError(f"{where}[{value!r}].{part} is not [scheme, value, meaning] strings")
            codes.append(Code(*triple))
        source = entry.get("source")
        if not isinstance(source, str) or not source:
            raise ValueError(f"{where}[{value!r}].source must say where the codes come from")
        out[str(value)] = LabelCode(codes[0], codes[1], source)
    return out


def label_codes_for(labels: Mapping[str, str], model_codes: Mapping[str, LabelCode] | None = None, *,
                    model: str = "the model") -> dict[str, LabelCode]:
    """The coded meaning of every label: the model's own codes, else :data:`KNOWN_LABEL_CODES`.

    Args:
        labels: label value (decimal string) -> name, as in ``ossnet.labels``.
        model_codes: the model's ``ossnet.label_codes`` (may be None or partial).
        model: what to name in messages (the model folder).

    Raises:
        InputError: a label has no code in either place (a DICOM SEG needs one per segment).
    """
    out: dict[str, LabelCode] = {}
    missing = []
    for value, name in labels.items():
        code = (model_codes or {}).get(value) or KNOWN_LABEL_CODES.get(name.lower())
        if code is None:
            missing.append(f"{value}={name!r}")
        else:
            out[value] = code
    if missing:
        raise InputError(describe(model, "labels without a coded meaning, which a DICOM SEG needs",
                                  expected="codes in the model's ossnet.label_codes metadata or a label name "
                                           f"ossnet knows ({', '.join(sorted(KNOWN_LABEL_CODES))})",
                                  found=", ".join(missing),
                                  fix="write NIfTI output (-o NAME.nii.gz), or re-export the model with "
                                      "label codes"))
    return out


def known_codes_metadata(labels: Mapping[str, str]) -> dict[str, Any] | None:
    """What the exporter writes as ``ossnet.label_codes``: the known codes of ``labels``' names.

    Returns None (the key omitted, so older runtimes read the model) when no name is known.
    """
    found = {value: KNOWN_LABEL_CODES[name.lower()].to_dict() for value, name in labels.items()
             if name.lower() in KNOWN_LABEL_CODES}
    return found or None
