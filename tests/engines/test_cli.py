"""``appliance engines ...`` over a real configuration file and state store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from appliance.cli import _engines
from appliance.state import StateStore
from tests.engines._helpers import make_bundle


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a group, as in the real CLI
    _engines.register(app)
    return app


def test_keygen_install_activate_rollback_list(tmp_path: Path, app: typer.Typer) -> None:
    data_dir = tmp_path / "var"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data_dir}"\n')
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["engines", *args, "--config", str(cfg)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    assert "trusted:" in run("keygen", "acme", "--dir", str(tmp_path / "vendor"), "--trust")
    pem = (tmp_path / "vendor" / "acme.key").read_bytes()
    for version, seed in (("1.0", 1), ("2.0", 2)):
        make_bundle(tmp_path / f"b{version}", pem, version, seed=seed)
    assert "signature and hashes OK: test_task/1.0" in run("verify", str(tmp_path / "b1.0"))
    assert "installed test_task/1.0" in run("install", str(tmp_path / "b1.0"), "--actor", "fe1", "--activate")
    run("install", str(tmp_path / "b2.0"), "--actor", "fe2")
    assert "activated test_task/2.0" in run("activate", "test_task", "2.0", "--actor", "fe2")
    assert "rolled back test_task to 1.0" in run("rollback", "test_task", "--actor", "fe1")
    listed = {r["version"]: r for r in json.loads(run("list", "--json"))}
    assert listed["1.0"]["state"] == "active" and listed["1.0"]["installed_by"] == "fe1"
    assert listed["2.0"]["state"] == "installed" and listed["2.0"]["installed_by"] == "fe2"
    assert "test_task" in run("list")

    store = StateStore.for_data_dir(data_dir)
    actions = [r["action"] for r in store.query("select action from audit order by id")]
    store.close()
    assert actions == ["trusted_key_add", "engine_install", "engine_activate", "engine_install",
                       "engine_activate", "engine_rollback"]


def test_refusal_is_a_library_error_with_the_reason(tmp_path: Path, app: typer.Typer) -> None:
    from engines.errors import BundleRejected
    from tests.engines._helpers import keypair

    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    bundle = make_bundle(tmp_path / "b", keypair(tmp_path / "rogue", "rogue"))
    result = CliRunner().invoke(app, ["engines", "install", str(bundle), "--config", str(cfg)])
    assert result.exit_code != 0
    assert isinstance(result.exception, BundleRejected)
    assert "no trusted keys" in str(result.exception)
    store = StateStore.for_data_dir(tmp_path / "var")
    rows = store.query("select action, detail from audit")
    store.close()
    assert rows[0]["action"] == "engine_install_refused" and "no trusted keys" in rows[0]["detail"]


def test_every_engines_command_has_help(app: typer.Typer) -> None:
    runner = CliRunner()
    for name in ("list", "verify", "install", "activate", "rollback", "keygen"):
        result = runner.invoke(app, ["engines", name, "--help"])
        assert result.exit_code == 0 and len(result.output) > 100, name


def test_cli_downgrade_needs_allow_downgrade(tmp_path: Path, app: typer.Typer) -> None:
    data_dir = tmp_path / "var"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data_dir}"\n')
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        actor = ["--actor", "fe"] if args[0] in ("install", "activate") else []
        result = runner.invoke(app, ["engines", *args, "--config", str(cfg), *actor], env={"COLUMNS": "200"})
        return result.exit_code, result.output + repr(result.exception)

    assert run("keygen", "acme", "--dir", str(tmp_path / "vendor"), "--trust")[0] == 0
    pem = (tmp_path / "vendor" / "acme.key").read_bytes()
    for version, seed in (("1.0", 1), ("2.0", 2)):
        make_bundle(tmp_path / f"b{version}", pem, version, seed=seed)
    assert run("install", str(tmp_path / "b2.0"), "--activate")[0] == 0
    code, out = run("install", str(tmp_path / "b1.0"), "--activate")
    assert code != 0 and "older than test_task/2.0" in out
    code, out = run("install", str(tmp_path / "b1.0"), "--activate", "--allow-downgrade")
    assert code == 0 and "activated test_task/1.0" in out, out
    assert run("activate", "test_task", "2.0")[0] == 0
    code, out = run("activate", "test_task", "1.0")
    assert code != 0 and "--allow-downgrade" in out
    assert run("activate", "test_task", "1.0", "--allow-downgrade")[0] == 0
    store = StateStore.for_data_dir(data_dir)
    try:
        details = [json.loads(r["detail"]) for r in store.query("select detail from audit where actor = 'fe'")]
    finally:
        store.close()
    assert sum("downgrade_from" in d for d in details) == 3  # forced install, activate after it, forced activate
