"""``appliance serve``: run the DICOM node and the other service components until SIGTERM."""

from __future__ import annotations

import logging

import typer

from appliance.cli._options import ConfigOption, config_from


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(config: ConfigOption = None) -> None:
        """Run the appliance (DICOM node, assembly, worker, delivery, web) until SIGTERM or SIGINT."""
        from appliance.service import Service

        # pynetdicom logs every association and message at INFO: keep its warnings only.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # highdicom logs the source instances' UIDs at INFO: studies are named by opaque job id only.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        Service(config_from(config)).run()
