"""The result as a Comprehensive 3D SR holding a TID 1500 Measurement Report (PS3.16 TID 1500, 1501).

Built with highdicom's template classes, never by hand. The appliance is the
Device observer (TID 1004); each finding is one "Measurements and Qualitative
Evaluations" group (TID 1501) with a tracking identifier and UID, the engine as
algorithm identification (TID 4019), finding type and site codes, the
probability as a numeric measurement and the class at the engine's operating
threshold as a qualitative evaluation. The engine is also recorded in the
Contributing Equipment Sequence (PS3.3 C.12.1.1.5) as Processing Equipment
with a Device UID derived from its manifest hash (IHE AI Results, RAD TF-3
6.5.3.x "AI Result Encoding"). The document is complete but unverified: a
machine result that a physician has not signed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from appliance.errors import ReportError
from appliance.findings import EngineIdentity, Finding, Pipeline, StudyResult
from appliance.reports import uids
from appliance.reports._source import with_plane_geometry, with_type2

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
#: Unit of a probability: the UCUM annotation ``{probability}`` (dimensionless).
PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
#: TID 1500 row 12 "Qualitative Evaluations" (UMLS code since CP-2071; formerly DCM 126010).
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
DEMO_DISCLAIMER = "DEMONSTRATION MODEL - NOT FOR CLINICAL USE."
UNVERIFIED_NOTE = "Unverified machine result; it must be reviewed by a physician."
#: Concept name of the text items saying which study phases made each model phase (breast DCE-MRI)
CONTRAST_PHASE = codes.DCM.ContrastPhase  # (109058, DCM, "Contrast Phase")


class Equipment(TypedDict):
    """General Equipment attributes (PS3.3 C.7.5.1) as highdicom's constructor keywords."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


@dataclass(frozen=True)
class DeviceInfo:
    """The appliance as a device: Device Observer (TID 1004) and General Equipment (PS3.3 C.7.5.1)."""

    uid: str  #: Device Observer UID (stable for this box)
    name: str = "APPLIANCE"  #: Device Observer Name (the node's AE title, say)
    manufacturer: str = "Cancer Imaging Appliance Project"
    model: str = "Cancer Imaging Appliance"
    serial: str = "0000"
    software_version: str = "0.1.0"
    institution: str = ""  #: empty: not written

    def __post_init__(self) -> None:
        uids.check_uid(self.uid)
        for field_name in ("name", "manufacturer", "model", "serial", "software_version"):
            value = getattr(self, field_name)
            if not value or len(value) > 64 or "\\" in value:
                raise ReportError(f"device {field_name} {value!r} must be 1-64 characters without a backslash")

    def equipment(self) -> Equipment:
        """General Equipment (PS3.3 C.7.5.1) of every object the appliance writes, as highdicom keywords."""
        return Equipment(manufacturer=self.manufacturer, manufacturer_model_name=self.model,
                         software_versions=self.software_version, device_serial_number=self.serial)

    @classmethod
    def from_serial(cls, serial: str, name: str = "APPLIANCE", software_version: str = "0.1.0") -> DeviceInfo:
        """A device whose UID derives from its serial number."""
        return cls(uid=uids.appliance_uid(serial), name=name, serial=serial, software_version=software_version)


@dataclass(frozen=True)
class Vocabulary:
    """The codes that describe one pipeline's finding."""

    procedure: Code  #: TID 1500 Procedure Reported
    finding_type: Code  #: TID 1501 Finding
    finding_site: Code  #: TID 1501 Finding Site
    measurement: Code  #: the probability's concept name
    title: str  #: words for the text summary


VOCABULARY: Mapping[Pipeline, Vocabulary] = {
    "pathology": Vocabulary(
        procedure=codes.DCM.SlideMicroscopyPathologyImaging,  # (112702, DCM, "Slide Microscopy")
        finding_type=codes.SCT.Carcinoma,  # (1187425009, SCT, "Carcinoma")
        finding_site=codes.SCT.Breast,  # (76752008, SCT, "Breast")
        measurement=codes.DCM.ProbabilityOfCancer,  # (111047, DCM, "Probability of cancer")
        title="Breast carcinoma on whole-slide image",
    ),
    "breast_mri": Vocabulary(
        procedure=codes.SCT.MagneticResonanceImagingOfBreast,  # (241615005, SCT)
        finding_type=codes.SCT.Metastasis,  # (128462008, SCT, "Metastasis")
        finding_site=codes.SCT.AxillaryLymphNode,  # (68171009, SCT, "Axillary lymph node")
        measurement=codes.DCM.Probability,  # (122157, DCM, "Probability")
        title="Axillary lymph-node metastasis on breast DCE-MRI",
    ),
}


def result_version(result: StudyResult) -> str:
    """One string naming every engine in the result: the UID seed's "engine version"."""
    return "+".join(sorted({f"{f.engine.task}={f.engine.version}" for f in result.findings}))


