"""``appliance demo``: the whole appliance on one machine, end to end, with demo engines.

Makes (or reuses) the demo engines, starts a local PACS and the appliance on
free loopback ports, sends a synthetic slide and a synthetic DCE study as a
scanner would, waits until both Structured Reports are in the PACS and
returns one row per study. Studies are named by opaque job id, never by a
patient attribute. The engines are demo models, not for clinical use.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.config import Config, parse_config
from appliance.demo._pacs import APPLIANCE_AE_TITLE, LocalPacs, SrArrival, free_port, start_pacs
from appliance.demo._quiet import output_to_log
from appliance.demo._scanner import SCANNER_AE_TITLE, DemoStudy, send_study, write_dce_study, write_slide_study
from appliance.service import Service
from appliance.state import JobState
from appliance.web import scrub

__all__ = ["DEMO_NOTICE", "DEFAULT_DATA_DIR", "DemoOutcome", "DemoRow", "demo_config", "ensure_engines",
           "results_table", "run_demo", "running_demo", "wait_for_results"]

logger = logging.getLogger(__name__)

DEMO_NOTICE = "demo models, not for clinical use"
DEFAULT_DATA_DIR = Path("./var/demo")
DEMO_LOG = "demo.log"  #: under the data directory: what the export stage prints
NODE_AE_TITLE = APPLIANCE_AE_TITLE
_LABELS = {"pathology": ("no tumour", "tumour"), "breast_mri": ("node negative", "node positive")}
_POLL_SECONDS = 0.25


@dataclass
class DemoRow:
    """One study's outcome, by opaque job id."""

    job_id: str
    pipeline: str
    state: str
    finding: str = ""
    probability: float | None = None
    latency_s: float | None = None
    location: str = ""
    reason: str = ""

    @property
    def arrived(self) -> bool:
        return bool(self.location)


@dataclass
class DemoOutcome:
    rows: list[DemoRow]
    pacs: str
    dashboard: str
    stable_seconds: float
    message: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.arrived for r in self.rows) and not self.message


def demo_config(data_dir: Path, node_port: int, pacs: LocalPacs, stable_seconds: float = 3.0, web_port: int = 0) -> Config:
    """The appliance configuration of the demo, built in code: loopback only, one PACS, two routes."""
    return parse_config(
        {
            "node": {"ae_title": NODE_AE_TITLE, "host": "127.0.0.1", "port": node_port, "data_dir": str(data_dir),
                     "min_free_bytes": 50_000_000},
            "peers": [{"ae_title": SCANNER_AE_TITLE, "host": "127.0.0.1"}],
            "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
            "routes": [
                {"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": stable_seconds},
                {"pipeline": "breast_mri", "match": {"Modality": "MR"}, "stable_seconds": stable_seconds},
            ],
            "delivery": {"initial_backoff_seconds": 1.0, "max_backoff_seconds": 5.0},
            "web": {"host": "127.0.0.1", "port": web_port},
        },
        source="the demo",
    )


def ensure_engines(data_dir: Path, trusted_keys_dir: Path, console: Console, quick: bool = False) -> dict[str, str]:
    """Train, export and install the demo engines unless cached under ``data_dir``; Rich progress.

    What the exporters and the calibrator print goes to ``data_dir/demo.log``, not the terminal.
    """
    from export.demo import QUICK_GATE, install_demo
    from export.train import QUICK_SIZES, DemoSizes

    kwargs: dict[str, Any] = {"sizes": QUICK_SIZES, "gate": QUICK_GATE} if quick else {"sizes": DemoSizes()}
    with output_to_log(data_dir / DEMO_LOG, console), \
            Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                     transient=True, redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task(f"demo engines ({DEMO_NOTICE})", total=None)

        def say(stage: str, message: str) -> None:
            progress.update(task, description=f"[bold]{stage}[/]: {message}")

        return install_demo(data_dir, trusted_keys_dir, progress=say, **kwargs)


@contextmanager
def running_demo(data_dir: Path, stable_seconds: float = 3.0, prefer_orthanc: bool = True) -> Iterator[tuple[Service, LocalPacs, str]]:
    """A started local PACS and appliance service; yields (service, pacs, dashboard URL); stops both."""
    pacs = start_pacs(data_dir / "pacs", prefer_orthanc, NODE_AE_TITLE)
    service: Service | None = None
    try:
        config = demo_config(data_dir, free_port(), pacs, stable_seconds)
        service = Service(config)
        service.start()
        web = next((c for c in service.components if c.name == "web"), None)
        url = f"http://127.0.0.1:{getattr(web, 'port', 0)}/" if web is not None else ""
        yield service, pacs, url
    finally:
        if service is not None:
            service.stop()
        pacs.stop()


