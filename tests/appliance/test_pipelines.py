"""The pipeline registry: one object per pipeline a route can name, with the engine tasks it runs."""

from __future__ import annotations

import typing
from pathlib import Path

from appliance.config import RouteSettings, parse_config
from appliance.inference import worker_component
from appliance.pipelines import BreastMriPipeline, PathologyPipeline, pipeline_functions, pipeline_tasks, registry
from appliance.state import StateStore


def test_every_route_pipeline_has_one_registered_object() -> None:
    names = typing.get_args(RouteSettings.model_fields["pipeline"].annotation)
    registered = registry()
    assert sorted(p.name for p in registered) == sorted(names)
    assert pipeline_tasks(registered) == {"pathology": ("pathology_tile", "pathology_slide"),
                                          "breast_mri": ("breast_mri",)}
    functions = pipeline_functions(registered)
    assert isinstance(functions["breast_mri"].__self__, BreastMriPipeline)  # type: ignore[attr-defined]


def test_the_worker_runs_the_registered_objects_configured(tmp_path: Path) -> None:
    config = parse_config({"node": {"data_dir": str(tmp_path)}, "worker": {"batch_size": 7}})
    store = StateStore.for_data_dir(tmp_path)
    try:
        scheduler = worker_component(config, store)
        pathology = scheduler.pipelines["pathology"].__self__  # type: ignore[attr-defined]
        assert isinstance(pathology, PathologyPipeline) and pathology.config is config
        assert scheduler.placement.tasks["breast_mri"] == ("breast_mri",)
    finally:
        store.close()
