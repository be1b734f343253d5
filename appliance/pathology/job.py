"""A slide job's settings and work directory (the job itself runs in :class:`appliance.pipelines.PathologyPipeline`)."""

from __future__ import annotations

from pathlib import Path

from appliance.config import Config
from appliance.pathology.pipeline import PathologySettings

__all__ = ["job_settings", "work_dir"]


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
