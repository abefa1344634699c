"""``radtrain replay``: re-publish chosen events, or show what re-enrichment would change."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from rich.console import Console

from infra.settings import Settings
from radtrain.cli.nats_session import open_js
from radtrain.oncall import replay as rp
from radtrain.oncall.reopen import current_user

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
    force: Annotated[bool, typer.Option(
        "--force", help="Re-open tasks that are running or ended as a new generation (a new "
                        "attempt) from their selected task.requested or task.ready.")] = False,
    by: Annotated[str | None, typer.Option(
        help="Who re-opens (recorded on the task; default: your user name).")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded on the task).")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many events.")] = 10_000,
) -> None:
    """Re-publish events of TASKS with a Radtrain-Replay-Of header naming each original.

    Consumers are idempotent (forward-only state, deterministic ids, one run per
    task), so copies of a running or ended task's events would change nothing:
    such a replay is refused. --force re-opens each such task instead: a
    task.redriven of generation n+1, then its task.requested (or task.ready)
    again with that generation; the task's record lists the redrive.
    """
    try:
        sel = rp.Selection(task_id=task, since=rp.parse_since(since) if since else None,
                           types=tuple(type_ or ()), limit=limit,
                           **_seq_range(seq))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    asyncio.run(_run(sel, dry_run, yes, Reopen(force, by or current_user(), reason)))


@dataclass(frozen=True)
class Reopen:
    force: bool
    by: str
    reason: str


def _seq_range(text: str | None) -> dict[str, int]:
    if text is None:
        return {}
    lo, hi = rp.parse_seq_range(text)
    return {"seq_from": lo, "seq_to": hi}


async def _run(sel: rp.Selection, dry_run: bool, yes: bool, opts: Reopen) -> None:
    settings = Settings()
    async with open_js(settings, identity="oncall") as js:
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
        plan = rp.plan(msgs, await rp.records(js, rp.task_ids(msgs)), force=opts.force)
        if plan.refused:
            for line in plan.refused:
                console.print(f"[red]refused[/]: {line}")
            console.print("nothing published")
            raise typer.Exit(1)
        await _publish(js, plan, yes, opts)


async def _publish(js: JetStreamContext, plan: rp.ReplayPlan, yes: bool, opts: Reopen) -> None:
    for line in plan.left_out:
        console.print(line)
    ask = " and ".join(part for part in (
        f"re-publish {len(plan.copies)} event(s)" if plan.copies else "",
        f"re-open {len(plan.reopen)} task(s) as a new generation" if plan.reopen else "") if part)
    if not yes and not typer.confirm(f"{ask}?"):
        raise typer.Abort()
    if plan.copies:
        seqs = await rp.publish(js, plan.copies)
        console.print(f"re-published {len(seqs)} event(s) as TASKS #{seqs[0]}..#{seqs[-1]}")
    for record, msg in plan.reopen:
        done = await rp.reopen(js, record, msg, by=opts.by, reason=opts.reason)
        note = " (already published: a duplicate)" if done.duplicate else ""
        console.print(f"task {done.task_id} re-opened as generation {done.generation}: "
                      f"task.redriven TASKS #{done.redriven_seq}, {msg.subject} again "
                      f"TASKS #{done.event_seq}{note}")


async def _dry_run(js: JetStreamContext, settings: Settings, msgs: list[RawStreamMsg]) -> None:
    console.print(f"[bold]dry run[/]: {len(msgs)} event(s) would be re-published; "
                  "re-enriching their tasks with today's catalog")
    reenrich = await _reenricher(js, settings)
    for task_id in rp.task_ids(msgs):
        cmp = await rp.compare(js, task_id, reenrich)
        head = f"task {task_id}: {cmp.before} -> {cmp.after}"
        if cmp.note:
            head += f" ({cmp.note})"
        console.print(f"[bold]{head}[/]" + ("" if cmp.differences else ": no difference"))
        for d in cmp.differences:
            console.print(f"  {d.path}: {_short(d.before)} -> {_short(d.after)}")


async def _reenricher(js: JetStreamContext, settings: Settings) -> rp.Reenrich:
    """The live enrich function, imported here only: the CLI is the entry layer (§2).
    A retrain is re-enriched with its base task, loaded as the enrich handler loads it."""
    from handlers.enrich import Rejected, enrich
    from handlers.enrich.handler import load_base_task
    from handlers.weights_index import StoreWeightsIndex
    from infra.kv import TaskRepo
    from infra.store import open_store

    store = open_store(settings, ensure_bucket=False)
    weights = StoreWeightsIndex(store)
    tasks = await TaskRepo.open(js)

    async def run(cmd: Any, dataset: Any) -> rp.Outcome:
        base = await load_base_task(tasks, store, cmd.base_task_id) \
            if cmd.flow == "retrain" and cmd.base_task_id else None
        try:
            spec = await asyncio.to_thread(enrich, cmd, dataset, weights, base)
        except Rejected as rej:
            return "rejected", {"errors": [e.model_dump(mode="json") for e in rej.errors]}
        return "ready", spec.model_dump(mode="json")

    return run


def _short(value: object, width: int = 70) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."
