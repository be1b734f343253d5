"""The "AI result not available" report: an SR in the study saying why a job produced no result.

When a job fails for a reason in the study (:class:`~appliance.errors.StudyIncomplete`:
a phase missing, a protocol outside the model's time window, mismatched
slices), the radiologist must not wait for a result that never comes (DESIGN
invariant 8). This builds the same kind of document as a result
(:mod:`appliance.reports.sr`): a Comprehensive 3D SR holding a TID 1500
Measurement Report with the appliance as Device observer, but with no
measurement group; its Qualitative Evaluations hold the summary "AI result not
available" with the reason. It joins the study as a new series, complete and
UNVERIFIED, with deterministic UIDs (a re-run sends the same instance) and is
queued for the destinations like any result. The reason is the job's own
message: it names series and values of the study, nothing about the patient.

A route's ``failure_report = false`` turns it off.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from appliance.config import Config
from appliance.errors import ReportError
from appliance.findings import Pipeline
from appliance.jobs import Job
from appliance.reports import uids
from appliance.reports._source import with_type2
from appliance.reports.build import encode, write_atomic
from appliance.reports.sr import (
    QUALITATIVE_EVALUATIONS,
    SR_SERIES_NUMBER,
    UNVERIFIED_NOTE,
    VOCABULARY,
    DeviceInfo,
    _observation_context,
)
from appliance.state import StateStore

__all__ = ["NOT_AVAILABLE", "build_unavailable_sr", "unavailable_reporter", "write_unavailable"]

logger = logging.getLogger(__name__)

NOT_AVAILABLE = "AI result not available"
#: the UID "version" slot of these objects: one not-available report per job, whatever the engine
_UID_VERSION = "result-not-available"
_MAX_REASON = 900


def _summary(pipeline: str, reason: str) -> str:
    text = reason.strip() or "no reason recorded"
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON] + " ..."
    return (f"{NOT_AVAILABLE}: the {pipeline.replace('_', ' ')} analysis could not be run on this study.\n"
            f"Reason: {text}\n{UNVERIFIED_NOTE}")


def build_unavailable_sr(job_id: str, pipeline: Pipeline, reason: str, device: DeviceInfo,
                         headers: Sequence[Dataset]) -> hd.sr.Comprehensive3DSR:
    """The not-available SR of job ``job_id`` in the study of ``headers`` (one or more of its instances)."""
    if not headers:
        raise ReportError(f"job {job_id}: a not-available report needs at least one instance of the study")
    studies = {str(ds.StudyInstanceUID) for ds in headers}
    if len(studies) != 1:
        raise ReportError(f"job {job_id}: the instances given belong to {len(studies)} studies, not one")
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=codes.DCM.Summary, value=_summary(pipeline, reason), relationship_type="CONTAINS")])
    # TID 1500 with Qualitative Evaluations only (rows 6, 8 and 10 are absent: nothing was measured);
    # highdicom's MeasurementReport insists on a measurement group, so the root is assembled as it does
    report = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    language = hd.sr.LanguageOfContentItemAndDescendants(
        hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)"))
    procedure = hd.sr.CodeContentItem(name=codes.DCM.ProcedureReported, value=VOCABULARY[pipeline].procedure,
                                      relationship_type="HAS CONCEPT MOD")
    report.ContentSequence = hd.sr.ContentSequence(
        [*language, *_observation_context(device), procedure, container], is_root=False)
    return hd.sr.Comprehensive3DSR(
        evidence=[with_type2(ds) for ds in headers],
        content=report,
        series_instance_uid=uids.series_instance_uid(job_id, _UID_VERSION, "sr"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid(job_id, _UID_VERSION, "sr"),
        instance_number=1,
        **device.equipment(),
        institution_name=device.institution or None,
        series_description=f"{NOT_AVAILABLE} (unverified)",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )


def write_unavailable(job_id: str, pipeline: Pipeline, reason: str, device: DeviceInfo,
                      headers: Sequence[Dataset], outbox: Path) -> Path:
    """Build the not-available SR and write it to ``outbox/<SOP Instance UID>.dcm`` (durably)."""
    sr = build_unavailable_sr(job_id, pipeline, reason, device, headers)
    path = write_atomic(outbox, f"{uids.check_uid(str(sr.SOPInstanceUID))}.dcm", encode(sr))
    logger.info("job %s: wrote the not-available report", job_id)
    return path


def _study_headers(store: StateStore, job: Job, per_series: int = 1) -> list[Dataset]:
    """Headers of the first readable instance of each of the job's series (the SR's evidence)."""
    headers: list[Dataset] = []
    for series_uid in job.series_uids:
        found = 0
        for path in store.instances.paths(series_uid):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, InvalidDicomError):
                continue
            if str(ds.get("StudyInstanceUID", "")) == job.study_uid and "SOPClassUID" in ds:
                headers.append(ds)
                found += 1
                if found >= per_series:
                    break
    return headers


def _route_wants_report(config: Config, store: StateStore, job: Job) -> bool:
    """The ``failure_report`` option of the route that made the job (True when the route is unknown)."""
    indices = store.series.routes_of(job.series_uids)
    routes = [config.routes[i] for i in indices if 0 <= i < len(config.routes)]
    return all(route.failure_report for route in routes)


def unavailable_reporter(config: Config, store: StateStore,
                         deliver: Callable[[Job, Sequence[Path]], int]) -> Callable[[Job, str], None]:
    """``report(job, reason)``: write the not-available SR of a failed job and queue it for the destinations.

    It never raises: a report that cannot be made is logged (with the job id) and the job stays failed.
    """
    def report(job: Job, reason: str) -> None:
        try:
            if not _route_wants_report(config, store, job):
                logger.info("job %s: failure report turned off for its route", job.id)
                return
            if job.pipeline not in VOCABULARY:
                raise ReportError(f"pipeline {job.pipeline!r} has no report vocabulary")
            headers = _study_headers(store, job)
            device = DeviceInfo.from_serial(socket.gethostname()[:64] or "appliance", name=config.node.ae_title)
            from appliance.outbox import outbox_dir

            path = write_unavailable(job.id, job.pipeline, reason, device, headers,  # type: ignore[arg-type]
                                     outbox_dir(config.data_dir))
            rows = deliver(job, [path])
            logger.info("job %s: not-available report queued for %d destination(s)", job.id, rows)
        except Exception:  # reporting a failure must never stop the worker
            logger.exception("job %s: the not-available report could not be made", job.id)

    return report
