"""The parts every synthetic DCE instance shares: the study's identity, patient/study modules, geometry, timing.

Used by :mod:`export.synthetic.dce_dicom` for the classic and the enhanced encodings.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from export.synthetic.dce import INJECTION_S, SPACING_MM, DceCase

__all__ = [
    "GADOLINIUM", "IOP", "ORIGIN", "StudyIdentity", "age_string", "code_item", "common_modules", "contrast_module",
    "decimal_string", "phase_name", "phase_time", "pixel_module", "position", "stored_signal", "study_identity", "tm",
]

IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIGIN = (-96.0, -140.0, -30.0)  # (x, y, z) mm of the first voxel of slice 0 (LPS)
GADOLINIUM = ("C17511", "NCIt", "Gadobutrol")


@dataclass(frozen=True)
class StudyIdentity:
    """Synthetic patient and study attributes shared by every instance of one study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    weight_kg: float
    accession_number: str
    study_uid: str
    frame_of_reference_uid: str
    study_datetime: dt.datetime
    uid_seed: str


def study_identity(seed: int) -> StudyIdentity:
    """Deterministic synthetic identity for study number ``seed`` (no real person)."""
    rng = np.random.default_rng(10_000 + seed)
    start = dt.datetime(2025, 1, 6, 8, 0, 0) + dt.timedelta(days=int(rng.integers(0, 300)), minutes=int(rng.integers(0, 540)))
    key = f"synthetic-dce-{seed}"
    return StudyIdentity(
        patient_name=f"SYNTHETIC^DCE{seed:04d}",
        patient_id=f"SYN-DCE-{seed:04d}",
        birth_date=f"{1940 + int(rng.integers(0, 50))}0101",
        sex="F",
        weight_kg=float(np.round(rng.uniform(50, 95), 1)),
        accession_number=f"ACC{seed:06d}",
        study_uid=generate_uid(entropy_srcs=[key, "study"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[key, "frame-of-reference"]),
        study_datetime=start,
        uid_seed=key,
    )


def stored_signal(case: DceCase) -> np.ndarray:
    """The signal every encoding stores, as the appliance decodes it: ``round(volume)``, float32."""
    return np.clip(np.round(case.volume), 0, 4095).astype(np.float32)


def decimal_string(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def tm(when: dt.datetime) -> str:
    return when.strftime("%H%M%S.%f")[:13]


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def age_string(clinical: dict[str, float | None]) -> str:
    age = clinical.get("age")
    return "" if age is None else f"{int(round(age)):03d}Y"


def common_modules(ds: Dataset, ident: StudyIdentity, case: DceCase, sop_class: str, sop_uid: str) -> None:
    """Patient, General Study, Patient Study, Frame of Reference, Equipment and SOP Common modules."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        ident.patient_name, ident.patient_id, ident.birth_date, ident.sex,
    )
    ds.PatientAge = age_string(case.clinical)
    ds.PatientWeight = decimal_string(ident.weight_kg)
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyDate, ds.StudyTime = ident.study_datetime.strftime("%Y%m%d"), tm(ident.study_datetime)
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ident.accession_number
    ds.StudyDescription = "MR BREAST DCE (synthetic)"
    ds.Modality = "MR"
    ds.BodyPartExamined = "BREAST"
    ds.PatientPosition = "HFP"
    ds.FrameOfReferenceUID = ident.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "Synthetic"
    ds.ManufacturerModelName = "DCE generator"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1.0"
    ds.InstitutionName = "Synthetic Hospital"


def pixel_module(ds: Dataset, rows: int, cols: int, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0


def position(k: int) -> list[str]:
    return [decimal_string(ORIGIN[0]), decimal_string(ORIGIN[1]), decimal_string(ORIGIN[2] + k * SPACING_MM[0])]


def phase_name(phase: int) -> str:
    """Series Description of a phase: ``pre``, ``post1``, ``post2`` ..."""
    return "pre" if phase == 0 else f"post{phase}"


def phase_time(ident: StudyIdentity, case: DceCase, phase: int) -> dt.datetime:
    return ident.study_datetime + dt.timedelta(minutes=2, seconds=case.phase_times_s[phase])


def contrast_module(ds: Dataset, ident: StudyIdentity, case: DceCase) -> None:
    """Contrast/Bolus Module (C.7.6.4) for post-contrast images."""
    ds.ContrastBolusAgent = "Gadobutrol"
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "7.5"
    ds.ContrastBolusStartTime = tm(phase_time(ident, case, 0) + dt.timedelta(seconds=INJECTION_S))
