"""``appliance engines``: list, verify, install, activate, roll back engine bundles; make vendor keys.

Every action is recorded in the state store's ``audit`` table (and in the
registry's own ``audit.jsonl``). Other command modules may add commands to
:data:`engines_app` (``install-demo`` lives with the export stage).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from appliance.cli._options import ConfigOption, config_from
from appliance.config import Config
from appliance.state import StateStore
from engines.files import atomic_write

if TYPE_CHECKING:
    from engines.registry import Registry

__all__ = ["engines_app", "open_registry", "register"]

engines_app = typer.Typer(
    help="Engine bundles: list, verify, install, activate, roll back; vendor signing keys.",
    no_args_is_help=True,
)

ActorOption = Annotated[str, typer.Option("--actor", help="Who does this, for the audit log (default: the OS user).")]
DowngradeOption = Annotated[bool, typer.Option(
    "--allow-downgrade",
    help="Allow a version older than the newest installed (install) or the active one (activate); audited.",
)]


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextmanager
def open_registry(config: Config) -> Iterator[Registry]:
    """A Registry on ``data_dir/engines`` whose actions are also audit rows of the state store."""
    from engines.registry import Registry  # noqa: F811 - the runtime import

    store = StateStore.for_data_dir(config.data_dir)
    try:
        yield Registry(config.data_dir / "engines", config.trusted_keys_dir, audit=store.audit, **config.engine_options)
    finally:
        store.close()


@engines_app.command("list")
def list_engines(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Show installed engine versions, their state and who installed them when."""
    from engines.registry import Registry

    cfg = config_from(config)
    records = Registry(cfg.data_dir / "engines", cfg.trusted_keys_dir).list()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in records], sort_keys=True))
        return
    table = Table("task", "version", "state", "backend", "precision", "vendor", "signer", "installed by", "installed at")
    for r in records:
        when = datetime.fromtimestamp(r.installed_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if r.installed_at else ""
        table.add_row(r.task, r.version, r.state, r.backend, r.precision, r.vendor + (" (demo)" if r.demo else ""),
                      r.signer, r.installed_by, when)
    Console().print(table)


@engines_app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.")],
    config: ConfigOption = None,
) -> None:
    """Check a bundle's signature, every file hash and its compatibility with this machine (installs nothing)."""
    from engines.bundle import verify_bundle
    from engines.compat import check_compat

    cfg = config_from(config)
    manifest = verify_bundle(bundle, cfg.trusted_keys_dir)
    typer.echo(f"signature and hashes OK: {manifest.key} {manifest.precision} {manifest.backend_name} "
               f"vendor={manifest.vendor} sha256={manifest.sha256}")
    check_compat(manifest)
    typer.echo("compatible with this machine")


@engines_app.command()
def install(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.")],
    config: ConfigOption = None,
    actor: ActorOption = "",
    activate: Annotated[bool, typer.Option("--activate", help="Activate it after installing.")] = False,
    allow_downgrade: DowngradeOption = False,
) -> None:
    """Verify a bundle, check it against this machine, run its golden set, and install it."""
    cfg = config_from(config)
    with open_registry(cfg) as registry:
        manifest = registry.install(bundle, actor or _default_actor(), allow_downgrade=allow_downgrade)
        typer.echo(f"installed {manifest.key} ({manifest.backend_name}, {manifest.precision})")
        if activate:
            registry.activate(manifest.task, manifest.version, actor or _default_actor(),
                              allow_downgrade=allow_downgrade)
            typer.echo(f"activated {manifest.key}")


@engines_app.command()
def activate(
    task: Annotated[str, typer.Argument(help="Task, e.g. pathology_tile.")],
    version: Annotated[str, typer.Argument(help="An installed version.")],
    config: ConfigOption = None,
    actor: ActorOption = "",
    allow_downgrade: DowngradeOption = False,
) -> None:
    """Make an installed version the active engine of its task (the previous one is kept for rollback)."""
    with open_registry(config_from(config)) as registry:
        registry.activate(task, version, actor or _default_actor(), allow_downgrade=allow_downgrade)
    typer.echo(f"activated {task}/{version}")


@engines_app.command()
def rollback(
    task: Annotated[str, typer.Argument(help="Task, e.g. pathology_tile.")],
    config: ConfigOption = None,
    actor: ActorOption = "",
) -> None:
    """Return a task to the version that was active before the current one."""
    with open_registry(config_from(config)) as registry:
        version = registry.rollback(task, actor or _default_actor())
    typer.echo(f"rolled back {task} to {version}")


@engines_app.command()
def keygen(
    name: Annotated[str, typer.Argument(help="Key name: NAME.key (private, 0600) and NAME.pub are written.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the key pair.")] = Path("."),
    trust: Annotated[bool, typer.Option("--trust", help="Also copy NAME.pub into the trusted keys directory.")] = False,
    config: ConfigOption = None,
) -> None:
    """Make an Ed25519 key pair for a vendor to sign bundles with."""
    from engines.signing import generate_keypair

    pair = generate_keypair(directory, name)
    typer.echo(f"private key {pair.private_key} (keep it secret)\npublic key {pair.public_key}")
    if trust:
        cfg = config_from(config)
        cfg.trusted_keys_dir.mkdir(parents=True, exist_ok=True)
        target = cfg.trusted_keys_dir / pair.public_key.name
        if target.exists():
            raise typer.BadParameter(f"{target} already exists")
        atomic_write(target, pair.public_key.read_bytes())
        store = StateStore.for_data_dir(cfg.data_dir)
        try:
            store.audit(_default_actor(), "trusted_key_add", name, {"path": str(target)})
        finally:
            store.close()
        typer.echo(f"trusted: {target}")


def register(app: typer.Typer) -> None:
    app.add_typer(engines_app, name="engines")
