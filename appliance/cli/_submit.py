"""``appliance submit SLIDE``: score one slide file with the active pathology engines."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from appliance.cli._options import ConfigOption, config_from
from appliance.errors import JobFailed
from appliance.findings import task_card
from engines.cards import PathologySlideCard


def _summary(result: Any, labels: list[str]) -> dict[str, Any]:
    f = result.findings[0]
    label = (labels[1] if f.positive else labels[0]) if len(labels) == 2 else ("positive" if f.positive else "negative")
    return {
        "job_id": result.job_id,
        "probability": round(f.probability, 4),
        "threshold": f.threshold,
        "class": label,
        "tiles_scored": f.tiles_scored,
        "top_tiles": [{"x": t.x, "y": t.y, "score": round(t.score, 4)} for t in f.top_tiles],
        "engine": f"{f.engine.task} {f.engine.version} ({f.engine.precision})",
        "demo_model": f.engine.demo,
        "notes": list(result.notes),
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def submit(
        slide: Annotated[Path, typer.Argument(help="Slide file (SVS, NDPI, MRXS, tiled TIFF) or a folder of DICOM WSI instances.")],
        config: ConfigOption = None,
        mpp: Annotated[Optional[float], typer.Option(help="Microns per pixel of level 0, when the file lacks it.")] = None,  # noqa: UP007
        batch_size: Annotated[int, typer.Option(min=1, help="Tiles per tile-engine call.")] = 32,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Run the pathology pipeline on one slide with the active engines and print the result."""
        from engines.registry import Registry

        from appliance.pathology import PathologySettings, run_dicom_series, run_slide_file

        if not slide.exists():
            raise JobFailed(f"slide {slide} does not exist")
        cfg = config_from(config)
        registry = Registry(cfg.data_dir / "engines", cfg.trusted_keys_dir, **cfg.engine_options)
        tile = registry.load_active("pathology_tile", cfg.engines.cpu_threads)
        slide_engine = registry.load_active("pathology_slide", cfg.engines.cpu_threads)
        job_id = f"submit-{uuid.uuid4().hex[:12]}"
        settings = PathologySettings(batch_size=batch_size)
        columns = (TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        try:
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("tiles", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                if slide.is_dir() or slide.suffix.lower() == ".dcm":
                    files = sorted(slide.glob("*.dcm")) if slide.is_dir() else [slide]
                    result = run_dicom_series(files, tile, slide_engine, job_id=job_id, progress=progress,
                                              settings=settings)
                else:
                    result = run_slide_file(slide, tile, slide_engine, job_id=job_id, mpp=mpp,
                                            progress=progress, settings=settings)
        finally:
            tile.close()
            slide_engine.close()
        labels = list(task_card(slide_engine.manifest, PathologySlideCard).labels)
        summary = _summary(result, labels)
        if as_json:
            typer.echo(json.dumps(summary, sort_keys=True))
            return
        typer.echo(f"{slide.name}: {summary['class']} (probability {summary['probability']:.3f}, "
                   f"threshold {summary['threshold']:.3f}) from {summary['tiles_scored']} tissue tiles")
        typer.echo(f"engine: {summary['engine']}" + (" — demo model, not for clinical use" if summary["demo_model"] else ""))
        for t in summary["top_tiles"]:
            typer.echo(f"  tile x={t['x']} y={t['y']} score={t['score']:.3f}")
