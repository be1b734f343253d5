"""Flatten MR instances into frames: one 2-D image each with its geometry, timing and rescale.

Classic MR Image Storage instances (PS3.3 A.4) give one frame each; Enhanced
MR Image Storage instances (A.36.2) give one frame per item of the Per-frame
Functional Groups Sequence, with values found per-frame first, then in the
Shared Functional Groups (C.7.6.16). Legacy Converted Enhanced MR Image
Storage instances (A.71.3, what converters such as highdicom's ``legacy``
module write from classic MR) are read like Enhanced MR; the classic
attributes without a functional group (Temporal Position Identifier,
Contrast/Bolus Agent, Acquisition Time, Trigger Time) are looked up in the
Unassigned Per-frame and Shared Converted Attributes sequences (C.7.6.16.2.25).

Each frame keeps every timing source the header offers (Acquisition Date/Time,
Trigger Time, Temporal Position with Temporal Resolution) and its contrast
state (Contrast/Bolus Agent, Contrast/Bolus Start Time, PS3.3 C.7.6.4), so
phase mapping (:mod:`appliance.mri._timing`) can place each phase after the
injection. Philips scanners write a private Scale Slope (2005,100E) beside
Rescale Slope/Intercept; with ``philips_scale`` the floating-point value
``(stored * RS + RI) / (RS * SS)`` is used, which the vendor documents as the
value comparable between images.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage, MRImageStorage

from appliance.errors import StudyIncomplete

MR_IMAGE_STORAGE: str = MRImageStorage
ENHANCED_MR_IMAGE_STORAGE: str = EnhancedMRImageStorage
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE: str = LegacyConvertedEnhancedMRImageStorage
MULTIFRAME_MR_SOP_CLASSES = (ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE)
MR_SOP_CLASSES = (MR_IMAGE_STORAGE, *MULTIFRAME_MR_SOP_CLASSES)
#: Philips private block holding Scale Slope (2005,xx0E) and Scale Intercept (2005,xx0D)
PHILIPS_PRIVATE_CREATOR = "Philips MR Imaging DD 001"


@dataclass
class Frame:
    """One 2-D image of a study with what assembly needs to place it in (phase, z)."""

    series_uid: str
    series_description: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path | None
    frame_index: int  #: 0 for classic instances; the frame number - 1 in an enhanced instance
    position: np.ndarray  #: Image Position (Patient), mm
    orientation: np.ndarray  #: Image Orientation (Patient): row then column direction cosines
    pixel_spacing: tuple[float, float]  #: (row spacing, column spacing) mm
    rows: int
    columns: int
    slope: float
    intercept: float
    temporal_index: int | None  #: Temporal Position Identifier / Temporal Position Index
    temporal_count: int | None  #: Number of Temporal Positions (classic only)
    time_s: float | None  #: Trigger Time, else acquisition time of day, seconds
    instance_number: int
    pixels: np.ndarray  #: stored values, 2-D
    acquisition_s: float | None = None  #: Acquisition Date/Time, seconds since 1970 (or of the day when undated)
    trigger_s: float | None = None  #: Trigger Time, seconds
    temporal_resolution_s: float | None = None  #: Temporal Resolution (0020,0110), seconds per temporal position
    contrast: bool | None = None  #: Contrast/Bolus Agent given (True), absent (False), or not said (None)
    contrast_start_s: float | None = None  #: Contrast/Bolus Start Time on the acquisition's day, seconds
    image_type: tuple[str, ...] = ()  #: Image Type (or Frame Type) values, upper case
    series_number: int | None = None  #: Series Number, for naming phases of several series

    def values(self) -> np.ndarray:
        """Rescaled values (slope * stored + intercept), float64."""
        return self.pixels.astype(np.float64) * self.slope + self.intercept


def _series_name(ds: Dataset) -> str:
    description = str(ds.get("SeriesDescription", "") or "")
    number = ds.get("SeriesNumber")
    return f"series {number if number is not None else '?'} ({description or 'no description'})"


def series_label(frame: Frame) -> str:
    """How errors name a series: its description and UID (never patient data)."""
    return f"series {frame.series_uid} ({frame.series_description or 'no description'})"


def _tm_seconds(value: object) -> float | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        hours, minutes = int(text[0:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def _dt_seconds(value: object) -> float | None:
    text = str(value or "").strip()
    if len(text) < 8:
        return None
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d")
    except ValueError:
        return None
    rest = _tm_seconds(text[8:].split("+")[0].split("-")[0]) or 0.0
    return (day - dt.datetime(1970, 1, 1)).total_seconds() + rest


def _day_seconds(ds: Dataset) -> float:
    date = str(ds.get("AcquisitionDate", "") or ds.get("SeriesDate", "") or ds.get("StudyDate", "") or "")
    return (_dt_seconds(date) or 0.0) if date else 0.0


def _acquisition_time(ds: Dataset) -> float | None:
    """Acquisition Date/Time, else Acquisition (or Content) Date and Time, seconds."""
    acq_dt = _dt_seconds(ds.get("AcquisitionDateTime"))
    if acq_dt is not None:
        return acq_dt
    tod = _tm_seconds(ds.get("AcquisitionTime"))
    if tod is None:
        tod = _tm_seconds(ds.get("ContentTime"))
    return None if tod is None else _day_seconds(ds) + tod


def _trigger_time(ds: Dataset) -> float | None:
    value = ds.get("TriggerTime")
    return float(value) / 1000.0 if value not in (None, "") else None


def _classic_time(ds: Dataset) -> float | None:
    """Trigger Time (ms) when present, else Acquisition Date/Time, else Content Time (seconds)."""
    trigger = _trigger_time(ds)
    return trigger if trigger is not None else _acquisition_time(ds)


def _timing(ds: Dataset) -> dict[str, object]:
    """Every timing and contrast source of one header (classic attributes), as Frame fields."""
    resolution = ds.get("TemporalResolution")
    agent = ds.get("ContrastBolusAgent")
    start = _tm_seconds(ds.get("ContrastBolusStartTime"))
    image_type = ds.get("ImageType") or ()
    return {
        "acquisition_s": _acquisition_time(ds),
        "trigger_s": _trigger_time(ds),
        "temporal_resolution_s": float(resolution) / 1000.0 if resolution not in (None, "") else None,
        "contrast": bool(str(agent or "").strip()),
        "contrast_start_s": None if start is None else _day_seconds(ds) + start,
        "image_type": tuple(str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)),
        "series_number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
    }


def _floats(value: object) -> np.ndarray:
    return np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]


def _spacing(value: object) -> tuple[float, float]:
    row, column = _floats(value)[:2]
    return float(row), float(column)


def _need(ds: Dataset | None, keyword: str, where: str) -> object:
    if ds is None or keyword not in ds or ds[keyword].value in (None, ""):
        raise StudyIncomplete(f"{where}: {keyword} is missing")
    return ds[keyword].value


def _rescale(ds: Dataset | None) -> tuple[float, float]:
    if ds is None:
        return 1.0, 0.0
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0, float(intercept) if intercept not in (None, "") else 0.0)


def _philips_rescale(ds: Dataset, slope: float, intercept: float, where: str) -> tuple[float, float]:
    """Slope and intercept giving Philips' floating-point value ``(SV * RS + RI) / (RS * SS)``."""
    try:
        block = ds.private_block(0x2005, PHILIPS_PRIVATE_CREATOR)
        scale = float(block[0x0E].value)
    except KeyError:
        return slope, intercept
    if not np.isfinite(scale) or scale <= 0 or slope == 0:
        raise StudyIncomplete(f"{where}: Philips Scale Slope (2005,100E) {scale} with Rescale Slope {slope} "
                              "cannot scale the image; need a positive Scale Slope and a non-zero Rescale Slope")
    return slope / (slope * scale), intercept / (slope * scale)


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    if "PixelData" not in ds:
        raise StudyIncomplete(f"{where}: the instance has no Pixel Data")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # a decoder's own error: name it, do not guess
        raise StudyIncomplete(f"{where}: pixel data cannot be decoded ({exc})") from exc


