"""``radtrain tasks list|show|cancel|logs|download|rerun``: tasks over the HTTP API.

For on-call and data scientists alike: everything goes through the gateway with
an API key, so the tenant rules are the API's (another tenant's task is simply
not found, exit 3). Data goes to stdout (``--json`` for machines), errors to
stderr; exit codes as in :class:`radtrain.cli.client.Exit`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer
from rich.console import Console
from rich.table import Table

from radtrain.cli.client import (
    EXIT_CODES_HELP,
    ApiKeyOpt,
    Exit,
    JsonOpt,
    Target,
    UrlOpt,
    api_errors,
    call,
    download,
    fail,
    target,
)
from radtrain.cli.task_logs import event_line, read_events
from radtrain.cli.task_rerun import rerun_request

tasks_app = typer.Typer(no_args_is_help=True, epilog=EXIT_CODES_HELP,
                        help="Tasks over the HTTP API: list, show, cancel, logs, download, "
                             "rerun (your API key's tenant only).")
console = Console()
FINAL = ("completed", "failed", "cancelled", "rejected")
TaskId = Annotated[str, typer.Argument(help="The task id.")]


def _path(task_id: str, *rest: str) -> str:
    return "/".join(["/v1/tasks", quote(task_id, safe=""), *(quote(r, safe="") for r in rest)])


def _get(t: Target, path: str, what: str) -> Any:
    with api_errors(what):
        return call("GET", t.url + path, token=t.token)[1]


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=1, default=str))


@tasks_app.command("list")
def list_cmd(
    state: Annotated[str | None, typer.Option(help=(
        "Only tasks in this state (requested, ready, running, completed, failed, cancelled, "
        "rejected)."))] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    url: UrlOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """Newest first: id, name, state, flow, network, attempt, last update."""
    query = {"limit": limit, "offset": offset} | ({"state": state} if state else {})
    page = _get(target(url, api_key), f"/v1/tasks?{urlencode(query)}", "list tasks")
    if as_json:
        _print_json(page)
        return
    table = Table("task", "name", "state", "flow", "network", "attempt", "updated",
                  title=f"{page['total']} task(s)")
    for r in page["items"]:
        table.add_row(r["task_id"], r["name"][:40], r["state"], r["flow"], r.get("network") or "-",
                      str(r.get("attempt", 0)), r["updated_at"][:19])
    console.print(table if page["items"] else "no tasks")


@tasks_app.command("show")
def show(task_id: TaskId, url: UrlOpt = None, api_key: ApiKeyOpt = None,
         as_json: JsonOpt = False) -> None:
    """The task's record: state, attempt, progress, metrics, errors, artifacts, redrives."""
    rec = _get(target(url, api_key), _path(task_id), f"task {task_id}")
    if as_json:
        _print_json(rec)
        return
    for key in ("task_id", "name", "state", "flow", "task_type", "dataset_id", "network",
                "attempt", "generation", "runner_id", "created_at", "updated_at", "duration_s"):
        if rec.get(key) is not None:
            console.print(f"[bold]{key:<11}[/] {rec[key]}", highlight=False)
    if rec.get("progress"):
        p = rec["progress"]
        console.print(f"[bold]{'progress':<11}[/] epoch {p['epoch']}/{p['epochs']}, "
                      f"step {p['step']}/{p.get('total_steps') or '?'}", highlight=False)
    for name, value in sorted((rec.get("metrics") or {}).items()):
        console.print(f"  metric {name:<20} {value:.4f}", highlight=False)
    for err in rec.get("errors") or []:
        console.print(f"  [red]error[/] {err.get('code')}: {err.get('message')}")
    for art in rec.get("artifacts") or []:
        console.print(f"  artifact {art['name']:<22} {art['size']:>10} B  sha256 "
                      f"{art['sha256'][:12]}", highlight=False)
    for rd in rec.get("redrives") or []:
        console.print(f"  redriven {rd}", highlight=False)


