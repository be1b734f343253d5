from __future__ import annotations

import click
import typer
from typer.testing import CliRunner

from appliance.cli import app


def _commands(group: click.Command, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = [(prefix or "appliance", group)]
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            found += _commands(command, f"{prefix} {name}".strip())
    return found


def test_every_command_has_help_text() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"status", "serve", "engines", "export", "demo"} <= {name for name, _ in commands}
    missing = [name for name, command in commands if not (command.help or "").strip()]
    assert missing == [], f"commands without help text: {missing}"


def test_help_runs_for_every_command() -> None:
    runner = CliRunner()
    for name, _ in _commands(typer.main.get_command(app)):
        args = [] if name == "appliance" else name.split()
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output
