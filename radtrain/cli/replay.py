"""``radtrain replay``: re-publish chosen events, or show what re-enrichment would change."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from rich.console import Console

from infra.settings import Settings
from radtrain.cli.nats_session import open_js
from radtrain.oncall import replay as rp

console = Console()


def replay(
    task: Annotated[str | None, typer.Option(help="Every event of this task.")] = None,
    seq: Annotated[str | None, typer.Option(help="A:B, stream sequences (inclusive).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Events stored since a time (2026-01-31T12:00:00Z) or for a while (30m, 2h, 1d).")
                     ] = None,
    type_: Annotated[list[str] | None, typer.Option(
        "--type", help="Only these event types (requested, ready, ...); repeatable.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Publish nothing; re-enrich with today's catalog and show the "
                          "difference from the original task.ready.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many events.")] = 10_000,
) -> None:
    """Re-publish events of TASKS with a Radtrain-Replay-Of header naming each original.

    Consumers are idempotent (forward-only state, deterministic ids, the runner's
    fence), so a replay never trains a finished task again.
    """
    try:
        sel = rp.Selection(task_id=task, since=rp.parse_since(since) if since else None,
                           types=tuple(type_ or ()), limit=limit,
                           **_seq_range(seq))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    asyncio.run(_run(sel, dry_run, yes))


def _seq_range(text: str | None) -> dict[str, int]:
    if text is None:
        return {}
    lo, hi = rp.parse_seq_range(text)
    return {"seq_from": lo, "seq_to": hi}


async def _run(sel: rp.Selection, dry_run: bool, yes: bool) -> None:
    settings = Settings()
    async with open_js(settings) as js:
        msgs = await rp.select(js, sel)
        if not msgs:
            console.print("nothing selected")
            return
        for msg in msgs:
            console.print(f"  #{msg.seq} {msg.subject} "
                          f"{msg.time.isoformat()[:19] if msg.time else ''}")
        if dry_run:
            await _dry_run(js, settings, msgs)
            return
        if not yes and not typer.confirm(f"re-publish these {len(msgs)} event(s)?"):
            raise typer.Abort()
        seqs = await rp.publish(js, msgs)
        console.print(f"re-published {len(seqs)} event(s) as TASKS #{seqs[0]}..#{seqs[-1]}")


async def _dry_run(js: JetStreamContext, settings: Settings, msgs: list[RawStreamMsg]) -> None:
    console.print(f"[bold]dry run[/]: {len(msgs)} event(s) would be re-published; "
                  "re-enriching their tasks with today's catalog")
    reenrich = _reenricher(settings)
    for task_id in rp.task_ids(msgs):
        cmp = await rp.compare(js, task_id, reenrich)
        head = f"task {task_id}: {cmp.before} -> {cmp.after}"
        if cmp.note:
            head += f" ({cmp.note})"
        console.print(f"[bold]{head}[/]" + ("" if cmp.differences else ": no difference"))
        for d in cmp.differences:
            console.print(f"  {d.path}: {_short(d.before)} -> {_short(d.after)}")


def _reenricher(settings: Settings) -> rp.Reenrich:
    """The live enrich function, imported here only: the CLI is the entry layer (§2)."""
    from handlers.enrich import Rejected, enrich
    from handlers.weights_index import StoreWeightsIndex
    from infra.store import open_store

    weights = StoreWeightsIndex(open_store(settings, ensure_bucket=False))

    def run(cmd: Any, dataset: Any) -> rp.Outcome:
        try:
            return "ready", enrich(cmd, dataset, weights).model_dump(mode="json")
        except Rejected as rej:
            return "rejected", {"errors": [e.model_dump(mode="json") for e in rej.errors]}

    return run


def _short(value: object, width: int = 70) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."
