"""``radtrain datasets``: import, list, show and preview datasets.

Talks to the store and KV directly, like ``radtrain demo`` registers its
dataset and ``radtrain keys`` manages keys: an operator importing a folder
from their disk needs no gateway and no API key. Previews are rendered by the
same code (and land in the same store cache) as the gateway's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import Settings
from schemas.common import is_identifier

if TYPE_CHECKING:
    from infra.kv import DatasetRepo
    from schemas.dataset import DatasetSummary
    from schemas.dataset_import import ImportReport

datasets_app = typer.Typer(no_args_is_help=True,
                           help="Import, list, show and preview datasets.")
console = Console()
T = TypeVar("T")

TenantOpt = Annotated[str | None, typer.Option(help="Tenant id (default: the default tenant).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _tenant(tenant: str | None) -> str:
    value = tenant or Settings().default_tenant
    if not is_identifier(value):
        raise typer.BadParameter(f"{value!r} is not a valid tenant id")
    return value


def _with_repo(work: Callable[[DatasetRepo], Awaitable[T]]) -> T:
    """Connect to NATS, open KV ``datasets``, run, close."""
    from infra.bus.topology import connect
    from infra.kv import DatasetRepo

    async def main() -> T:
        nc, js = await connect(Settings(), name="radtrain-datasets")
        try:
            return await work(await DatasetRepo.open(js))
        finally:
            await nc.close()

    return asyncio.run(main())


@datasets_app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="Folder with the images and labels file.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    format: Annotated[str, typer.Option(
        "--format", help="folder-csv | rsna-ich | coco | masks | siim-rle")],
    dataset_id: Annotated[str | None, typer.Option("--id", help="Dataset id (default: "
                                                   "from the name).")] = None,
    tenant: TenantOpt = None,
    annotation: Annotated[str | None, typer.Option(
        help="single_label | multi_label | boxes | masks (default: from the format)")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    modality: Annotated[str | None, typer.Option(help="CT | CR | DX | MR | photo | other")
                        ] = None,
    labels: Annotated[str | None, typer.Option(help="Labels file, relative to SOURCE.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Register the good cases, record the bad.")
                        ] = False,
    replace: Annotated[bool, typer.Option(help="New version of an existing dataset id.")
                       ] = False,
    rle: Annotated[str, typer.Option(help="SIIM run-length: relative | absolute")] = "relative",
    decode: Annotated[str, typer.Option(help="Decode pixels: auto | always | never")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Validate a local folder and register it; every problem is listed with its case."""
    from pydantic import ValidationError

    from handlers.datasets_import.base import ImportOptions
    from handlers.datasets_import.pipeline import format_report, import_dataset
    from infra.store import open_store
    from schemas.dataset_import import ImportRequest

    try:  # the API's request model checks the option values the same way
        req = ImportRequest.model_validate({
            "name": name, "format": format, "source": "cli", "dataset_id": dataset_id,
            "annotation_type": annotation, "modality": modality, "labels": labels,
            "classes": [c.strip() for c in classes.split(",")] if classes else None,
            "skip_bad": skip_bad, "replace": replace, "rle": rle, "decode": decode})
    except ValidationError as exc:
        raise typer.BadParameter("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                           for e in exc.errors())) from None
    opts = ImportOptions(
        name=req.name, format=req.format, tenant=_tenant(tenant), dataset_id=req.dataset_id,
        annotation_type=req.annotation_type, classes=req.classes, modality=req.modality,
        labels=req.labels, skip_bad=req.skip_bad, replace=req.replace, rle=req.rle,
        decode=req.decode)
    store = open_store(Settings())
    report: ImportReport = _with_repo(
        lambda repo: import_dataset(store, repo, source.expanduser().resolve(), opts))
    if as_json:
        console.print_json(report.model_dump_json())
    else:
        console.print(format_report(report), markup=False, highlight=False, end="")
        if report.summary is not None:
            _print_summary(report.summary)
    if not report.registered:
        raise typer.Exit(1)


@datasets_app.command("list")
def list_cmd(
    tenant: TenantOpt = None,
    task_type: Annotated[str | None, typer.Option(
        help="classification | detection | segmentation")] = None,
    annotation_type: Annotated[str | None, typer.Option()] = None,
    modality: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    """The tenant's datasets, only those whose annotation fits --task-type if given."""
    from schemas.dataset_import import TASK_ANNOTATIONS, fits

    if task_type is not None and task_type not in TASK_ANNOTATIONS:
        raise typer.BadParameter(f"task type must be one of {', '.join(TASK_ANNOTATIONS)}")
    who = _tenant(tenant)
    items = [s for s in _with_repo(lambda repo: repo.list(who))
             if fits(s, task_type, annotation_type, modality)]
    items.sort(key=lambda s: s.name)
    if as_json:
        console.print_json(json.dumps([s.model_dump(mode="json") for s in items]))
        return
    table = Table(title=f"datasets of {who}")
    for col in ("id", "name", "annotation", "modality", "classes", "cases"):
        table.add_column(col, justify="right" if col == "cases" else "left")
    for s in items:
        table.add_row(s.id, s.name, s.annotation_type, s.modality, ", ".join(s.classes),
                      str(s.num_cases))
    console.print(table)


def _get(dataset_id: str, tenant: str | None) -> DatasetSummary:
    who = _tenant(tenant)
    summary = _with_repo(lambda repo: repo.get(dataset_id)) if is_identifier(dataset_id) \
        else None
    if summary is None or summary.tenant != who:
        console.print(f"[red]dataset {dataset_id!r} not found for tenant {who}[/]")
        raise typer.Exit(1)
    return summary


@datasets_app.command("show")
def show_cmd(dataset_id: str, tenant: TenantOpt = None,
             cases: Annotated[int, typer.Option(help="Also list the first N cases.")] = 0,
             as_json: JsonOpt = False) -> None:
    """Summary and statistics: class counts, positive rates, sizes, patients, splits."""
    summary = _get(dataset_id, tenant)
    if as_json:
        console.print_json(summary.model_dump_json())
    else:
        _print_summary(summary)
    if cases > 0:
        from gateway.previews import load_manifest
        from infra.store import open_store

        manifest = load_manifest(open_store(Settings()), summary)
        for case in manifest.cases[:cases]:
            extra = f"{len(case.boxes)} boxes" if case.boxes else (case.mask or "")
            console.print(f"  {case.case_id}: {', '.join(case.labels) or '-'} {extra} "
                          f"patient={case.patient_id or '-'} split={case.split or '-'}")


def _print_summary(s: DatasetSummary) -> None:
    console.print(f"[bold]{s.id}[/] {s.name!r}: {s.annotation_type}, {s.modality}, "
                  f"{s.num_cases} cases, tenant {s.tenant}, manifest sha256 "
                  f"{s.manifest_sha256[:12]}")
    stats = s.stats
    if stats is None:
        return
    table = Table(title="classes")
    columns = ("class", "cases", "positive rate", *(("boxes",) if stats.box_counts else ()))
    for col in columns:
        table.add_column(col, justify="left" if col == "class" else "right")
    for name in s.classes:
        row = [name, str(stats.class_counts.get(name, 0)),
               f"{stats.positive_rate.get(name, 0.0):.3f}"]
        table.add_row(*row, *([str(stats.box_counts.get(name, 0))] if stats.box_counts else []))
    console.print(table)
    sizes = stats.image_sizes
    if sizes is not None:
        common = ", ".join(f"{k} ({v})" for k, v in sizes.common.items())
        console.print(f"image sizes: rows {sizes.min_rows}-{sizes.max_rows} (median "
                      f"{sizes.median_rows:g}), columns {sizes.min_cols}-{sizes.max_cols} "
                      f"(median {sizes.median_cols:g}); most common {common}")
    console.print(f"patients: {stats.patients} ({stats.cases_without_patient} cases without "
                  f"one); splits: " + ", ".join(f"{k} {v}" for k, v in stats.splits.items()))


@datasets_app.command("preview")
def preview_cmd(
    dataset_id: str, case_id: str, tenant: TenantOpt = None,
    window: Annotated[str, typer.Option(
        help="auto | brain | subdural | bone | lung | mediastinal | pe")] = "auto",
    size: Annotated[int, typer.Option(min=32, max=1024, help="Longest side, pixels.")] = 512,
    out: Annotated[Path | None, typer.Option(help="PNG file (default: <case>-<window>.png).")
                   ] = None,
) -> None:
    """Render one case to PNG, with its boxes and mask drawn over it."""
    from gateway.previews import case_preview, load_manifest
    from imaging.preview import WINDOW_NAMES
    from imaging.reader import CaseReadError
    from infra.store import open_store

    if window not in WINDOW_NAMES:
        raise typer.BadParameter(f"window must be one of {', '.join(WINDOW_NAMES)}")
    summary = _get(dataset_id, tenant)
    store = open_store(Settings())
    manifest = load_manifest(store, summary)
    case = next((c for c in manifest.cases if c.case_id == case_id), None)
    if case is None:
        console.print(f"[red]case {case_id!r} not found in {dataset_id}[/]")
        raise typer.Exit(1)
    try:
        png, hit = case_preview(store, manifest, case, window=window, size=size)
    except CaseReadError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from None
    target = out or Path(f"{case_id}-{window}.png")
    target.write_bytes(png)
    console.print(f"{target} ({len(png)} bytes{', cached' if hit else ''})")
