"""Test helper: put real DICOM files in a spool and commit their rows with the real ingest sink."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from appliance.ingest import StoreSink
from appliance.state import StateStore
from dicom_node.scp import InstanceRecord

PATIENT_NAME = "Secretname^Patricia"
PATIENT_ID = "PID-778899-SECRET"
ACCESSION = "ACC-5566-SECRET"


def spool_instance(
    store: StateStore,
    data_dir: Path,
    study_uid: str,
    series_uid: str,
    *,
    modality: str = "MR",
    description: str = "",
    received_at: float | None = None,
    sop_uid: str | None = None,
    **tags: Any,
) -> Path:
    """Write an MR_small-based instance into ``data_dir/spool`` and commit it through ``StoreSink``."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    sop_uid = sop_uid or generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    path = data_dir / "spool" / study_uid / series_uid / f"{sop_uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    record = InstanceRecord(
        sop_instance_uid=sop_uid,
        sop_class_uid=str(ds.SOPClassUID),
        study_uid=study_uid,
        series_uid=series_uid,
        modality=modality,
        series_description=description,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        path=path,
        size=path.stat().st_size,
        calling_ae="SCANNER1",
        received_at=time.time() if received_at is None else received_at,
    )
    StoreSink(store).commit([record])
    return path


class Clock:
    """A settable clock for queues and assemblers."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
