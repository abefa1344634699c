"""``radtrain presets list|show``: the specialized-flow presets from the command line.

Reads the checked-in catalog data directly (the same the gateway serves), so
it works with no stack running; imported lazily, inside each command.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

presets_app = typer.Typer(no_args_is_help=True,
                          help="Presets of the specialized flow (pinned task, data, network).")
console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@presets_app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """Every preset, like ``GET /v1/presets``."""
    from handlers.catalog.presets import list_presets

    found = list_presets()
    if as_json:
        typer.echo(json.dumps({"items": [p.model_dump(mode="json") for p in found],
                               "total": len(found)}, indent=1))
        return
    table = Table(title=f"{len(found)} presets")
    for col in ("id", "task", "classes", "modality", "windows", "size", "network"):
        table.add_column(col, no_wrap=col == "id")
    for p in found:
        windows = ", ".join(f"{w.name} {w.center:g}/{w.width:g}" for w in p.windows) or "-"
        table.add_row(p.id, p.label_mode, ", ".join(p.classes), "/".join(p.modalities),
                      windows, str(p.image_size), p.zoo_entry)
    console.print(table)


@presets_app.command("show")
def show(preset: str, as_json: JsonOpt = False) -> None:
    """One preset by id: everything it pins."""
    from handlers.catalog.presets import UnknownPreset, get_preset

    try:
        found = get_preset(preset)
    except UnknownPreset as exc:
        console.print(f"[red]{exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    data = found.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    for key, value in data.items():
        console.print(f"[bold]{key:<16}[/] {value}", soft_wrap=True)
