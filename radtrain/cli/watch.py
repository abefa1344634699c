"""``radtrain watch ID``: a live progress bar of one task, from its event stream.

It follows ``GET /v1/tasks/{id}/events`` (Server-Sent Events): the history is
replayed first, so watching a task that is half done (or done) shows where it
is at once. A dropped connection reconnects with ``Last-Event-ID``; a gateway
without the stream is polled instead (``GET /v1/tasks/{id}``). The bar shows
the epoch, the loss, the main validation metric and the ETA.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radtrain.cli.client import (
    ApiKeyOpt,
    Exit,
    JsonOpt,
    UrlOpt,
    api_errors,
    call,
    exit_code,
    fail,
    target,
)
from radtrain.cli.search_table import print_search

console = Console()
FINAL = {"completed", "failed", "cancelled", "rejected"}
MAIN_METRICS = ("auc", "map_50", "dice", "accuracy", "iou", "map_50_95")
RECONNECT_S = 1.0
UNREACHABLE_TRIES = 30
"""Consecutive failed connections (about this many seconds) before watch gives up (exit 4)."""


@dataclass
class WatchState:
    """What the bar shows, folded from events (or from polled records)."""

    state: str = "requested"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total: int | None = None
    loss: float | None = None
    metric: tuple[str, float] | None = None
    eta_s: float | None = None
    note: str = ""
    final: dict[str, Any] = field(default_factory=dict)

    def apply(self, name: str, data: dict[str, Any]) -> None:
        if name == "started":
            self.state = "running"
            resumed = data.get("resumed_from_epoch")
            self.note = f"attempt {data.get('attempt')}" + (
                f", resumed after epoch {resumed}" if resumed is not None else "")
        elif name == "progress":
            self.state = "running"
            self.epoch, self.epochs = data["epoch"], data["epochs"]
            self.step, self.total = data["step"], data["total_steps"] or None
            self.loss, self.eta_s = data.get("loss"), data.get("eta_s")
            self.metric = main_metric(data.get("metrics") or {}) or self.metric
        elif name in FINAL or name in ("ready", "requested"):
            self.state = name
            if name in FINAL:
                self.final = data

    def info(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}"] if self.epochs else []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.metric is not None:
            parts.append(f"{self.metric[0]} {self.metric[1]:.3f}")
        if self.eta_s is not None and self.state == "running":
            parts.append(f"ETA {self.eta_s:.0f}s")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)


def main_metric(metrics: dict[str, float]) -> tuple[str, float] | None:
    for name in MAIN_METRICS:
        if name in metrics:
            return name, float(metrics[name])
    return None


def sse_frames(url: str, token: str | None, last_id: str | None,
               timeout_s: float = 60.0) -> Iterator[tuple[str, str, str]]:
    """``(id, event, data)`` per Server-Sent Event, until the server closes the stream."""
    req = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if last_id:
        req.add_header("Last-Event-ID", last_id)
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        fields: dict[str, str] = {}
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if line:
                if not line.startswith(":"):
                    key, _, value = line.partition(":")
                    fields[key] = value[1:] if value.startswith(" ") else value
                continue
            if "event" in fields:
                yield fields.get("id", ""), fields["event"], fields.get("data", "")
            fields = {}


def follow_events(url: str, task_id: str, token: str | None, state: WatchState,
                  redraw: Any, timeout_s: float) -> None:
    """Fold the task's events into ``state`` until a final one; reconnect on drops."""
    deadline = time.monotonic() + timeout_s
    last_id: str | None = None
    failures = 0
    while state.state not in FINAL and time.monotonic() < deadline:
        try:
            for event_id, name, data in sse_frames(f"{url}/v1/tasks/{task_id}/events", token,
                                                   last_id):
                failures = 0
                last_id = event_id or last_id
                state.apply(name, json.loads(data).get("data", {}))
                redraw()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError, TimeoutError):
            failures += 1
            if failures >= UNREACHABLE_TRIES:
                raise
            time.sleep(RECONNECT_S)


def poll_record(url: str, task_id: str, token: str | None, state: WatchState, redraw: Any,
                timeout_s: float) -> None:
    """For a gateway without the event stream: the record's last progress, every second."""
    deadline = time.monotonic() + timeout_s
    while state.state not in FINAL and time.monotonic() < deadline:
        _, rec, _ = call("GET", f"{url}/v1/tasks/{task_id}", token=token)
        if rec.get("progress"):
            state.apply("progress", rec["progress"])
        if rec["state"] in FINAL:
            state.apply(rec["state"], {"metrics": rec.get("metrics", {}),
                                       "errors": rec.get("errors", [])})
        redraw()
        if state.state not in FINAL:
            time.sleep(1.0)


def watch(
    task_id: Annotated[str, typer.Argument(help="The task to follow.")],
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 86_400.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow a task live: progress bar with epoch, loss, main metric and ETA.

    Exit 0 when the task completed, 1 when it failed, was cancelled or rejected (or
    is still running at --timeout), 3 when there is no such task, 4 when the gateway
    is unavailable. --json prints only the final state as JSON (no bar)."""
    t = target(url, api_key)
    url, token = t.url, t.token
    state = WatchState()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=as_json) as bar:
        tid = bar.add_task(state.state, total=None, info="")

        def redraw() -> None:
            done = state.total if state.state == "completed" else state.step
            bar.update(tid, description=state.state, total=state.total, completed=done or 0,
                       info=state.info())

        try:
            follow_events(url, task_id, token, state, redraw, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or _exists(url, task_id, token) is False:
                _report_http(exc)
            with api_errors(f"watch {task_id}"):
                poll_record(url, task_id, token, state, redraw, timeout)
        except (urllib.error.URLError, OSError) as exc:
            fail(f"watch {task_id}: gateway unreachable ({getattr(exc, 'reason', exc)})",
                 Exit.UNAVAILABLE)
    if as_json:
        typer.echo(json.dumps({"task_id": task_id, "state": state.state, **state.final},
                              default=str))
    else:
        _print_final(task_id, state)
        print_search(console, url, task_id, token)  # issue 18: a search's trials table
    if state.state != "completed":
        raise typer.Exit(int(Exit.FAILURE))


def _exists(url: str, task_id: str, token: str | None) -> bool:
    try:
        call("GET", f"{url}/v1/tasks/{task_id}", token=token)
    except Exception:
        return False
    return True


def _report_http(exc: urllib.error.HTTPError) -> None:
    """On stderr, with the exit code of the status (3 not found, 4 unavailable, else 1);
    never 2, which says the command line was wrong."""
    fail(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}", exit_code(exc))


def _print_final(task_id: str, state: WatchState) -> None:
    data = state.final
    if state.state == "completed":
        table = Table("metric", "value", title=f"task {task_id} completed")
        for name, value in sorted((data.get("metrics") or {}).items()):
            table.add_row(name, f"{value:.4f}")
        console.print(table)
        for art in data.get("artifacts") or []:
            console.print(f"  {art['name']:<24} sha256 {art['sha256'][:12]}  {art['uri']}")
    elif state.state in FINAL:
        why = data.get("message") or data.get("reason") or data.get("errors") or ""
        console.print(f"[red]task {task_id} {state.state}[/] {why}")
    else:
        console.print(f"[yellow]task {task_id} still {state.state}[/]")
