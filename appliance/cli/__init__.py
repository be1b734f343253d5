"""The ``appliance`` command: a Typer group of thin commands over library functions.

Library errors become a one-line message and exit status 1, never a traceback.
Command groups live in their own modules and register themselves here.
"""

from __future__ import annotations

import logging
import sys

import typer

from appliance.cli import _commands
from appliance.errors import ApplianceError

__all__ = ["app", "main"]

app = typer.Typer(
    help="On-prem cancer-imaging AI appliance: DICOM node, verified engines, structured reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_commands.register(app)

#: the root of every package's errors (dicom_node's, engines', export's and the appliance's own)
REPORTED_ERRORS: tuple[type[Exception], ...] = (ApplianceError,)


def main() -> None:
    """Entry point of the ``appliance`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except REPORTED_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
