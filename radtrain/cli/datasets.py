"""``radtrain datasets``: import, list, show and preview datasets.

Talks to NATS and the store directly, like ``radtrain demo`` registers its
dataset and ``radtrain keys`` manages keys: an operator importing a folder
from their disk needs no gateway and no API key. An import is the same job
``POST /v1/datasets/imports`` queues (run by the handlers process, followed
here); ``--local`` runs the pipeline in this process instead. Previews are
rendered by the same code (and land in the same store cache) as the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.settings import Settings
from schemas.common import is_identifier

if TYPE_CHECKING:
    from infra.dataset_imports import ImportRepo
    from infra.kv import DatasetRepo
    from infra.store import ObjectStore
    from schemas.dataset import DatasetSummary
    from schemas.dataset_import import ImportReport, ImportRequest, ImportStatus

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
    source: Annotated[str, typer.Argument(help=(
        "A local folder with the images and labels file (uploaded to the store first), "
        "or a folder already under imports/<tenant>/ in the store."))],
    name: Annotated[str, typer.Option(help="Display name.")],
    format: Annotated[str, typer.Option(
        "--format", help="folder-csv | rsna-ich | rsna-pe | coco | masks | siim-rle")],
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
    local: Annotated[bool, typer.Option(
        "--local", help="Run the import here, in this process, against NATS and the store "
        "(no handlers process needed); SOURCE must be a local folder.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job until it has finished.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Validate a folder and register it; every problem is listed with its case.

    By default the import is a job for the handlers process, exactly like
    ``POST /v1/datasets/imports``: a local SOURCE is uploaded under
    ``imports/<tenant>/cli-<import id>/`` first (removed once the job has
    finished), then the job is followed with a progress bar until its report.
    """
    from pydantic import ValidationError

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
    who = _tenant(tenant)
    path = Path(source).expanduser()
    if local:
        if not path.is_dir():
            raise typer.BadParameter(f"{source!r} is not a local folder")
        report: ImportReport | None = _import_local(path.resolve(), req, who, as_json)
        status: ImportStatus | None = None
    else:
        status, report = _import_job(path, source, req, who, wait, as_json)
        if status is None:  # --no-wait: queued, nothing to print but its id
            return
    if as_json:
        console.print_json(report.model_dump_json() if report is not None
                           else status.model_dump_json() if status is not None else "null")
    else:
        from handlers.datasets_import.pipeline import format_report

        if report is not None:
            console.print(format_report(report), markup=False, highlight=False, end="")
            if report.summary is not None:
                _print_summary(report.summary)
        if status is not None and status.error is not None and report is None:
            console.print(f"[red]import {status.import_id} failed: [{status.error.code}] "
                          f"{status.error.message}[/]")
    if report is None or not report.registered:
        raise typer.Exit(1)


def _progress_bar(disable: bool) -> Progress:
    return Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=disable)


def _import_local(root: Path, req: ImportRequest, tenant: str, quiet: bool) -> ImportReport:
    """Today's in-process import: this process parses, checks, uploads and registers."""
    from handlers.datasets_import.base import ImportOptions
    from handlers.datasets_import.pipeline import import_dataset
    from infra.store import open_store

    opts = ImportOptions.from_request(req, tenant)
    store = open_store(Settings())
    with _progress_bar(quiet) as bar:
        task = bar.add_task("reading", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total or None)

        return _with_repo(lambda repo: import_dataset(store, repo, root, opts, progress))


