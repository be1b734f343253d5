"""``appliance echo DESTINATION``: C-ECHO a DIMSE destination (PS3.7 9.1.5), or QIDO-RS a DICOMweb one (PS3.18 10.6)."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance.cli._options import ConfigOption, config_from
from appliance.outbox import destination_from, scu_for, stow_client_for, web_destination_from
from dicom_node.errors import DeliveryFailed


def register(app: typer.Typer) -> None:
    @app.command()
    def echo(
        destination: Annotated[str, typer.Argument(help="Name of a configured destination (its name key).")],
        config: ConfigOption = None,
    ) -> None:
        """C-ECHO (DIMSE) or a QIDO-RS query (DICOMweb) to a configured destination; exit status 1 on failure."""
        cfg = config_from(config)
        settings = cfg.destination(destination)
        try:
            if settings.kind == "dicomweb":
                web = web_destination_from(settings)
                seconds = stow_client_for(cfg).echo(web)
                where = web.url
            else:
                target = destination_from(settings, cfg)
                seconds = scu_for(cfg).echo(target)
                where = f"{target.ae_title}@{target.host}:{target.port}"
        except DeliveryFailed as exc:
            typer.echo(f"echo {destination}: failed: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"echo {destination}: success ({where}, {seconds * 1000:.0f} ms)")