def _classic_frames(ds: Dataset, path: Path | None, philips_scale: bool) -> list[Frame]:
    where = f"{_series_name(ds)} {ds.SeriesInstanceUID}, instance {ds.SOPInstanceUID}"
    pixels = _pixels(ds, where)
    if pixels.ndim != 2:
        raise StudyIncomplete(f"{where}: expected one 2-D frame in an MR Image, got shape {pixels.shape}")
    slope, intercept = _rescale(ds)
    if philips_scale:
        slope, intercept = _philips_rescale(ds, slope, intercept, where)
    tpi = ds.get("TemporalPositionIdentifier")
    ntp = ds.get("NumberOfTemporalPositions")
    return [Frame(
        series_uid=str(ds.SeriesInstanceUID), series_description=str(ds.get("SeriesDescription", "") or ""),
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID), path=path, frame_index=0,
        position=_floats(_need(ds, "ImagePositionPatient", where)),
        orientation=_floats(_need(ds, "ImageOrientationPatient", where)),
        pixel_spacing=_spacing(_need(ds, "PixelSpacing", where)),
        rows=int(ds.Rows), columns=int(ds.Columns), slope=slope, intercept=intercept,
        temporal_index=int(tpi) if tpi not in (None, "") else None,
        temporal_count=int(ntp) if ntp not in (None, "") else None,
        time_s=_classic_time(ds), instance_number=int(ds.get("InstanceNumber") or 0), pixels=pixels,
        **_timing(ds),  # type: ignore[arg-type]
    )]


