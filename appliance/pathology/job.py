"""A slide job of the worker: the series' stored instances, the configured settings, the job's work directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.findings import StudyResult
from appliance.jobs import Job
from appliance.pathology.pipeline import PathologySettings, Progress, run_dicom_series

__all__ = ["job_settings", "run_job", "work_dir"]


def work_dir(data_dir: Path, job_id: str) -> Path:
    """``<data_dir>/work/<job_id>/``: where a slide job keeps what lets it resume."""
    return Path(data_dir) / "work" / job_id


def job_settings(config: Config | None, data_dir: Path, job_id: str) -> PathologySettings:
    """The pipeline settings of one job: ``[worker]`` batch size and memory budget, ``[pathology]``."""
    if config is None:
        return PathologySettings(work_dir=work_dir(data_dir, job_id))
    return PathologySettings(
        batch_size=config.worker.batch_size, memory_budget_mb=config.worker.memory_budget_mb,
        optical_path=config.pathology.optical_path, work_dir=work_dir(data_dir, job_id),
    )


def run_job(job: Job, store: Any, engines: Any, progress: Progress, config: Config | None = None) -> StudyResult:
    """Score the slide series of ``job`` with the active pathology engines (``engines.get(task)``).

    ``store`` is the job's ``StateStore``: its database lives in the data directory, which holds the
    job's work directory.
    """
    from appliance.mri.pipeline import job_instance_paths

    paths = job_instance_paths(store, job.series_uids)
    settings = job_settings(config, Path(store.path).parent, job.id)
    return run_dicom_series(paths, engines.get("pathology_tile"), engines.get("pathology_slide"), job_id=job.id,
                            progress=progress, settings=settings)
