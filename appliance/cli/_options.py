"""Options shared by CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from appliance.config import Config, load_config

ConfigOption = Annotated[
    Optional[Path],  # noqa: UP007 - Typer needs Optional here
    typer.Option("--config", help="TOML configuration file (default: $APPLIANCE_CONFIG, /etc/appliance/appliance.toml, or built-in defaults)."),
]


def config_from(path: Path | None) -> Config:
    return load_config(path)
