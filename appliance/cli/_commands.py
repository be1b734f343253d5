"""Registers every command module of the CLI on the Typer app."""

from __future__ import annotations

from types import ModuleType

import typer

from appliance.cli import _clinical, _demo, _echo, _engines, _export, _serve, _status, _submit

#: command modules, in help order; each defines ``register(app: typer.Typer) -> None``
COMMAND_MODULES: tuple[ModuleType, ...] = (_status, _serve, _echo, _engines, _clinical, _export, _submit, _demo)


def register(app: typer.Typer) -> None:
    for module in COMMAND_MODULES:
        module.register(app)
