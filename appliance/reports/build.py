"""Turn a :class:`StudyResult` into DICOM files in the outbox, durably and idempotently.

Every object is encoded to bytes, read back (so what is written is what
pydicom parses), then written to a temporary name in the outbox, fsync'd and
renamed to ``<SOP Instance UID>.dcm`` (DESIGN invariants 1 and 2). UIDs are
deterministic (``uids``), so building the same result again rewrites the same
files and a re-sent instance is de-duplicated by the PACS.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from appliance.errors import ReportError
from appliance.findings import SourceImage, StudyResult
from appliance.reports._source import check_one_study, read_headers
from appliance.reports.capture import build_capture
from appliance.reports.heatmap import build_heatmap_seg
from appliance.reports.sr import DeviceInfo, build_sr
from appliance.reports.uids import check_uid
from engines.files import atomic_write

logger = logging.getLogger(__name__)


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file (Part 10) in bytes, checked by reading it back."""
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ReportError(f"cannot encode {ds.get('SOPClassUID', '?')} {ds.get('SOPInstanceUID', '?')}: {exc}") from exc
    data = buffer.getvalue()
    back = pydicom.dcmread(io.BytesIO(data))
    if back.SOPInstanceUID != ds.SOPInstanceUID or back.StudyInstanceUID != ds.StudyInstanceUID:
        raise ReportError(f"object {ds.SOPInstanceUID} did not read back with the same UIDs")
    return data


def write_atomic(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``directory/name``: temporary file, fsync, rename, fsync the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    atomic_write(target, data)
    return target


def _all_sources(result: StudyResult) -> list[SourceImage]:
    sources: list[SourceImage] = []
    for finding in result.findings:
        sources.extend(finding.sources)
        if finding.heat_map is not None:
            sources.append(finding.heat_map.level_source)
    return sources


def build_datasets(result: StudyResult, device: DeviceInfo, captures: bool = True) -> list[Dataset]:
    """The SR, a SEG per heat map and (optionally) a Secondary Capture per finding, in that order."""
    if not result.findings:
        raise ReportError(f"job {result.job_id} has no findings to report")
    headers = read_headers(_all_sources(result))
    check_one_study(headers, result.study_uid)
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    sr_uids = dict.fromkeys(s.sop_instance_uid for f in result.findings for s in f.sources)
    sr_headers = [by_uid[uid] for uid in sr_uids]
    objects: list[Dataset] = [build_sr(result, device, sr_headers)]
    for index, finding in enumerate(result.findings, start=1):
        if finding.heat_map is not None:
            level = by_uid[finding.heat_map.level_source.sop_instance_uid]
            objects.append(build_heatmap_seg(result, index, finding, device, level))
    if captures:
        for index, finding in enumerate(result.findings, start=1):
            try:
                objects.append(build_capture(result, index, finding, device, by_uid))
            except ReportError as exc:  # optional object: the SR still goes out
                logger.warning("job %s: no capture for finding %d: %s", result.job_id, index, exc)
    return objects


def build_reports(result: StudyResult, outbox_dir: Path, device: DeviceInfo, captures: bool = True) -> list[Path]:
    """Write every report object of ``result`` to ``outbox_dir/<SOP Instance UID>.dcm``; return the paths."""
    paths = []
    for ds in build_datasets(result, device, captures=captures):
        name = f"{check_uid(str(ds.SOPInstanceUID))}.dcm"
        paths.append(write_atomic(outbox_dir, name, encode(ds)))
    logger.info("job %s: wrote %d report object(s) to the outbox", result.job_id, len(paths))
    return paths
