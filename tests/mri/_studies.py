"""DCE studies as real scanners send them, built on real MR headers (pydicom's ``MR_small.dcm``).

Every instance starts as a copy of the header of a real Toshiba MR image; only
what a DCE protocol sets per image is replaced: UIDs, geometry, timing,
contrast attributes and the pixels of a synthetic case
(:func:`export.synthetic.dce.make_case` at the protocol's phase times). The
encodings are those of issue 13:

``single_tpi``        one series, Temporal Position Identifier + Number of Temporal Positions, Acquisition Time
``single_trigger``    one series, no temporal positions, Trigger Time only (ms from the start of the dynamic)
``single_resolution`` one series, Temporal Position Identifier with Temporal Resolution, no acquisition times
``series_tpi``        a series per phase, each with its Temporal Position Identifier of the whole dynamic (GE, Siemens)
``series_time``       a series per phase, no temporal positions, ordered by Acquisition Time
``split``             a pre-contrast series, then the post-contrast phases in series of up to three phases each
``enhanced``          one Enhanced MR instance (``export.synthetic.dce_dicom``)
``legacy``            one Legacy Converted Enhanced MR instance, made by highdicom's ``legacy`` module from
                      ``single_tpi``

Post-contrast images carry Contrast/Bolus Agent and (except ``series_time``, ``single_trigger`` and
``single_resolution``) Contrast/Bolus Start Time.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools

import highdicom as hd
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from export.synthetic.dce import INJECTION_S, SPACING_MM, DceCase, make_case
from export.synthetic.dce_dicom import encode_case, stored_signal, study_identity

PROTOCOL_ENCODINGS = ("single_tpi", "single_trigger", "single_resolution", "series_tpi", "series_time", "split",
                      "enhanced", "legacy")
_NO_START = ("series_time", "single_trigger", "single_resolution")


@functools.lru_cache(maxsize=1)
def _template() -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    del ds.PixelData
    return ds


@functools.lru_cache(maxsize=16)
def case_at(times: tuple[float, ...], seed: int = 4) -> DceCase:
    """One synthetic case (washout lesion, seed-fixed) sampled at ``times`` (seconds after the pre phase)."""
    return make_case(np.random.default_rng(seed), positive=True, phase_times_s=times)


def _tm(when: dt.datetime) -> str:
    return when.strftime("%H%M%S.%f")[:13]


def _instance(case: DceCase, signal: np.ndarray, phase: int, k: int, study_uid: str, series_uid: str,
              series_number: int, description: str, start: dt.datetime, descending: bool) -> Dataset:
    ds = copy.deepcopy(_template())
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
    ds.SeriesNumber, ds.SeriesDescription = series_number, description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    slices = signal.shape[1]
    position = slices - 1 - k if descending else k  # descending: instance 1 is the top slice
    ds.InstanceNumber = phase * slices + position + 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["-48", "-48", f"{k * SPACING_MM[0]:.1f}"]
    ds.SliceLocation = f"{k * SPACING_MM[0]:.1f}"
    ds.PixelSpacing = [str(SPACING_MM[1]), str(SPACING_MM[2])]
    ds.SliceThickness = str(SPACING_MM[0])
    when = start + dt.timedelta(seconds=case.phase_times_s[phase])
    ds.AcquisitionDate, ds.AcquisitionTime = when.strftime("%Y%m%d"), _tm(when)
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), _tm(when)
    if phase > 0:
        ds.ContrastBolusAgent = "Gadobutrol"
        ds.ContrastBolusStartTime = _tm(start + dt.timedelta(seconds=INJECTION_S))
    ds.Rows, ds.Columns = signal.shape[2:]
    ds.PixelData = signal[phase, k].astype(np.int16).tobytes()  # the header's own Pixel Representation: signed
    ds["PixelData"].VR = "OW"
    return ds


def _with_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _series_layout(encoding: str, phases: int) -> list[list[int]]:
    """Which phases each series holds."""
    if encoding in ("series_tpi", "series_time"):
        return [[p] for p in range(phases)]
    if encoding == "split":
        posts = list(range(1, phases))
        return [[0]] + [posts[i:i + 3] for i in range(0, len(posts), 3)]
    return [list(range(phases))]


def _classic(case: DceCase, encoding: str, seed: int, descending: bool) -> list[Dataset]:
    signal = stored_signal(case)
    phases, slices = signal.shape[:2]
    study_uid = generate_uid(entropy_srcs=[f"protocol-study-{seed}"])
    start = dt.datetime(2026, 3, 2, 9, 0, 0)
    out: list[Dataset] = []
    for number, members in enumerate(_series_layout(encoding, phases), start=3):
        series_uid = generate_uid()
        for rank, phase in enumerate(members):
            description = "DCE dynamic" if len(members) > 1 else ("pre" if phase == 0 else f"post{phase}")
            for k in range(slices):
                ds = _instance(case, signal, phase, k, study_uid, series_uid, number, description, start, descending)
                if encoding in ("single_tpi", "single_resolution", "series_tpi", "split", "legacy"):
                    ds.TemporalPositionIdentifier = rank + 1 if encoding == "split" else phase + 1
                    ds.NumberOfTemporalPositions = len(members) if encoding == "split" else phases
                if encoding == "single_resolution":
                    ds.TemporalResolution = "45000"  # overwritten below: the phase times are not uniform
                    for keyword in ("AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime"):
                        delattr(ds, keyword)
                if encoding == "single_trigger":
                    ds.TriggerTime = f"{case.phase_times_s[phase] * 1000:.0f}"
                    for keyword in ("AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime"):
                        delattr(ds, keyword)
                if encoding in _NO_START and "ContrastBolusStartTime" in ds:
                    del ds.ContrastBolusStartTime
                out.append(_with_meta(ds))
    return out


def build_study(times: tuple[float, ...], encoding: str, seed: int = 0, descending: bool = False) -> list[Dataset]:
    """The case at ``times`` in ``encoding``, as datasets with file meta (Explicit VR Little Endian)."""
    case = case_at(times)
    if encoding == "enhanced":
        return encode_case(case, "enhanced", study_identity(900 + seed))
    if encoding == "single_resolution":
        steps = np.diff(times[1:])
        if len(steps) and not np.allclose(steps, steps[0]):
            raise ValueError(f"Temporal Resolution needs evenly spaced post-contrast phases, got {times}")
    datasets = _classic(case, encoding, seed, descending)
    if encoding == "single_resolution":
        step = (times[2] - times[1]) if len(times) > 2 else 60.0
        for ds in datasets:
            ds.TemporalResolution = f"{step * 1000:.0f}"
    if encoding == "legacy":
        legacy = hd.legacy.LegacyConvertedEnhancedMRImage(
            datasets, series_instance_uid=generate_uid(), series_number=7, sop_instance_uid=generate_uid(),
            instance_number=1)
        return [_with_meta(legacy)]
    return datasets
