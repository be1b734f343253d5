"""Read source instances' headers and make them safe to inherit from (PS3.3 C.7.1.1, C.7.2.1).

The report objects copy patient, study and accession attributes from the
source. A source may lack Type 2 attributes (a modality that omits Patient's
Birth Date, say) or may have been stored in Implicit VR; highdicom expects
them present, so a missing one is added empty, which is what Type 2 means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from copy import deepcopy

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.errors import ReportError
from appliance.findings import SourceImage

logger = logging.getLogger(__name__)

#: Patient and General Study module attributes of Type 2: present, possibly empty.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def read_header(source: SourceImage) -> Dataset:
    """The source file's header (no pixel data), checked against what the finding claims."""
    try:
        ds = pydicom.dcmread(source.path, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        raise ReportError(f"cannot read source instance {source.sop_instance_uid} at {source.path}: {exc}") from exc
    for keyword, expected in (
        ("StudyInstanceUID", source.study_uid),
        ("SeriesInstanceUID", source.series_uid),
        ("SOPInstanceUID", source.sop_instance_uid),
    ):
        found = ds.get(keyword)
        if found != expected:
            raise ReportError(f"source file {source.path} has {keyword} {found!r}, the finding names {expected!r}")
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = source.sop_class_uid
    return ds


def read_headers(sources: Iterable[SourceImage]) -> list[Dataset]:
    """Headers of distinct sources, in order, each read once."""
    seen: dict[str, Dataset] = {}
    for source in sources:
        if source.sop_instance_uid not in seen:
            seen[source.sop_instance_uid] = read_header(source)
    return list(seen.values())


def with_type2(ds: Dataset) -> Dataset:
    """A copy of ``ds`` in which every Type 2 patient/study attribute is present (empty if absent)."""
    out = deepcopy(ds)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in out or out[keyword].value is None:
            setattr(out, keyword, "")
    return out


def check_one_study(headers: Sequence[Dataset], study_uid: str) -> None:
    """Every source must belong to the result's study: the report is a new series in it."""
    if not headers:
        raise ReportError("a report needs at least one source instance")
    for ds in headers:
        if ds.StudyInstanceUID != study_uid:
            raise ReportError(f"source {ds.SOPInstanceUID} belongs to study {ds.StudyInstanceUID}, not {study_uid}")


def with_plane_geometry(ds: Dataset) -> Dataset:
    """``ds`` with plane geometry at the top level, as TID 1600 image library descriptors and Patient Orientation read it.

    Enhanced (multi-frame) images keep Pixel Spacing, Image Orientation and Position in the
    functional groups (PS3.3 C.7.6.16); the library describes the first frame.
    """
    if "PixelSpacing" in ds or "SharedFunctionalGroupsSequence" not in ds:
        return ds
    view = Dataset()
    view.update(ds)
    groups = [ds.SharedFunctionalGroupsSequence[0]]
    if ds.get("PerFrameFunctionalGroupsSequence"):
        groups.append(ds.PerFrameFunctionalGroupsSequence[0])
    for group in groups:
        if "PixelMeasuresSequence" in group:
            measures = group.PixelMeasuresSequence[0]
            view.PixelSpacing = measures.PixelSpacing
            if "SliceThickness" in measures:
                view.SliceThickness = measures.SliceThickness
        if "PlaneOrientationSequence" in group:
            view.ImageOrientationPatient = group.PlaneOrientationSequence[0].ImageOrientationPatient
        if "PlanePositionSequence" in group:
            view.ImagePositionPatient = group.PlanePositionSequence[0].ImagePositionPatient
    return view