def _group(item: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional-group sequence, per-frame first, then shared (C.7.6.16.2)."""
    for source in (item, shared):
        if source is not None and sequence in source and len(source[sequence].value) > 0:
            found: Dataset = source[sequence].value[0]
            return found
    return None


#: classic attributes a converted frame may carry outside the functional groups (C.7.6.16.2.25)
_CONVERTED = ("SeriesNumber", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentTime", "SeriesDate", "StudyDate",
              "TriggerTime", "TemporalResolution", "ContrastBolusAgent", "ContrastBolusStartTime",
              "TemporalPositionIdentifier", "NumberOfTemporalPositions", "ImageType")


def _frame_header(ds: Dataset, item: Dataset, shared: Dataset | None) -> Dataset:
    """The classic attributes of one frame: per-frame converted, shared converted, then the instance's own."""
    sources = [_group(item, None, "UnassignedPerFrameConvertedAttributesSequence"),
               _group(shared, None, "UnassignedSharedConvertedAttributesSequence") if shared is not None else None, ds]
    view = Dataset()
    for keyword in _CONVERTED:
        for source in sources:
            if source is not None and keyword in source and source[keyword].value not in (None, ""):
                setattr(view, keyword, source[keyword].value)
                break
    return view


def _enhanced_timing(ds: Dataset, item: Dataset, shared: Dataset | None, content: Dataset | None) -> dict[str, object]:
    """Timing and contrast of one enhanced frame: Frame Content, Contrast/Bolus Usage, then converted attributes."""
    view = _frame_header(ds, item, shared)
    timing = _timing(view)
    frame_time = _dt_seconds(content.get("FrameAcquisitionDateTime")) if content is not None else None
    if frame_time is not None:
        timing["acquisition_s"] = frame_time
        start = _tm_seconds(view.get("ContrastBolusStartTime"))
        if start is not None:  # on the frame's own day: converters move the date into Frame Acquisition DateTime
            timing["contrast_start_s"] = frame_time - frame_time % 86400.0 + start
    usage = _group(item, shared, "ContrastBolusUsageSequence")
    if usage is not None and usage.get("ContrastBolusAgentAdministered"):
        timing["contrast"] = str(usage.ContrastBolusAgentAdministered).upper() == "YES"
    for agent in ds.get("ContrastBolusAgentSequence") or ():
        for profile in agent.get("ContrastAdministrationProfileSequence") or ():
            start = _tm_seconds(profile.get("ContrastBolusStartTime"))
            if start is not None and timing["contrast_start_s"] is None:
                timing["contrast_start_s"] = _day_seconds(view) + start
    frame_type = _group(item, shared, "MRImageFrameTypeSequence")
    if frame_type is not None and frame_type.get("FrameType"):
        timing["image_type"] = tuple(str(v).upper() for v in frame_type.FrameType)
    tpi = content.get("TemporalPositionIndex") if content is not None else None
    if tpi in (None, ""):
        tpi = view.get("TemporalPositionIdentifier")
    ntp = view.get("NumberOfTemporalPositions")
    timing["temporal_index"] = int(tpi) if tpi not in (None, "") else None
    timing["temporal_count"] = int(ntp) if ntp not in (None, "") else None
    return timing


def _enhanced_frames(ds: Dataset, path: Path | None) -> list[Frame]:
    where = f"{_series_name(ds)} {ds.SeriesInstanceUID}, enhanced instance {ds.SOPInstanceUID}"
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    count = int(ds.get("NumberOfFrames") or 0)
    if per_frame is None or len(per_frame) != count:
        raise StudyIncomplete(f"{where}: Per-frame Functional Groups Sequence has "
                              f"{0 if per_frame is None else len(per_frame)} items for {count} frames")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    pixels = _pixels(ds, where)
    if count == 1:
        pixels = pixels[np.newaxis]
    frames: list[Frame] = []
    for index, item in enumerate(per_frame):
        at = f"{where} frame {index + 1}"
        content = _group(item, None, "FrameContentSequence")
        measures = _group(item, shared, "PixelMeasuresSequence")
        timing = _enhanced_timing(ds, item, shared, content)
        trigger = timing["trigger_s"]
        slope, intercept = _rescale(_group(item, shared, "PixelValueTransformationSequence"))
        frames.append(Frame(
            series_uid=str(ds.SeriesInstanceUID), series_description=str(ds.get("SeriesDescription", "") or ""),
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID), path=path,
            frame_index=index,
            position=_floats(_need(_group(item, shared, "PlanePositionSequence"), "ImagePositionPatient", at)),
            orientation=_floats(_need(_group(item, shared, "PlaneOrientationSequence"), "ImageOrientationPatient", at)),
            pixel_spacing=_spacing(_need(measures, "PixelSpacing", at)),
            rows=int(ds.Rows), columns=int(ds.Columns), slope=slope, intercept=intercept,
            time_s=trigger if trigger is not None else timing["acquisition_s"],  # type: ignore[arg-type]
            instance_number=index + 1, pixels=pixels[index], **timing,  # type: ignore[arg-type]
        ))
    return frames


def frames_of(instances: Iterable[tuple[Path | None, Dataset]], philips_scale: bool = False) -> list[Frame]:
    """Every frame of the MR instances given; other SOP classes (SR, SEG, ...) are skipped.

    ``philips_scale``: apply Philips' private Scale Slope (2005,100E) where an instance has it.
    """
    frames: list[Frame] = []
    for path, ds in instances:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == MR_IMAGE_STORAGE:
            frames.extend(_classic_frames(ds, path, philips_scale))
        elif sop_class in MULTIFRAME_MR_SOP_CLASSES:
            frames.extend(_enhanced_frames(ds, path))
    return frames
