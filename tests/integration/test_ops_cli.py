"""``radtrain status``, ``replay`` and ``dlq`` against a real nats-server, through the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from handlers.enrich import enrich
from handlers.weights_index import StoreWeightsIndex
from infra.bus import dead_letters as dlq
from infra.bus.publish import publish_event
from infra.bus.stream_read import scan
from infra.bus.topology import DLQ_STREAM, ENRICH, PROJECTOR, TASKS_STREAM, apply, connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import LocalStore
from radtrain.cli.main import app
from radtrain.servers.nats import start_nats
from schemas.events import (
    TaskFailed,
    TaskFailedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRequestedEvent,
)
from tests.support.factories import dataset, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data = tmp_path_factory.mktemp("ops")
    proc, url = start_nats(data / "nats", port=0, sync_always=False)
    yield Settings(nats_url=url, store_dir=data / "store")
    proc.stop()


def cli(settings: Settings, *args: str) -> Any:
    env = {"RADTRAIN_NATS_URL": settings.nats_url, "RADTRAIN_STORE_DIR": str(settings.store_dir),
           "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


class World:
    """Task A: requested + a ready enriched by an older catalog (epochs 3, not today's).
    Task B: running, one progress event dead-lettered by the projector.
    Task C: failed; its request dead-lettered by enrich."""

    def __init__(self) -> None:
        self.a, self.b, self.c = (uuid.uuid4().hex for _ in range(3))
        self.dlq: dict[str, int] = {}

    async def build(self, settings: Settings) -> None:
        nc, js = await connect(settings, "test-ops")
        try:
            await apply(js, settings)
            await (await DatasetRepo.open(js)).put(dataset(id="ds-ops"))
            cmd = request(task_id=self.a, dataset_id="ds-ops")
            await publish_event(js, TaskRequestedEvent(source="t", subject=self.a, data=cmd))
            spec = enrich(cmd, dataset(id="ds-ops"), StoreWeightsIndex(
                LocalStore(settings.store_dir)))
            old = spec.model_copy(update={"hyperparameters": spec.hyperparameters.model_copy(
                update={"epochs": spec.hyperparameters.epochs + 7})})
            await publish_event(js, TaskReadyEvent(source="t", subject=self.a, data=old))
            progress = await publish_event(js, TaskProgressEvent(
                source="t", subject=self.b,
                data=TaskProgress(task_id=self.b, epoch=1, epochs=2, step=3, total_steps=9)))
            req_c = await publish_event(js, TaskRequestedEvent(
                source="t", subject=self.c, data=request(task_id=self.c)))
            await publish_event(js, TaskFailedEvent(source="t", subject=self.c, data=TaskFailed(
                task_id=self.c, code="dead_letter", message="m", retryable=False)))
            for consumer, seq in ((PROJECTOR, progress.seq), (ENRICH, req_c.seq)):
                adv = dlq.Advisory("max_deliveries", TASKS_STREAM, consumer, seq, 5)
                letter = dlq.build_dead_letter(adv, await js.get_msg(TASKS_STREAM, seq), "boom")
                ack = await js.publish(letter.subject, letter.data, headers=letter.headers)
                self.dlq[consumer] = ack.seq
        finally:
            await nc.close()

    async def messages(self, settings: Settings, subject: str) -> list[Any]:
        nc, js = await connect(settings, "test-ops")
        try:
            return [m async for m in scan(js, TASKS_STREAM, subject=subject)]
        finally:
            await nc.close()


@pytest.fixture(scope="module")
def world(settings: Settings) -> World:
    w = World()
    asyncio.run(w.build(settings))
    return w


def test_status_reports_consumers_and_dead_letters(settings: Settings, world: World) -> None:
    out = cli(settings, "status", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["dlq_size"] == 2
    enrich_c = next(c for c in doc["consumers"] if c["name"] == ENRICH)
    assert enrich_c["pending"] >= 2 and enrich_c["oldest_unacked_seq"] == 1
    assert enrich_c["oldest_unacked_age_s"] >= 0 and enrich_c["max_deliver"] == 5
    assert {"TASKS", "DLQ", "ADVISORIES", "WEBHOOKS"} <= {s["name"] for s in doc["streams"]}
    assert any("dead letter" in p for p in doc["problems"])
    human = cli(settings, "status", "--strict")
    assert human.exit_code == 1 and "dead letters: 2" in human.output
    assert "ack pending" in human.output


def test_dry_run_reenriches_and_publishes_nothing(settings: Settings, world: World) -> None:
    before = asyncio.run(world.messages(settings, ">"))
    out = cli(settings, "replay", "--task", world.a, "--dry-run")
    assert out.exit_code == 0, out.output
    assert f"task {world.a}: ready -> ready" in out.output
    assert "hyperparameters.epochs" in out.output
    assert len(asyncio.run(world.messages(settings, ">"))) == len(before)


def test_replay_republishes_with_a_header_naming_the_original(
        settings: Settings, world: World) -> None:
    out = cli(settings, "replay", "--task", world.a, "--type", "requested", "--yes")
    assert out.exit_code == 0, out.output
    copies = asyncio.run(world.messages(settings, f"tasks.requested.{world.a}"))
    assert len(copies) == 2
    original, copy = copies
    assert copy.data == original.data
    assert copy.headers[dlq.REPLAY_OF] == f"TASKS:{original.seq}"
    assert copy.headers["Nats-Msg-Id"].startswith(f"{world.a}:requested:replay:")
    bad = cli(settings, "replay", "--seq", "9:2")
    assert bad.exit_code == 2 and "A:B" in bad.output
    both = cli(settings, "replay", "--task", world.a, "--since", "1h")
    assert both.exit_code == 2
    none = cli(settings, "replay", "--since", "2000-01-01T00:00:00Z", "--type", "cancelled",
               "--yes")
    assert none.exit_code == 0 and "nothing selected" in none.output


def test_dlq_list_show_redrive_purge(settings: Settings, world: World) -> None:
    listed = json.loads(cli(settings, "dlq", "list", "--json").output)
    assert {(d["consumer"], d["task_id"]) for d in listed} == {(PROJECTOR, world.b),
                                                              (ENRICH, world.c)}
    assert all(d["error"] == "boom" and d["deliveries"] == 5 for d in listed)
    shown = cli(settings, "dlq", "show", str(world.dlq[PROJECTOR]), "--json")
    doc = json.loads(shown.output)
    assert doc["headers"][dlq.H_CONSUMER] == PROJECTOR and doc["body"]["subject"] == world.b
    assert cli(settings, "dlq", "show", "9999").exit_code == 1

    out = cli(settings, "dlq", "redrive", "--all", "--yes")
    assert out.exit_code == 0, out.output
    assert f"skip {world.dlq[ENRICH]}: task {world.c} already failed" in out.output
    redriven = asyncio.run(world.messages(settings, f"tasks.progress.{world.b}"))
    assert len(redriven) == 2 and redriven[1].data == redriven[0].data
    assert redriven[1].headers[dlq.REDRIVE_OF] == f"{DLQ_STREAM}:{world.dlq[PROJECTOR]}"
    left = json.loads(cli(settings, "dlq", "list", "--json").output)
    assert [d["consumer"] for d in left] == [ENRICH]

    assert cli(settings, "dlq", "purge", "--consumer", ENRICH, "--yes").exit_code == 0
    assert json.loads(cli(settings, "dlq", "list", "--json").output) == []
    assert "no dead letters" in cli(settings, "dlq", "list").output