def _import_job(path: Path, source: str, req: ImportRequest, tenant: str, wait: bool,
                quiet: bool) -> tuple[ImportStatus | None, ImportReport | None]:
    """Upload a local folder if SOURCE is one, submit the job, follow it to its end."""
    from datetime import UTC, datetime

    from infra.bus.topology import connect
    from infra.dataset_imports import ImportRepo, new_import_id, source_prefix, submit_import
    from infra.store import InvalidKey, open_store, validate_key
    from schemas.dataset_import import ImportJob, ImportReport

    settings = Settings()
    store = open_store(settings)
    import_id = new_import_id(tenant)
    uploaded = path.is_dir()
    if uploaded:
        relative = f"cli-{import_id}"
        _upload_folder(store, path.resolve(), source_prefix(tenant, relative), quiet)
    else:
        try:
            relative = validate_key(source.strip("/"))
        except InvalidKey as exc:
            raise typer.BadParameter(f"{source!r} is neither a local folder nor a folder "
                                     f"under imports/{tenant}/ in the store: {exc}") from None
    job = ImportJob(import_id=import_id, tenant=tenant, submitted_at=datetime.now(UTC),
                    request=req.model_copy(update={"source": relative}),
                    delete_source=uploaded)

    async def main() -> ImportStatus | None:
        nc, js = await connect(settings, name="radtrain-datasets")
        try:
            imports = await ImportRepo.open(js)
            await submit_import(js, imports, job)
            if not quiet:
                console.print(f"import [bold]{import_id}[/] queued "
                              f"(radtrain datasets import-status {import_id})")
            return await _follow(imports, tenant, import_id, quiet) if wait else None
        finally:
            await nc.close()

    status = asyncio.run(main())
    if status is None:
        if quiet:
            console.print_json(json.dumps({"import_id": import_id, "state": "queued"}))
        return None, None
    report = None
    if status.report_key is not None:
        report = ImportReport.model_validate_json(store.get_bytes(status.report_key))
    return status, report


def _upload_folder(store: ObjectStore, root: Path, prefix: str, quiet: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in sorted(root.rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise typer.BadParameter(f"{root} has no files")
    with _progress_bar(quiet) as bar, ThreadPoolExecutor(8) as pool:
        task = bar.add_task("sending", total=len(files))

        def put(p: Path) -> None:
            store.put_file(f"{prefix}/{p.relative_to(root).as_posix()}", p)
            bar.advance(task)

        list(pool.map(put, files))


QUEUED_WARNING_S = 10.0


async def _follow(imports: ImportRepo, tenant: str, import_id: str, quiet: bool,
                  poll_s: float = 0.5) -> ImportStatus:
    """Poll the status in KV with a progress bar (done of total per phase) until finished."""
    started = time.monotonic()
    warned = False
    with _progress_bar(quiet) as bar:
        task = bar.add_task("queued", total=None)
        while True:
            found = await imports.get(tenant, import_id)
            if found is None:
                raise RuntimeError(f"import {import_id} has no status in KV")
            status = found[0]
            p = status.progress
            bar.update(task, description=p.phase if status.state == "running" else status.state,
                       completed=p.done, total=p.total or None)
            if status.finished:
                return status
            if status.state == "queued" and not warned and \
                    time.monotonic() - started > QUEUED_WARNING_S:
                warned = True
                bar.console.print(f"[yellow]still queued after {QUEUED_WARNING_S:g}s: is a "
                                  "handlers process running (radtrain up)?[/]")
            await asyncio.sleep(poll_s)


@datasets_app.command("import-status")
def import_status_cmd(import_id: str, tenant: TenantOpt = None,
                      follow: Annotated[bool, typer.Option(help="Wait until finished.")] = False,
                      as_json: JsonOpt = False) -> None:
    """An import job's state and progress; its report once finished."""
    from infra.bus.topology import connect
    from infra.dataset_imports import ImportRepo

    who = _tenant(tenant)

    async def main() -> ImportStatus | None:
        nc, js = await connect(Settings(), name="radtrain-datasets")
        try:
            imports = await ImportRepo.open(js)
            if follow:
                return await _follow(imports, who, import_id, as_json)
            found = await imports.get(who, import_id) if is_identifier(import_id) else None
            return found[0] if found else None
        finally:
            await nc.close()

    status = asyncio.run(main())
    if status is None:
        console.print(f"[red]import {import_id!r} not found for tenant {who}[/]")
        raise typer.Exit(1)
    if as_json:
        console.print_json(status.model_dump_json())
        return
    p = status.progress
    console.print(f"import {status.import_id}: {status.state} ({p.phase} {p.done}/{p.total}; "
                  f"{p.files} files read, {p.checked} cases checked, {p.uploaded} uploaded)"
                  + (f", dataset {status.dataset_id}" if status.dataset_id else "")
                  + (f", {status.num_problems} problems" if status.finished else ""))
    if status.error is not None:
        console.print(f"[red][{status.error.code}] {status.error.message}[/]")


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
        help="auto | brain | subdural | bone | lung | mediastinal | pe | abdomen | liver")
    ] = "auto",
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
