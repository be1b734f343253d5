"""``appliance echo DESTINATION``: C-ECHO a configured destination (PS3.7 9.1.5)."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance.cli._options import ConfigOption, config_from
from appliance.outbox import destination_from, scu_for
from dicom_node.errors import DeliveryFailed


def register(app: typer.Typer) -> None:
    @app.command()
    def echo(
        destination: Annotated[str, typer.Argument(help="Name of a configured destination (its name key).")],
        config: ConfigOption = None,
    ) -> None:
        """C-ECHO a configured destination; one line, exit status 1 when it does not answer success."""
        cfg = config_from(config)
        target = destination_from(cfg.destination(destination), cfg)
        try:
            seconds = scu_for(cfg).echo(target)
        except DeliveryFailed as exc:
            typer.echo(f"echo {destination}: failed: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"echo {destination}: success ({target.ae_title}@{target.host}:{target.port}, {seconds * 1000:.0f} ms)")