@tasks_app.command("cancel")
def cancel(task_id: TaskId,
           reason: Annotated[str, typer.Option(help="Why (recorded with the request).")] = "",
           url: UrlOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Ask the runner to stop the task (it stops within a few seconds, then the task is
    cancelled). A task that already ended is a failure (exit 1)."""
    t = target(url, api_key)
    with api_errors(f"cancel {task_id}"):
        _, body, _ = call("POST", t.url + _path(task_id, "cancel"),
                          body={"reason": reason} if reason else None, token=t.token)
    if as_json:
        _print_json(body)
    else:
        console.print(f"cancel requested for {task_id} (state {body['state']})")


@tasks_app.command("logs")
def logs(task_id: TaskId,
         follow: Annotated[bool, typer.Option("--follow", "-f", help=(
             "Keep following live events until the task ends."))] = False,
         idle: Annotated[float, typer.Option(min=0.1, help=(
             "Without --follow: stop once the stream is quiet this many seconds."))] = 2.0,
         url: UrlOpt = None, api_key: ApiKeyOpt = None,
         as_json: JsonOpt = False) -> None:
    """The task's events, oldest first (requested, ready, started, progress, ...): one line
    each, or one JSON object per line with --json (id = stream sequence)."""
    t = target(url, api_key)
    with api_errors(f"events of {task_id}"):
        for event_id, name, data in read_events(t, _path(task_id, "events"), follow, idle):
            if as_json:
                typer.echo(json.dumps({"id": event_id, "event": name, "data": data}))
            else:
                console.print(event_line(event_id, name, data), highlight=False, markup=False)


@tasks_app.command("download")
def download_cmd(
    task_id: TaskId,
    names: Annotated[list[str] | None, typer.Argument(help="Artifacts (default: all).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=(
        "Folder to write into (default: ./<task id>)."))] = None,
    url: UrlOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """Download a finished task's artifacts; each file's sha256 is checked against the
    task's record (a mismatch is a failure, exit 1)."""
    t = target(url, api_key)
    listed = _get(t, _path(task_id, "artifacts"), f"artifacts of {task_id}")["items"]
    chosen = [a for a in listed if not names or a["name"] in names]
    missing = sorted(set(names or ()) - {a["name"] for a in listed})
    if missing:
        fail(f"task {task_id} has no artifact {', '.join(missing)}", Exit.NOT_FOUND)
    if not chosen:
        fail(f"task {task_id} has no artifacts (yet)", Exit.NOT_FOUND)
    folder = out or Path(task_id)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for art in chosen:
        dest = folder / Path(art["name"]).name
        with api_errors(f"download {art['name']}"):
            size = download(t.url + art["href"], dest, t.token)
        if _sha256(dest) != art["sha256"]:
            fail(f"{dest}: sha256 differs from the task's record", Exit.FAILURE)
        done.append({"name": art["name"], "path": str(dest), "size": size,
                     "sha256": art["sha256"]})
    if as_json:
        _print_json(done)
        return
    for d in done:
        console.print(f"{d['path']}  {d['size']} B  sha256 {d['sha256'][:12]} ok",
                      highlight=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@tasks_app.command("rerun")
def rerun(task_id: TaskId,
          name: Annotated[str | None, typer.Option(help="Name of the new task.")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help=(
              "Print the request that would be submitted; submit nothing."))] = False,
          url: UrlOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Submit a new task from a finished task's spec.json: same flow, dataset, network
    (or preset, or base task) and the full resolved hyperparameters as manual tuning.
    The new task's name and description name the original (its lineage)."""
    t = target(url, api_key)
    rec = _get(t, _path(task_id), f"task {task_id}")
    if rec["state"] not in FINAL:
        fail(f"task {task_id} is {rec['state']}: only a finished task can be rerun")
    if not any(a["name"] == "spec.json" for a in rec.get("artifacts") or []):
        fail(f"task {task_id} has no spec.json artifact (it never completed a run)")
    with api_errors(f"spec.json of {task_id}"):
        _, spec, _ = call("GET", t.url + _path(task_id, "artifacts", "spec.json"),
                          token=t.token)
    body = rerun_request(spec, task_id, name)
    if dry_run:
        _print_json(body)
        return
    with api_errors("submit"):
        _, accepted, _ = call("POST", t.url + "/v1/tasks", body=body, token=t.token)
    if as_json:
        _print_json({**accepted, "rerun_of": task_id})
    else:
        console.print(f"submitted {accepted['task_id']} ({accepted['state']}), a rerun of "
                      f"{task_id}", highlight=False)
