"""The breast DCE-MRI pipeline: assemble, preprocess, clinical vector, infer, kinetics, result.

Input: the instances of the job's series (paths in the spool, or datasets).
Output: an :class:`appliance.findings.StudyResult` with one ``breast_mri``
finding: the probability of axillary lymph-node metastasis, the engine's
operating threshold, the engine identity, the source instances and the
lesion's kinetic curve type. An incomplete or inconsistent study raises
:class:`appliance.errors.StudyIncomplete` whose message is the job's reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from appliance.errors import JobFailed, StudyIncomplete
from appliance.findings import EngineIdentity, Finding, SourceImage, StudyResult, task_card
from appliance.mri._assembly import DERIVED_DESCRIPTIONS, Dce4D, assemble
from appliance.mri._clinical import clinical_vector, study_values
from appliance.mri._kinetics import lesion_kinetics
from appliance.mri._preprocess import ModelGeometry, Prepared, preprocess
from appliance.mri._timing import PhaseSchedule, map_to_model
from appliance.state import StateStore
from engines.cards import BreastMriCard, ModelCard

__all__ = ["BreastMriInput", "job_instance_paths", "prepare_inputs", "run_breast_mri"]

logger = logging.getLogger(__name__)

PIPELINE: Literal["breast_mri"] = "breast_mri"


class _Manifest(Protocol):
    """What the pipeline reads of ``engines.manifest.Manifest`` (frozen: read-only members)."""

    @property
    def task(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def vendor(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def demo(self) -> bool: ...
    @property
    def card(self) -> ModelCard: ...


class _Engine(Protocol):
    @property
    def manifest(self) -> _Manifest: ...

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class BreastMriInput:
    """What goes into the engine for one study, and what it was made from."""

    def __init__(self, study: Dce4D, prepared: Prepared, clinical: np.ndarray, values: dict[str, float | None],
                 notes: list[str], first: Dataset, phase_mapping: tuple[str, ...] = ()) -> None:
        self.study, self.prepared, self.clinical = study, prepared, clinical
        self.values, self.notes, self.first = values, notes, first
        self.phase_mapping = phase_mapping  #: one line per model phase: the study phases and times it came from

    def engine_inputs(self) -> dict[str, np.ndarray]:
        """``dce`` [1, phases, z, y, x] and ``clinical`` [1, 2 * variables], float32."""
        return {"dce": self.prepared.dce[np.newaxis].astype(np.float32),
                "clinical": self.clinical[np.newaxis].astype(np.float32)}


def _read(items: Sequence[Path | Dataset | tuple[Path | None, Dataset]]) -> list[tuple[Path | None, Dataset]]:
    pairs: list[tuple[Path | None, Dataset]] = []
    for item in items:
        if isinstance(item, tuple):
            pairs.append(item)
        elif isinstance(item, Dataset):
            pairs.append((None, item))
        else:
            try:
                pairs.append((Path(item), pydicom.dcmread(item)))
            except Exception as exc:  # pydicom raises several types for a damaged file
                raise StudyIncomplete(f"instance file {Path(item).name} cannot be read as DICOM: {exc}") from exc
    if not pairs:
        raise StudyIncomplete("the job has no instances")
    return pairs


def prepare_inputs(items: Sequence[Path | Dataset | tuple[Path | None, Dataset]], card: BreastMriCard,
                   store: StateStore | None = None, phase_rules: Sequence[str] | None = None,
                   philips_scale: bool = False) -> BreastMriInput:
    """Assemble the study, map its phases onto the model's, preprocess, and build the clinical vector.

    A card with ``post_contrast_times_s`` has the study's phases mapped by time
    (:mod:`appliance.mri._timing`); an older card with only ``phase_count`` needs
    exactly that many phases. ``philips_scale`` (or the card's
    ``philips_scale_slope``) applies Philips' private Scale Slope.
    """
    geometry = ModelGeometry.from_card(card)
    schedule = PhaseSchedule.from_card(card)
    pairs = _read(items)
    study = assemble(pairs, phase_count=None if schedule else geometry.phase_count,
                     phase_rules=phase_rules or card.phase_rules,
                     philips_scale=philips_scale or card.philips_scale_slope,
                     derived_descriptions=card.derived_series or DERIVED_DESCRIPTIONS)
    mapping: tuple[str, ...] = ()
    if schedule is not None:
        study, _ = map_to_model(study, schedule)
        mapping = study.phase_labels
    prepared = preprocess(study, geometry)
    first = pairs[0][1]
    values, notes = study_values(first, store)
    variables = card.clinical_variables
    vector = clinical_vector(values, variables)
    missing = [v for v in variables if values.get(v) is None]
    if missing:
        notes.append(f"clinical variables missing (indicator set): {', '.join(missing)}")
    return BreastMriInput(study, prepared, vector, values, notes, first, mapping)


def job_instance_paths(store: StateStore, series_uids: Sequence[str]) -> list[Path]:
    """The spool files of every instance of the job's series (from the state store's ``instances`` rows)."""
    paths: list[Path] = []
    for uid in series_uids:
        found = store.instances.paths(uid)
        if not found:
            raise StudyIncomplete(f"series {uid}: no stored instances")
        paths.extend(found)
    return paths


def _probability(outputs: Mapping[str, np.ndarray]) -> float:
    if "probability" not in outputs:
        raise JobFailed(f"engine returned {sorted(outputs)}, not 'probability'")
    value = float(np.asarray(outputs["probability"]).reshape(-1)[0])
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise JobFailed(f"engine returned probability {value}, outside [0, 1]")
    return value


def run_breast_mri(
    job_id: str,
    study_uid: str,
    items: Sequence[Path | Dataset | tuple[Path | None, Dataset]],
    engine: _Engine,
    store: StateStore | None = None,
    phase_rules: Sequence[str] | None = None,
    philips_scale: bool = False,
) -> StudyResult:
    """Run one study through the engine; ``items`` are the job's instance files (or datasets)."""
    card = task_card(engine.manifest, BreastMriCard)
    prepared = prepare_inputs(items, card, store, phase_rules, philips_scale)
    study = prepared.study
    logger.info("job %s: %s encoding, %d phases, grid %s", job_id, study.encoding, study.array.shape[0],
                "x".join(map(str, study.array.shape[1:])))
    probability = _probability(engine.infer(prepared.engine_inputs()))
    threshold = card.threshold
    kinetics = lesion_kinetics(prepared.prepared.dce, prepared.prepared.mask) if card.kinetics else None
    notes = [*study.notes, *prepared.notes]
    if kinetics is not None:
        notes.append(f"lesion kinetics: {kinetics.curve} ({kinetics.voxels} voxels, enhancement "
                     + ", ".join(f"{e:.2f}" for e in kinetics.enhancement) + ")")
    elif card.kinetics:
        notes.append("no enhancing lesion found for kinetic analysis")
    sources = tuple(
        SourceImage(study_uid=str(prepared.first.get("StudyInstanceUID", study_uid)), series_uid=s.series_uid,
                    sop_instance_uid=s.sop_instance_uid, sop_class_uid=s.sop_class_uid, path=s.path or Path())
        for s in study.sources
    )
    finding = Finding(
        pipeline=PIPELINE, probability=probability, threshold=threshold, engine=EngineIdentity.of(engine.manifest), sources=sources,
        kinetic_curve=kinetics.curve if kinetics is not None else None, phases=prepared.phase_mapping,
    )
    logger.info("job %s: probability %.3f at threshold %.3f", job_id, probability, threshold)
    return StudyResult(job_id=job_id, study_uid=study_uid, findings=(finding,), notes=tuple(notes))
