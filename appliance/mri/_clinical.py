"""Clinical variables for the breast-MRI model: from DICOM and from a sidecar record.

The published model used age, ER status, HER2 status, Ki-67 and tumour grade.
Age comes from Patient's Age (0010,1010) (PS3.3 C.7.2.2 Patient Study Module,
an AS value such as ``054Y``); a sidecar record in the state store's
``clinical`` table, keyed by Study Instance UID or Accession Number and set
with ``appliance clinical set`` or the web API, adds or overrides values.

The model's vector follows the card's ``clinical_variables`` (default the five
above): each value scaled (age/100, ER, HER2, Ki67/100, grade/3), then one
missing indicator per variable (1.0 when missing, and the value 0). A missing
value is never a silent zero.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from appliance.errors import ApplianceError, JobFailed
from appliance.state import StateStore
from engines.cards import BREAST_MRI_CLINICAL_VARIABLES

CLINICAL_VARIABLES: tuple[str, ...] = BREAST_MRI_CLINICAL_VARIABLES
CLINICAL_SCALE: dict[str, float] = {"age": 100.0, "er": 1.0, "her2": 1.0, "ki67": 100.0, "grade": 3.0}
#: what the sidecar may hold: allowed range (inclusive) and whether the value must be an integer
_RULES: dict[str, tuple[float, float, bool]] = {
    "age": (0.0, 130.0, False),
    "er": (0.0, 1.0, True),
    "her2": (0.0, 1.0, True),
    "ki67": (0.0, 100.0, False),
    "grade": (1.0, 3.0, True),
    "weight": (0.0, 500.0, False),
}
_AS_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


class ClinicalValueError(ApplianceError):
    """A clinical value is unknown or out of range."""


def check_values(values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Validate sidecar values: known names, numbers in range (ER/HER2 0 or 1, grade 1-3, Ki-67 0-100 %)."""
    checked: dict[str, float | None] = {}
    for name, value in values.items():
        if name not in _RULES:
            raise ClinicalValueError(f"unknown clinical variable {name!r}; known: {', '.join(_RULES)}")
        if value is None:
            checked[name] = None
            continue
        low, high, integer = _RULES[name]
        number = float(value)
        if not low <= number <= high or (integer and number != int(number)) or np.isnan(number):
            kind = "an integer" if integer else "a number"
            raise ClinicalValueError(f"clinical {name} = {value!r} must be {kind} in {low:g}..{high:g}")
        checked[name] = number
    return checked


def _subject(key: str) -> str:
    """An opaque audit subject for a sidecar key (accession numbers are patient-identifying)."""
    return "clinical:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def set_clinical(store: StateStore, key: str, values: Mapping[str, float | None], actor: str) -> dict[str, float | None]:
    """Merge ``values`` into the record for ``key`` (Study Instance UID or Accession Number).

    A value of None removes that variable (it becomes missing). Returns the record as stored.
    """
    key = key.strip()
    if not key:
        raise ClinicalValueError("the clinical record key (Study Instance UID or Accession Number) is empty")
    checked = check_values(values)
    with store.atomic():
        record = get_clinical(store, key)
        record.update(checked)
        record = {k: v for k, v in record.items() if v is not None}
        store.clinical.put(key, record)
        store.audit(actor, "clinical.set", _subject(key), {"variables": sorted(checked)})
    return record


def get_clinical(store: StateStore, key: str) -> dict[str, float | None]:
    """The sidecar record for ``key``; empty when there is none."""
    loaded = store.clinical.get(key.strip())
    return {k: (None if v is None else float(v)) for k, v in loaded.items()}


def age_years(value: object) -> float | None:
    """Patient's Age (AS, ``nnnD|W|M|Y``, PS3.5 6.2) in years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in _AS_UNITS:
        return None
    return round(int(text[:3]) * _AS_UNITS[text[3]], 2)


def from_dicom(ds: Dataset) -> dict[str, Any]:
    """What the images say: age (years), sex (M/F/O or None), weight (kg)."""
    weight = ds.get("PatientWeight")
    sex = str(ds.get("PatientSex", "") or "").strip() or None
    return {
        "age": age_years(ds.get("PatientAge")),
        "sex": sex,
        "weight": float(weight) if weight not in (None, "") else None,
    }


def study_values(ds: Dataset, store: StateStore | None) -> tuple[dict[str, float | None], list[str]]:
    """DICOM values, then the sidecar by Accession Number, then by Study Instance UID (later wins).

    Returns the values and where each came from (for the result's notes).
    """
    dicom = from_dicom(ds)
    values: dict[str, float | None] = {"age": dicom["age"], "weight": dicom["weight"]}
    origin = {k: "DICOM" for k, v in values.items() if v is not None}
    if store is not None:
        for source, key in (("sidecar (accession)", ds.get("AccessionNumber")), ("sidecar (study)", ds.get("StudyInstanceUID"))):
            if key:
                for name, value in get_clinical(store, str(key)).items():
                    if value is not None:
                        values[name], origin[name] = value, source
    notes = [f"{name} from {where}" for name, where in sorted(origin.items())]
    return values, notes


def clinical_vector(values: Mapping[str, float | None], variables: Sequence[str] = CLINICAL_VARIABLES) -> np.ndarray:
    """[scaled values..., missing indicators...] float32 of length 2 * len(variables)."""
    unknown = [v for v in variables if v not in CLINICAL_SCALE]
    if unknown:
        raise JobFailed(f"the model card asks for clinical variables {unknown}; this appliance knows "
                        f"{', '.join(CLINICAL_SCALE)}")
    scaled, missing = [], []
    for name in variables:
        value = values.get(name)
        scaled.append(0.0 if value is None else float(value) / CLINICAL_SCALE[name])
        missing.append(1.0 if value is None else 0.0)
    return np.asarray(scaled + missing, dtype=np.float32)
