"""``appliance status``: counts of instances, studies, jobs, deliveries and active engines."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from appliance.cli._options import ConfigOption, config_from
from appliance.status import collect_status


def register(app: typer.Typer) -> None:
    @app.command()
    def status(
        config: ConfigOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Show counts: instances stored, studies, jobs and deliveries by state, active engines."""
        report = collect_status(config_from(config))
        if as_json:
            typer.echo(json.dumps(report, sort_keys=True))
            return
        table = Table("what", "count")
        table.add_row("instances", str(report["instances"]))
        table.add_row("studies", str(report["studies"]))
        for group in ("jobs", "deliveries", "engines"):
            for key, value in report[group].items():
                table.add_row(f"{group}: {key}", str(value))
        Console().print(table)
