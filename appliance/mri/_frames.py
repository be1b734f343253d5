"""Flatten MR instances into frames: one 2-D image each with its geometry, timing and rescale.

Classic MR Image Storage instances (PS3.3 A.4) give one frame each; Enhanced
MR Image Storage instances (A.36.2) give one frame per item of the Per-frame
Functional Groups Sequence, with values found per-frame first, then in the
Shared Functional Groups (C.7.6.16).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from appliance.errors import StudyIncomplete

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
MR_SOP_CLASSES = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)


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


def _classic_time(ds: Dataset) -> float | None:
    """Trigger Time (ms) when present, else Acquisition Date/Time, else Content Time (seconds)."""
    if ds.get("TriggerTime") not in (None, ""):
        return float(ds.TriggerTime) / 1000.0
    acq_dt = _dt_seconds(ds.get("AcquisitionDateTime"))
    if acq_dt is not None:
        return acq_dt
    date = str(ds.get("AcquisitionDate", "") or ds.get("SeriesDate", "") or "")
    tod = _tm_seconds(ds.get("AcquisitionTime")) or _tm_seconds(ds.get("ContentTime"))
    if tod is None:
        return None
    day = _dt_seconds(date) if date else 0.0
    return (day or 0.0) + tod


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


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    if "PixelData" not in ds:
        raise StudyIncomplete(f"{where}: the instance has no Pixel Data")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # a decoder's own error: name it, do not guess
        raise StudyIncomplete(f"{where}: pixel data cannot be decoded ({exc})") from exc


def _classic_frames(ds: Dataset, path: Path | None) -> list[Frame]:
    where = f"{_series_name(ds)} {ds.SeriesInstanceUID}, instance {ds.SOPInstanceUID}"
    pixels = _pixels(ds, where)
    if pixels.ndim != 2:
        raise StudyIncomplete(f"{where}: expected one 2-D frame in an MR Image, got shape {pixels.shape}")
    slope, intercept = _rescale(ds)
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
    )]


def _group(item: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional-group sequence, per-frame first, then shared (C.7.6.16.2)."""
    for source in (item, shared):
        if source is not None and sequence in source and len(source[sequence].value) > 0:
            found: Dataset = source[sequence].value[0]
            return found
    return None


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
        tpi = content.get("TemporalPositionIndex") if content is not None else None
        time_s = _dt_seconds(content.get("FrameAcquisitionDateTime")) if content is not None else None
        slope, intercept = _rescale(_group(item, shared, "PixelValueTransformationSequence"))
        frames.append(Frame(
            series_uid=str(ds.SeriesInstanceUID), series_description=str(ds.get("SeriesDescription", "") or ""),
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID), path=path,
            frame_index=index,
            position=_floats(_need(_group(item, shared, "PlanePositionSequence"), "ImagePositionPatient", at)),
            orientation=_floats(_need(_group(item, shared, "PlaneOrientationSequence"), "ImageOrientationPatient", at)),
            pixel_spacing=_spacing(_need(measures, "PixelSpacing", at)),
            rows=int(ds.Rows), columns=int(ds.Columns), slope=slope, intercept=intercept,
            temporal_index=int(tpi) if tpi not in (None, "") else None, temporal_count=None,
            time_s=time_s, instance_number=index + 1, pixels=pixels[index],
        ))
    return frames


def frames_of(instances: Iterable[tuple[Path | None, Dataset]]) -> list[Frame]:
    """Every frame of the MR instances given; other SOP classes (SR, SEG, ...) are skipped."""
    frames: list[Frame] = []
    for path, ds in instances:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == MR_IMAGE_STORAGE:
            frames.extend(_classic_frames(ds, path))
        elif sop_class == ENHANCED_MR_IMAGE_STORAGE:
            frames.extend(_enhanced_frames(ds, path))
    return frames
