"""``radtrain status``: streams, consumers and dead letters at a glance, for on-call."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import Settings
from radtrain.cli.client import JsonOpt
from radtrain.cli.nats_session import open_js
from radtrain.oncall.health import Health, assess, collect

console = Console()


def status(as_json: JsonOpt = False,
           strict: Annotated[bool, typer.Option(help="Exit 1 when something needs a person.")
                             ] = False) -> None:
    """Pending, redelivered and ack-pending per consumer, DLQ size, oldest unacked message."""
    async def run() -> Health:
        async with open_js(Settings(), identity="oncall") as js:
            return await collect(js)

    health = asyncio.run(run())
    problems = assess(health)
    if as_json:
        console.print_json(json.dumps(health.as_dict()))
    else:
        _print(health, problems)
    if strict and problems:
        raise typer.Exit(1)


def _print(health: Health, problems: list[str]) -> None:
    streams = Table("stream", "messages", "bytes", "first", "last", title="streams")
    for s in health.streams:
        streams.add_row(s.name, str(s.messages), str(s.bytes), str(s.first_seq), str(s.last_seq))
    consumers = Table("stream", "consumer", "pending", "ack pending", "redelivered", "waiting",
                      "max deliver", "oldest unacked", title="consumers")
    for c in health.consumers:
        oldest = ("-" if c.oldest_unacked_seq is None else
                  f"#{c.oldest_unacked_seq} ({_age(c.oldest_unacked_age_s)})")
        consumers.add_row(c.stream, c.name, str(c.pending), str(c.ack_pending),
                          str(c.redelivered), str(c.waiting), str(c.max_deliver), oldest)
    console.print(streams, consumers)
    console.print(f"dead letters: [bold]{health.dlq_size}[/]")
    for line in problems or ["all consumers keeping up"]:
        console.print(("[yellow]! [/]" if problems else "") + line)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
