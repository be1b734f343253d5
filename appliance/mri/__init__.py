"""Breast DCE-MRI: 4-D assembly, preprocessing, clinical variables and the pipeline."""

from appliance.mri._assembly import Dce4D, SourceRef, assemble
from appliance.mri._clinical import (
    CLINICAL_VARIABLES,
    ClinicalValueError,
    clinical_vector,
    get_clinical,
    set_clinical,
)
from appliance.mri._kinetics import Kinetics, lesion_kinetics
from appliance.mri._preprocess import ModelGeometry, Prepared, preprocess
from appliance.mri._timing import PhaseInfo, PhasePlan, PhaseSchedule, map_to_model, plan_phases
from appliance.mri.pipeline import BreastMriInput, job_instance_paths, prepare_inputs, run_breast_mri

__all__ = [
    "CLINICAL_VARIABLES",
    "BreastMriInput",
    "ClinicalValueError",
    "Dce4D",
    "Kinetics",
    "ModelGeometry",
    "PhaseInfo",
    "PhasePlan",
    "PhaseSchedule",
    "Prepared",
    "SourceRef",
    "assemble",
    "clinical_vector",
    "get_clinical",
    "job_instance_paths",
    "lesion_kinetics",
    "map_to_model",
    "plan_phases",
    "prepare_inputs",
    "preprocess",
    "run_breast_mri",
    "set_clinical",
]
