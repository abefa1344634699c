"""A search's trials as a table (issue 18), for ``radtrain watch`` of a search parent.

Reads ``GET /v1/tasks/{id}/search``; a task that is not a search answers 404 and
prints nothing.
"""

from __future__ import annotations

import urllib.error
from typing import Any

from rich.console import Console
from rich.table import Table

from radtrain.cli.client import ApiCallError, call

STYLE = {"complete": "green", "pruned": "yellow", "failed": "red", "stopped": "dim",
         "running": "cyan"}


def fetch_search(url: str, task_id: str, token: str | None) -> dict[str, Any] | None:
    """The search view, or ``None`` for a task that is not a search (or no gateway)."""
    try:
        _, body, _ = call("GET", f"{url}/v1/tasks/{task_id}/search", token=token)
    except (ApiCallError, urllib.error.URLError, OSError):
        return None
    return body if isinstance(body, dict) else None


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def search_table(view: dict[str, Any]) -> Table:
    best = view.get("best")
    title = (f"search {view['task_id']}: {view['status']}, {view['direction']} "
             f"{view['objective']}" + (f", best trial {best} ({_fmt(view.get('best_value'))})"
                                       if best is not None else ""))
    table = Table("trial", "state", view["objective"], "values", "note", title=title)
    for row in view.get("trials", []):
        mark = " *" if row["number"] == best else ""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(row["params"].items()))
        value = "" if row.get("value") is None else _fmt(row["value"])
        table.add_row(f"{row['number']}{mark}", f"[{STYLE.get(row['state'], '')}]"
                      f"{row['state']}[/]", value, params, row.get("note", ""))
    return table


def print_search(console: Console, url: str, task_id: str, token: str | None) -> None:
    view = fetch_search(url, task_id, token)
    if view is not None:
        console.print(search_table(view))