def engine_equipment(engine: EngineIdentity, device: DeviceInfo) -> hd.ContributingEquipment:
    """Contributing Equipment item for an engine: Processing Equipment (DCM 109102) with its Device UID."""
    item = hd.ContributingEquipment(
        manufacturer=engine.manufacturer[:64] or "unknown",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=engine.name[:64],
        software_versions=engine.version[:64],
        device_serial_number=engine.manifest_sha256[:16],
        station_name=device.name[:16],
        contribution_description=f"AI inference engine {engine.task} {engine.version} ({engine.precision})"[:1024],
    )
    item.DeviceUID = uids.device_uid(engine.manifest_sha256)
    return item


def summary_text(result: StudyResult) -> str:
    """The human-readable summary for viewers that only show text."""
    lines = []
    for index, finding in enumerate(result.findings, start=1):
        vocab = VOCABULARY[finding.pipeline]
        verdict = "POSITIVE" if finding.positive else "negative"
        line = (
            f"Finding {index}: {vocab.title}: {verdict} "
            f"(probability {finding.probability:.3f}, operating threshold {finding.threshold:.3f}; "
            f"engine {finding.engine.name} {finding.engine.version}, {finding.engine.precision})."
        )
        if finding.kinetic_curve:
            line += f" Dominant kinetic curve: {finding.kinetic_curve}."
        if finding.tiles_scored:
            line += f" Tiles scored: {finding.tiles_scored}."
        if finding.top_tiles:
            best = max(finding.top_tiles, key=lambda t: t.score)
            line += f" Highest tile score {best.score:.3f} at x={best.x}, y={best.y}."
        lines.append(line)
    lines.extend(result.notes)
    if any(f.engine.demo for f in result.findings):
        lines.append(DEMO_DISCLAIMER)
    lines.append(UNVERIFIED_NOTE)
    return "\n".join(lines)


def _measurement_group(
    result: StudyResult, index: int, finding: Finding, headers: Mapping[str, Dataset]
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    vocab = VOCABULARY[finding.pipeline]
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.engine.name[:64], version=finding.engine.version[:64], manufacturer=finding.engine.manufacturer[:64]
    )
    refs = [(s.sop_class_uid, s.sop_instance_uid) for s in finding.sources]
    refs = list(dict.fromkeys(refs))
    for _, sop_uid in refs:
        if sop_uid not in headers:
            raise ReportError(f"source instance {sop_uid} of finding {index} was not read")
    measurement = hd.sr.Measurement(
        name=vocab.measurement,
        value=round(float(finding.probability), 6),
        unit=PROBABILITY_UNIT,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(vocab.finding_site)],
        referenced_images=[hd.sr.SourceImageForMeasurement(c, i) for c, i in refs],
    )
    evaluation = hd.sr.QualitativeEvaluation(
        name=vocab.finding_type, value=codes.SCT.Present if finding.positive else codes.SCT.Absent
    )
    tracking = hd.sr.TrackingIdentifier(
        uid=uids.tracking_uid(result.job_id, result_version(result), index),
        identifier=f"{finding.pipeline} finding {index}",
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=vocab.finding_type,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(vocab.finding_site)],
        measurements=[measurement],
        qualitative_evaluations=[evaluation],
        source_images=[hd.sr.SourceImageForMeasurementGroup(c, i) for c, i in refs],
    )


def _observation_context(device: DeviceInfo) -> hd.sr.ObservationContext:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device.uid,
            name=device.name,
            manufacturer_name=device.manufacturer,
            model_name=device.model,
            serial_number=device.serial,
        ),
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _summary_container(text: str, phases: Sequence[str] = ()) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the summary, then one Contrast Phase text per model phase."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=codes.DCM.Summary, value=text, relationship_type="CONTAINS")]
        + [hd.sr.TextContentItem(name=CONTRAST_PHASE, value=line[:1024], relationship_type="CONTAINS")
           for line in phases]
    )
    return container


def build_sr(result: StudyResult, device: DeviceInfo, headers: Sequence[Dataset]) -> hd.sr.Comprehensive3DSR:
    """The SR of ``result``; ``headers`` are the source instances' headers (evidence, image library)."""
    if not result.findings:
        raise ReportError(f"job {result.job_id} has no findings to report")
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    pipelines = list(dict.fromkeys(f.pipeline for f in result.findings))
    groups = [_measurement_group(result, i, f, by_uid) for i, f in enumerate(result.findings, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(device),
        procedure_reported=[VOCABULARY[p].procedure for p in pipelines],
        imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
        ),
        referenced_images=[with_plane_geometry(with_type2(ds)) for ds in headers],
    )
    phases = [f"model phase {line}" for f in result.findings for line in f.phases]
    report[0].ContentSequence.append(_summary_container(summary_text(result), phases))
    version = result_version(result)
    engines = list({f.engine.manifest_sha256: f.engine for f in result.findings}.values())
    evidence = [with_type2(ds) for ds in headers]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.series_instance_uid(result.job_id, version, "sr"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid(result.job_id, version, "sr"),
        instance_number=1,
        **device.equipment(),
        institution_name=device.institution or None,
        series_description="AI result (unverified)",
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[engine_equipment(e, device) for e in engines],
    )
    logger.info("built SR for job %s with %d finding(s)", result.job_id, len(groups))
    return sr
