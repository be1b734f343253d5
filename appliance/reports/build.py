"""Turn a :class:`StudyResult` into DICOM files in the outbox, durably and idempotently.

Every object is encoded to bytes, read back (so what is written is what
pydicom parses), then written to a temporary name in the outbox, fsync'd and
renamed to ``<SOP Instance UID>.dcm`` (DESIGN invariants 1 and 2). UIDs are
deterministic (``uids``), so building the same result again rewrites the same
files and a re-sent instance is de-duplicated by the PACS.

Only the SR is indispensable. A heat-map SEG or a Secondary Capture that
cannot be made for this source (a slide without a Frame of Reference, a grid
that does not fit its level, an undecodable key slice) is left out: the SR
and the other objects still go out, and the SR's summary says which object
was left out and why. A fault in the SR itself is a :class:`ReportError`
(permanent: building it again from the same result fails the same way).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from collections.abc import Callable
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

__all__ = ["build_datasets", "build_encoded", "build_reports", "encode", "write_atomic"]

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


def _optional(what: str, make: Callable[[], Dataset], job_id: str,
              omitted: list[str]) -> tuple[Dataset, bytes] | None:
    """Build and encode one optional object; on any fault note what was left out and why."""
    try:
        ds = make()
        return ds, encode(ds)
    except Exception as exc:  # noqa: BLE001 - an optional object never costs the result
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        logger.warning("job %s: %s left out: %s", job_id, what, type(exc).__name__)
        omitted.append(f"{what} was not produced: {reason}.")
        return None


def build_encoded(result: StudyResult, device: DeviceInfo, captures: bool = True) -> list[tuple[Dataset, bytes]]:
    """The SR, a SEG per heat map and (optionally) a Secondary Capture per finding, each with its bytes.

    The SR comes first; it names every optional object that could not be made.
    """
    if not result.findings:
        raise ReportError(f"job {result.job_id} has no findings to report")
    headers = read_headers(_all_sources(result))
    check_one_study(headers, result.study_uid)
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    sr_uids = dict.fromkeys(s.sop_instance_uid for f in result.findings for s in f.sources)
    sr_headers = [by_uid[uid] for uid in sr_uids]
    omitted: list[str] = []
    optional: list[tuple[Dataset, bytes] | None] = []
    for index, finding in enumerate(result.findings, start=1):
        heat_map = finding.heat_map
        if heat_map is not None:
            level = by_uid[heat_map.level_source.sop_instance_uid]
            optional.append(_optional(
                f"The heat map (Segmentation) of finding {index}",
                functools.partial(build_heatmap_seg, result, index, finding, device, level),
                result.job_id, omitted))
    if captures:
        for index, finding in enumerate(result.findings, start=1):
            optional.append(_optional(
                f"The secondary capture of finding {index}",
                functools.partial(build_capture, result, index, finding, device, by_uid), result.job_id, omitted))
    noted = dataclasses.replace(result, notes=tuple(result.notes) + tuple(omitted)) if omitted else result
    try:
        sr = build_sr(noted, device, sr_headers)
    except ReportError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # the same result fails the same way
        raise ReportError(f"cannot build the SR of job {result.job_id}: {exc}") from exc
    return [(sr, encode(sr))] + [item for item in optional if item is not None]


def build_datasets(result: StudyResult, device: DeviceInfo, captures: bool = True) -> list[Dataset]:
    """The SR, a SEG per heat map and (optionally) a Secondary Capture per finding, in that order."""
    return [ds for ds, _ in build_encoded(result, device, captures=captures)]


def build_reports(result: StudyResult, outbox_dir: Path, device: DeviceInfo, captures: bool = True) -> list[Path]:
    """Write every report object of ``result`` to ``outbox_dir/<SOP Instance UID>.dcm``; return the paths."""
    paths = []
    for ds, data in build_encoded(result, device, captures=captures):
        name = f"{check_uid(str(ds.SOPInstanceUID))}.dcm"
        paths.append(write_atomic(outbox_dir, name, data))
    logger.info("job %s: wrote %d report object(s) to the outbox", result.job_id, len(paths))
    return paths
