"""``radtrain dlq list|show|redrive|purge``: the dead letters, for on-call."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.bus.dead_letters import StoredDeadLetter
from infra.settings import Settings
from radtrain.cli.client import Exit, JsonOpt, fail
from radtrain.cli.nats_session import open_js
from radtrain.oncall.dead_letter_ops import Redriver, get_dead_letter, list_dead_letters, purge
from radtrain.oncall.reopen import current_user

dlq_app = typer.Typer(no_args_is_help=True,
                      help="Dead letters: messages that exhausted their deliveries, or poison.")
console = Console()

ConsumerOpt = Annotated[str | None, typer.Option("--consumer", "-c",
                                                 help="Only this consumer's dead letters.")]


@dlq_app.command("list")
def list_cmd(consumer: ConsumerOpt = None,
             task: Annotated[str | None, typer.Option(help="Only this task's.")] = None,
             limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
             as_json: JsonOpt = False) -> None:
    """Oldest first: sequence, consumer, task, why and how often it was tried."""
    async def run() -> list[StoredDeadLetter]:
        async with open_js(Settings(), identity="oncall") as js:
            return await list_dead_letters(js, consumer, task, limit)

    letters = asyncio.run(run())
    if as_json:
        console.print_json(json.dumps([d.summary() for d in letters]))
        return
    table = Table("seq", "time", "consumer", "task", "reason", "tries", "error")
    for d in letters:
        s = d.summary()
        table.add_row(str(s["seq"]), (s["time"] or "")[:19], s["consumer"], s["task_id"] or "-",
                      s["reason"], str(s["deliveries"]), s["error"][:80])
    console.print(table if letters else "no dead letters")


@dlq_app.command("show")
def show(seq: int, as_json: JsonOpt = False) -> None:
    """Every header and the original body of one dead letter."""
    letter = asyncio.run(_get(seq))
    body: object
    try:
        body = json.loads(letter.data)
    except ValueError:
        body = letter.data.decode("utf-8", "replace")
    doc = {**letter.summary(), "headers": letter.headers, "body": body}
    if as_json:
        console.print_json(json.dumps(doc, default=str))
        return
    for key, value in letter.headers.items():
        console.print(f"[bold]{key}[/]: {value}")
    if isinstance(body, str):
        console.print(body)
    else:
        console.print_json(json.dumps(body))


async def _get(seq: int) -> StoredDeadLetter:
    async with open_js(Settings(), identity="oncall") as js:
        letter = await get_dead_letter(js, seq)
    if letter is None:
        fail(f"no dead letter {seq}", Exit.NOT_FOUND)
    return letter


@dlq_app.command("redrive")
def redrive_cmd(
    seqs: Annotated[list[int] | None, typer.Argument(help="DLQ sequences (see `dlq list`).")
                    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter (of --consumer).")
                    ] = False,
    consumer: ConsumerOpt = None,
    force: Annotated[bool, typer.Option(
        help="Also re-open tasks that completed, were cancelled or rejected, are running, "
             "or were re-opened since the letter.")] = False,
    by: Annotated[str | None, typer.Option(
        help="Who redrives (recorded on the task; default: your user name).")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded on the task).")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Run the originals again (after fixing the cause) and drop the dead letters.

    A dead letter of enrich or runner failed its task: its task is re-opened as a
    new generation (task.redriven, then the letter's event again), so it goes
    back to requested/ready and its record lists the redrive. A task that ended
    otherwise, or is running, is skipped unless --force. Other consumers'
    letters (projector, webhooks) are published again as they are.
    """
    if not seqs and not all_:
        raise typer.BadParameter("give DLQ sequences or --all")
    if not yes and not typer.confirm(f"redrive {'all' if all_ else len(seqs or [])} "
                                     "dead letter(s)?"):
        raise typer.Abort()
    asyncio.run(_redrive(seqs or [], all_, consumer, force, by or current_user(), reason))


async def _redrive(seqs: list[int], all_: bool, consumer: str | None, force: bool,
                   by: str, reason: str) -> None:
    async with open_js(Settings(), identity="oncall") as js:
        letters = (await list_dead_letters(js, consumer, limit=100_000) if all_ else
                   [d for d in [await get_dead_letter(js, s) for s in seqs] if d is not None])
        redriver = await Redriver.open(js, by=by, reason=reason, force=force)
        for letter in letters:
            done = await redriver.redrive(letter)
            if done.action == "skipped":
                console.print(f"skip {done.seq}: {done.detail} (--force to redrive anyway)")
            else:
                console.print(f"redrove {done.seq}: {done.detail}")


@dlq_app.command("purge")
def purge_cmd(consumer: ConsumerOpt = None,
              yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
              ) -> None:
    """Delete dead letters for good (all, or one consumer's)."""
    what = f"{consumer}'s dead letters" if consumer else "ALL dead letters"
    if not yes and not typer.confirm(f"delete {what}?"):
        raise typer.Abort()

    async def run() -> int:
        async with open_js(Settings(), identity="oncall") as js:
            return await purge(js, consumer)

    console.print(f"purged {asyncio.run(run())} dead letter(s)")
