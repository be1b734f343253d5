"""``appliance demo``: the appliance end to end on this machine, with demo engines (not for clinical use)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from appliance.cli._extras import require_export_extra


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: unwinds the demo, which stops its appliance and its PACS (no orphaned Orthanc)."""
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the demo keeps engines, state and the PACS (reused by the next run).")] = Path("./var/demo"),
        keep_running: Annotated[bool, typer.Option("--keep-running", help="Keep the appliance and the dashboard running after the results; Ctrl-C stops.")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for both reports in the PACS.")] = 600.0,
        stable_seconds: Annotated[float, typer.Option("--stable-seconds", help="Quiet time after which a series counts as complete.")] = 3.0,
        quick_engines: Annotated[bool, typer.Option("--quick-engines", hidden=True, help="Tiny engines that train in seconds (tests).")] = False,
        no_orthanc: Annotated[bool, typer.Option("--no-orthanc", help="Use the built-in storage SCP as the PACS even when Orthanc is installed.")] = False,
    ) -> None:
        """Make demo engines, start a local PACS and the appliance, send a synthetic slide and DCE study, show the results.

        Exits 0 only when both Structured Reports arrived in the PACS. The engines are demo models, not for clinical use.
        """
        require_export_extra("demo")  # the demo engines are trained and exported here
        from appliance.demo.run import run_demo

        logging.getLogger().setLevel(logging.WARNING)  # the demo shows its own progress
        signal.signal(signal.SIGTERM, _interrupt)
        outcome = run_demo(data_dir, keep_running=keep_running, timeout=timeout, stable_seconds=stable_seconds,
                           quick_engines=quick_engines, prefer_orthanc=not no_orthanc)
        if not outcome.ok:
            raise typer.Exit(1)
