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

from radtrain.cli.client import Exit, fail

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
        table.add_row(p.ref, p.label_mode, ", ".join(p.classes), "/".join(p.modalities),
                      windows, str(p.image_size), p.zoo_entry)
    console.print(table)


@presets_app.command("show")
def show(preset: str, as_json: JsonOpt = False) -> None:
    """One preset by id: everything it pins."""
    from handlers.catalog.presets import UnknownPreset, get_preset

    try:
        found = get_preset(preset)
    except UnknownPreset as exc:
        fail(str(exc), Exit.NOT_FOUND)
    data = found.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    for key, value in data.items():
        console.print(f"[bold]{key:<16}[/] {value}", soft_wrap=True)


@presets_app.command("check")
def check(preset: str, dataset_id: str,
          tenant: Annotated[str | None, typer.Option(help="Tenant id (default: the default "
                                                          "tenant).")] = None,
          as_json: JsonOpt = False) -> None:
    """Whether a registered dataset meets a preset's minimums (issue 15): warnings exit 0,
    a dataset below the hard floor (the specialized flow would reject it) exits 1."""
    from handlers.catalog.presets import UnknownPreset, get_preset
    from handlers.enrich.checks import class_mapping
    from handlers.enrich.minimums import check_minimums
    from radtrain.cli.datasets import _get

    try:
        found = get_preset(preset)
    except UnknownPreset as exc:
        fail(str(exc), Exit.NOT_FOUND)
    summary = _get(dataset_id, tenant)
    mapping, _ = class_mapping(summary, list(found.classes), found, {})
    fit = check_minimums(summary, found, mapping)
    if as_json:
        typer.echo(json.dumps({"preset": found.ref, "dataset_id": summary.id,
                               "minimums": found.minimums.model_dump(),
                               "positives": fit.positives, "warnings": fit.warnings,
                               "errors": [e.model_dump() for e in fit.errors]}, indent=1))
    else:
        m = found.minimums
        console.print(f"{summary.id} against {found.ref}: {summary.num_cases} cases "
                      f"({m.cases} recommended, {m.floor_cases} at least); positives "
                      + ", ".join(f"{k} {v}" for k, v in fit.positives.items()),
                      highlight=False, soft_wrap=True)
        for w in fit.warnings:
            console.print(f"[yellow]warning[/]: {w}", highlight=False, soft_wrap=True)
    if fit.errors:
        fail("; ".join(e.message for e in fit.errors))
