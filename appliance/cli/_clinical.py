"""``appliance clinical set|show``: the sidecar clinical record of a breast-MRI study.

Keyed by Study Instance UID or Accession Number; the breast-MRI pipeline reads
it (``appliance/mri/_clinical.py``). Values left out stay as they are;
``--clear NAME`` makes a value missing again.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Optional

import typer

from appliance.cli._options import ConfigOption, config_from
from appliance.mri._clinical import CLINICAL_VARIABLES, get_clinical, set_clinical
from appliance.state import StateStore

_KEY = Annotated[str, typer.Argument(help="Study Instance UID or Accession Number of the study.")]


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Clinical variables of a breast-MRI study (sidecar record).", no_args_is_help=True)
    app.add_typer(group, name="clinical")

    @group.command("set")
    def set_(
        key: _KEY,
        age: Annotated[Optional[float], typer.Option(help="Age in years.")] = None,  # noqa: UP007 - Typer
        er: Annotated[Optional[int], typer.Option(help="ER status: 1 positive, 0 negative.")] = None,  # noqa: UP007
        her2: Annotated[Optional[int], typer.Option(help="HER2 status: 1 positive, 0 negative.")] = None,  # noqa: UP007
        ki67: Annotated[Optional[float], typer.Option(help="Ki-67 index in percent (0-100).")] = None,  # noqa: UP007
        grade: Annotated[Optional[int], typer.Option(help="Tumour grade 1-3.")] = None,  # noqa: UP007
        weight: Annotated[Optional[float], typer.Option(help="Weight in kg.")] = None,  # noqa: UP007
        clear: Annotated[Optional[list[str]], typer.Option(  # noqa: UP007
            help=f"Make a variable missing again ({', '.join(CLINICAL_VARIABLES)}, weight); repeatable.")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Set clinical values of a study; others stay as recorded."""
        given = {"age": age, "er": er, "her2": her2, "ki67": ki67, "grade": grade, "weight": weight}
        updates: dict[str, float | None] = {k: float(v) for k, v in given.items() if v is not None}
        for name in clear or []:
            updates[name] = None
        if not updates:
            raise typer.BadParameter("give at least one value (--age, --er, --her2, --ki67, --grade, --weight) or --clear")
        store = StateStore.for_data_dir(config_from(config).data_dir)
        try:
            record = set_clinical(store, key, updates, actor=f"cli:{getpass.getuser()}")
        finally:
            store.close()
        typer.echo(json.dumps(record, sort_keys=True))

    @group.command("show")
    def show(key: _KEY, config: ConfigOption = None) -> None:
        """Print the clinical record of a study as JSON (missing variables are absent)."""
        store = StateStore.for_data_dir(config_from(config).data_dir)
        try:
            record = get_clinical(store, key)
        finally:
            store.close()
        typer.echo(json.dumps(record, sort_keys=True))
