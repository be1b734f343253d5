"""Registers every command module of the CLI on the Typer app."""

from __future__ import annotations

import importlib

import typer

#: modules under appliance.cli each defining ``register(app: typer.Typer) -> None``
COMMAND_MODULES = ("_status", "_serve", "_echo", "_engines", "_clinical", "_export", "_submit", "_demo",)


def register(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"appliance.cli.{name}").register(app)
