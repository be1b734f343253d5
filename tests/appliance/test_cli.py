from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from appliance.cli import app


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    found = [(prefix or "appliance", group)]
    if hasattr(group, "commands"):  # a group (Typer may bundle its own click)
        for name, command in group.commands.items():
            found += _commands(command, f"{prefix} {name}".strip())
    return found


def test_every_command_has_help_text() -> None:
    commands = _commands(typer.main.get_command(app))
    names = {name for name, _ in commands}
    assert {"status", "serve", "echo", "engines", "engines install-demo", "export", "clinical", "submit", "demo"} <= names
    missing = [name for name, command in commands if not (command.help or "").strip()]
    assert missing == [], f"commands without help text: {missing}"


def test_help_runs_for_every_command() -> None:
    runner = CliRunner()
    for name, _ in _commands(typer.main.get_command(app)):
        args = [] if name == "appliance" else name.split()
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output