def _row(service: Service, pacs: LocalPacs, study: DemoStudy) -> DemoRow:
    job = service.store.jobs.latest_of_study(study.study_uid)
    if job is None:
        return DemoRow("(not yet queued)", study.pipeline, "receiving" if not study.last_sent_at else "assembling")
    state = str(job["state"])
    if state == JobState.RUNNING and job["progress_total"]:
        state = f"running {job['progress_done']}/{job['progress_total']}"
    row = DemoRow(str(job["id"]), study.pipeline, state, reason=scrub(job["reason"]))
    result = json.loads(job["result"] or "{}")
    findings = [f for f in result.get("findings", []) if f.get("pipeline") == study.pipeline] or result.get("findings", [])
    if findings:
        f = findings[0]
        labels = _LABELS.get(study.pipeline, ("negative", "positive"))
        row.finding = f"{labels[bool(f.get('positive'))]} (threshold {float(f.get('threshold', 0.5)):.2f})"
        row.probability = float(f["probability"])
    arrivals: list[SrArrival] = pacs.find_sr(study.study_uid)
    if arrivals:
        first = min(arrivals, key=lambda a: a.seen_at)
        row.location = first.location
        row.latency_s = max(0.0, first.seen_at - study.last_sent_at)
        row.state = "SR in PACS"
    return row


def results_table(rows: list[DemoRow], title: str) -> Table:
    """Study (opaque job id), pipeline, finding, probability, latency, where the SR is."""
    table = Table(title=title, caption=f"Engines are {DEMO_NOTICE}.")
    for name in ("study (job id)", "pipeline", "state", "finding", "probability", "latency"):
        table.add_column(name, no_wrap=name != "finding")
    table.add_column("SR location", overflow="fold")
    for r in rows:
        table.add_row(
            r.job_id, r.pipeline, r.state if not r.reason else f"{r.state}: {r.reason}", r.finding,
            "" if r.probability is None else f"{r.probability:.3f}",
            "" if r.latency_s is None else f"{r.latency_s:.1f} s", r.location,
        )
    return table


def wait_for_results(service: Service, pacs: LocalPacs, studies: list[DemoStudy], timeout: float,
                     on_update: Callable[[list[DemoRow]], None] | None = None) -> tuple[list[DemoRow], str]:
    """Poll the jobs and the PACS until every SR arrived, a job failed, or ``timeout``; (rows, problem)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [_row(service, pacs, s) for s in studies]
        if on_update is not None:
            on_update(rows)
        if all(r.arrived for r in rows):
            return rows, ""
        failed = [r for r in rows if r.state == JobState.FAILED]
        if failed:
            return rows, f"job {failed[0].job_id} ({failed[0].pipeline}) failed: {failed[0].reason}"
        if time.monotonic() > deadline:
            missing = ", ".join(r.pipeline for r in rows if not r.arrived)
            return rows, f"timed out after {timeout:.0f} s waiting for the SR of: {missing}"
        time.sleep(_POLL_SECONDS)


def run_demo(
    data_dir: Path = DEFAULT_DATA_DIR,
    console: Console | None = None,
    keep_running: bool = False,
    timeout: float = 600.0,
    stable_seconds: float = 3.0,
    quick_engines: bool = False,
    prefer_orthanc: bool = True,
) -> DemoOutcome:
    """The whole demo; the outcome's ``ok`` is True only when every SR arrived in the PACS."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # logs and CI: one line per row
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold yellow]Appliance demo — the engines are {DEMO_NOTICE}.[/]")
    active = ensure_engines(data_dir, data_dir / "trusted_keys", console, quick_engines)
    console.print(f"demo engines active ({DEMO_NOTICE}): " + ", ".join(f"{t} {v}" for t, v in sorted(active.items())))
    console.print(f"export log: {data_dir / DEMO_LOG}", soft_wrap=True)
    scans = data_dir / "scanner"
    shutil.rmtree(scans, ignore_errors=True)
    with console.status("generating a synthetic slide and a synthetic DCE-MRI study (no real patient)"):
        studies = [write_slide_study(scans / "slide"), write_dce_study(scans / "dce")]
    with running_demo(data_dir, stable_seconds, prefer_orthanc) as (service, pacs, url):
        console.print(f"PACS: {pacs.kind} {pacs.ae_title} on 127.0.0.1:{pacs.port}; dashboard: {url}")
        cfg = service.config
        for study in studies:
            with console.status(f"scanner {SCANNER_AE_TITLE} sends {len(study.paths)} {study.modality} instance(s)"):
                send_study(study, cfg.node.host, cfg.node.port, cfg.node.ae_title)
        title = f"Demo results ({DEMO_NOTICE})"
        with Live(results_table([], title), console=console, refresh_per_second=4, transient=True) as live:
            rows, problem = wait_for_results(service, pacs, studies, timeout,
                                             lambda r: live.update(results_table(r, title)))
        outcome = DemoOutcome(rows, f"{pacs.kind} {pacs.ae_title}", url, stable_seconds, problem)
        console.print(results_table(rows, title))
        if outcome.ok:
            console.print(f"[bold green]Every SR arrived in the PACS[/] (stable time {stable_seconds:g} s). "
                          f"Engines are {DEMO_NOTICE}.")
        else:
            console.print(f"[bold red]Demo failed:[/] {problem or 'not every SR arrived in the PACS'}. "
                          f"Engines are {DEMO_NOTICE}.")
        if keep_running:
            console.print(f"The appliance keeps running: dashboard {url}; Ctrl-C or SIGTERM stops it.")
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                console.print("stopping")
    return outcome

