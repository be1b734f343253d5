"""Slide jobs resume from their saved tile embeddings: same tiles, same order, same result."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from appliance.pathology import PathologySettings, run_dicom_series
from appliance.worker import JobInterrupted
from tests.pathology.conftest import SlideFiles
from tests.pathology.tiny_engines import TinyEngine, tiny_engines

BATCH = 8


def _settings(work: Path | None, **kw: object) -> PathologySettings:
    return PathologySettings(batch_size=BATCH, work_dir=work, checkpoint_seconds=0.0, **kw)  # type: ignore[arg-type]


def _interrupt_at(fraction: float) -> tuple[list[int], object]:
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done >= fraction * total:
            raise JobInterrupted("preempted for an urgent study")

    return seen, progress


def _run(slide: SlideFiles, engines: tuple[TinyEngine, TinyEngine], settings: PathologySettings,
         progress: object = None, job: str = "job-resume") -> object:
    return run_dicom_series(slide.jpeg, *engines, job_id=job, progress=progress, settings=settings)  # type: ignore[arg-type]


def test_an_interrupted_job_resumes_from_its_saved_tiles_with_the_same_result(
    tumour_slide: SlideFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference = _run(tumour_slide, tiny_engines(64, 1.0), _settings(None))
    work = tmp_path / "work" / "job-resume"
    engines = tiny_engines(64, 1.0)
    seen, progress = _interrupt_at(0.6)
    with pytest.raises(JobInterrupted):
        _run(tumour_slide, engines, _settings(work), progress)
    header = json.loads((work / "embeddings.json").read_text())
    total = header["total"]
    assert header["done"] == seen[-1] and header["done"] >= 0.6 * total, header
    first_calls = engines[0].calls

    engines[0].calls = 0
    with caplog.at_level(logging.INFO, logger="appliance.pathology.pipeline"):
        resumed = _run(tumour_slide, engines, _settings(work))
    assert f"resuming from tile {header['done']} of {total}" in caplog.text
    assert first_calls == header["done"] // BATCH
    assert engines[0].calls == -(-(total - header["done"]) // BATCH) < 0.5 * -(-total // BATCH)
    ref_f, got_f = reference.findings[0], resumed.findings[0]  # type: ignore[attr-defined]
    assert got_f.probability == ref_f.probability
    np.testing.assert_array_equal(got_f.heat_map.scores, ref_f.heat_map.scores)
    assert got_f.top_tiles == ref_f.top_tiles
    assert not work.exists(), "the saved embeddings are removed once the result is made"


@pytest.mark.parametrize("change", ["engine", "tiles", "job", "header", "data"])
def test_saved_tiles_that_do_not_match_are_discarded(
    tumour_slide: SlideFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    work = tmp_path / "work" / "job-resume"
    engines = tiny_engines(64, 1.0)
    _, progress = _interrupt_at(0.5)
    with pytest.raises(JobInterrupted):
        _run(tumour_slide, engines, _settings(work), progress)
    settings, job = _settings(work), "job-resume"
    if change == "engine":
        engines[0].manifest = dataclasses.replace(engines[0].manifest, version="0.0.2")
    elif change == "tiles":
        settings = dataclasses.replace(settings, min_tissue=0.5)
    elif change == "job":
        header = json.loads((work / "embeddings.json").read_text())
        (work / "embeddings.json").write_text(json.dumps({**header, "job_id": "another-job"}))
    elif change == "header":
        (work / "embeddings.json").write_text("{not json")
    else:
        (work / "embeddings.f32").write_bytes(b"\0" * 64)
    engines[0].calls = 0
    with caplog.at_level(logging.WARNING, logger="appliance.pathology._embeddings"):
        result = _run(tumour_slide, engines, settings, job=job)
    assert "saved tile embeddings discarded" in caplog.text
    assert "resuming" not in caplog.text
    assert engines[0].calls == -(-result.findings[0].tiles_scored // BATCH)  # type: ignore[attr-defined]


def test_a_permanent_failure_removes_the_saved_tiles(tumour_slide: SlideFiles, tmp_path: Path) -> None:
    work = tmp_path / "work" / "job-fail"
    tile, _ = tiny_engines(64, 1.0)
    _, slide = tiny_engines(64, 1.0, max_bag=10, pooling=False)  # refuses any real bag
    with pytest.raises(Exception, match="accepts bags of at most 10 tiles"):
        _run(tumour_slide, (tile, slide), _settings(work), job="job-fail")
    assert not work.exists()


def test_without_a_work_dir_a_bag_beyond_the_budget_goes_to_a_disk_backed_array(
    tumour_slide: SlideFiles, caplog: pytest.LogCaptureFixture
) -> None:
    in_memory = _run(tumour_slide, tiny_engines(64, 1.0), _settings(None))
    with caplog.at_level(logging.INFO, logger="appliance.pathology._embeddings"):
        on_disk = _run(tumour_slide, tiny_engines(64, 1.0), _settings(None, memory_budget_mb=0))
    assert "go to a disk-backed array" in caplog.text
    assert on_disk.findings[0].probability == in_memory.findings[0].probability  # type: ignore[attr-defined]
