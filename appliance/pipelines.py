"""The pipelines a route can name, as objects: what each runs, and on which engine tasks.

A :class:`Pipeline` is the unit the worker runs for one job: ``name`` is the
value of a route's ``pipeline`` key (``[[routes]]``, :mod:`appliance.config`),
``tasks`` the engine tasks it loads (the scheduler places its jobs on a slot
where those engines can run), and :meth:`Pipeline.run` turns the job's stored
instances into a :class:`~appliance.findings.StudyResult`. The findings become
DICOM objects in one place for every pipeline (:func:`appliance.reports.build.build_reports`,
wired by :mod:`appliance.inference`).

:func:`registry` is the registry: one object per pipeline, built from the
configuration. Adding a pipeline is one class here and one entry there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from appliance.config import Config
from appliance.engine_cache import EngineCache
from appliance.findings import Pipeline as PipelineName
from appliance.findings import StudyResult
from appliance.jobs import Job
from appliance.mri.pipeline import job_instance_paths, run_breast_mri
from appliance.pathology.job import job_settings
from appliance.pathology.pipeline import run_dicom_series
from appliance.state import StateStore
from appliance.worker import PipelineFn, ProgressFn

__all__ = ["BreastMriPipeline", "PathologyPipeline", "Pipeline", "pipeline_functions", "pipeline_tasks", "registry"]


class Pipeline(Protocol):
    """One kind of analysis a route can send a study to."""

    #: the route's ``pipeline`` value, and the job's
    name: PipelineName
    #: the engine tasks :meth:`run` loads from the slot's :class:`~appliance.engine_cache.EngineCache`
    tasks: tuple[str, ...]

    def run(self, job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        """Analyse the job's series; ``progress(done, total)`` raises ``JobInterrupted`` when the job must stop."""
        ...


class PathologyPipeline:
    """A whole-slide image series: tiles encoded by ``pathology_tile``, pooled by ``pathology_slide``.

    Resumes from the embeddings checkpointed in ``<data_dir>/work/<job id>``
    (:func:`appliance.pathology.job.work_dir`); ``config`` gives ``[worker]`` batch size and
    memory budget and ``[pathology]`` (None: the pipeline's defaults).
    """

    name: PipelineName = "pathology"
    tasks: tuple[str, ...] = ("pathology_tile", "pathology_slide")

    def __init__(self, config: Config | None = None) -> None:
        self.config = config

    def run(self, job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        paths = job_instance_paths(store, job.series_uids)
        settings = job_settings(self.config, Path(store.path).parent, job.id)
        return run_dicom_series(paths, engines.get("pathology_tile"), engines.get("pathology_slide"),
                                job_id=job.id, progress=progress, settings=settings)


class BreastMriPipeline:
    """A breast DCE-MRI study: its phases mapped onto the model card's, scored by ``breast_mri``."""

    name: PipelineName = "breast_mri"
    tasks: tuple[str, ...] = ("breast_mri",)

    def run(self, job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        paths = job_instance_paths(store, job.series_uids)
        progress(0, 1)
        result = run_breast_mri(job.id, job.study_uid, paths, engines.get("breast_mri"), store=store)
        progress(1, 1)
        return result


def registry(config: Config | None = None) -> tuple[Pipeline, ...]:
    """The registry: every pipeline a route can name, configured from ``config``."""
    return (PathologyPipeline(config), BreastMriPipeline())


def pipeline_functions(registered: tuple[Pipeline, ...]) -> dict[str, PipelineFn]:
    """Pipeline name -> the callable the worker runs for its jobs."""
    return {p.name: p.run for p in registered}


def pipeline_tasks(registered: tuple[Pipeline, ...]) -> Mapping[str, tuple[str, ...]]:
    """Pipeline name -> the engine tasks it runs (the scheduler places a job where these engines can run)."""
    return {p.name: p.tasks for p in registered}
