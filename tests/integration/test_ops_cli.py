"""``radtrain status``, ``replay`` and ``dlq`` against a real nats-server, through the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from handlers.enrich import enrich
from handlers.enrich.handler import load_base_task
from handlers.weights_index import StoreWeightsIndex
from infra.bus import dead_letters as dlq
from infra.bus.publish import publish_event
from infra.bus.stream_read import scan
from infra.bus.topology import DLQ_STREAM, ENRICH, PROJECTOR, TASKS_STREAM, apply, connect
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from infra.store import LocalStore
from radtrain.cli.main import app
from schemas.events import (
    Artifact,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRedrivenEvent,
    TaskRequestedEvent,
    parse_event,
)
from schemas.record import TaskRecord
from tests.support.factories import dataset, request
from tests.support.nats_users import start_authenticated_nats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data = tmp_path_factory.mktemp("ops")
    users = start_authenticated_nats(data / "nats", port=0, sync_always=False)
    ONCALL_URL[:] = [users.oncall_url]
    yield Settings(nats_url=users.services_url, store_dir=data / "store")
    users.stop()


ONCALL_URL: list[str] = []
"""The commands run as on-call staff would: with the on-call identity only."""


def cli(settings: Settings, *args: str) -> Any:
    env = {"RADTRAIN_NATS_URL": ONCALL_URL[0], "RADTRAIN_STORE_DIR": str(settings.store_dir),
           "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


class World:
    """Task A: requested + a ready enriched by an older catalog (epochs 3, not today's).
    Task B: running, one progress event dead-lettered by the projector.
    Task C: failed; its request dead-lettered by enrich (and its record says failed).
    Task D: completed; a late enrich dead letter of its request.
    Task E: a retrain of completed task F, ready (enriched with F's spec and weights)."""

    def __init__(self) -> None:
        self.a, self.b, self.c, self.d, self.e, self.f = (uuid.uuid4().hex for _ in range(6))
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
            req_d = await publish_event(js, TaskRequestedEvent(
                source="t", subject=self.d, data=request(task_id=self.d)))
            await publish_event(js, TaskCompletedEvent(source="t", subject=self.d, data=(
                TaskCompleted(task_id=self.d, metrics={}, artifacts=[], duration_s=1.0))))
            tasks = await TaskRepo.open(js)  # what the projector (not running here) wrote
            for task_id, state in ((self.c, "failed"), (self.d, "completed")):
                await tasks.kv.put(task_id, TaskRecord(
                    task_id=task_id, tenant="default", name="n", state=state, flow="general",
                    dataset_id="ds", created_at=datetime.now(UTC), updated_at=datetime.now(UTC)))
            await self._retrain(js, settings, tasks)
            for key, consumer, seq in (("projector", PROJECTOR, progress.seq),
                                       ("enrich", ENRICH, req_c.seq),
                                       ("late", ENRICH, req_d.seq)):
                adv = dlq.Advisory("max_deliveries", TASKS_STREAM, consumer, seq, 5)
                letter = dlq.build_dead_letter(adv, await js.get_msg(TASKS_STREAM, seq), "boom")
                ack = await js.publish(letter.subject, letter.data, headers=letter.headers)
                self.dlq[key] = ack.seq
        finally:
            await nc.close()

    async def _retrain(self, js: Any, settings: Settings, tasks: TaskRepo) -> None:
        """F completed (its spec.json and weights in the store), E retrains it."""
        store = LocalStore(settings.store_dir)
        weights = StoreWeightsIndex(store)
        base_spec = enrich(request(task_id=self.f, dataset_id="ds-ops"), dataset(id="ds-ops"),
                           weights).model_dump_json().encode()
        arts = [Artifact(name=name, key=f"runs/{self.f}/{name}", uri=f"file:///{name}",
                         sha256=hashlib.sha256(body).hexdigest(), size=len(body))
                for name, body in (("spec.json", base_spec), ("model.safetensors", b"w"))]
        for art, body in zip(arts, (base_spec, b"w"), strict=True):
            store.put_bytes(art.key, body)
        now = datetime.now(UTC)
        await tasks.kv.put(self.f, TaskRecord(
            task_id=self.f, tenant="default", name="base", state="completed", flow="general",
            dataset_id="ds-ops", created_at=now, updated_at=now, artifacts=arts))
        cmd = request(task_id=self.e, flow="retrain", task_type=None, model=None,
                      base_task_id=self.f, dataset_id="ds-ops")
        base = await load_base_task(tasks, store, self.f)
        assert base is not None and base.spec is not None
        await publish_event(js, TaskRequestedEvent(source="t", subject=self.e, data=cmd))
        await publish_event(js, TaskReadyEvent(source="t", subject=self.e, data=enrich(
            cmd, dataset(id="ds-ops"), weights, base)))

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
    assert doc["dlq_size"] == 3
    enrich_c = next(c for c in doc["consumers"] if c["name"] == ENRICH)
    assert enrich_c["pending"] >= 3 and enrich_c["oldest_unacked_seq"] == 1
    assert enrich_c["oldest_unacked_age_s"] >= 0 and enrich_c["max_deliver"] == 5
    assert {"TASKS", "DLQ", "ADVISORIES", "WEBHOOKS"} <= {s["name"] for s in doc["streams"]}
    assert any("dead letter" in p for p in doc["problems"])
    human = cli(settings, "status", "--strict")
    assert human.exit_code == 1 and "dead letters: 3" in human.output
    assert "ack pending" in human.output


def test_dry_run_reenriches_and_publishes_nothing(settings: Settings, world: World) -> None:
    before = asyncio.run(world.messages(settings, ">"))
    out = cli(settings, "replay", "--task", world.a, "--dry-run")
    assert out.exit_code == 0, out.output
    assert f"task {world.a}: ready -> ready" in out.output
    assert "hyperparameters.epochs" in out.output
    assert len(asyncio.run(world.messages(settings, ">"))) == len(before)


def test_dry_run_of_a_retrain_reenriches_with_its_base_task(
        settings: Settings, world: World) -> None:
    out = cli(settings, "replay", "--task", world.e, "--dry-run")
    assert out.exit_code == 0, out.output
    assert f"task {world.e}: ready -> ready: no difference" in out.output, out.output
    assert "base_task_not_found" not in out.output


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
    assert {(d["consumer"], d["task_id"]) for d in listed} == {
        (PROJECTOR, world.b), (ENRICH, world.c), (ENRICH, world.d)}
    assert all(d["error"] == "boom" and d["deliveries"] == 5 for d in listed)
    shown = cli(settings, "dlq", "show", str(world.dlq["projector"]), "--json")
    doc = json.loads(shown.output)
    assert doc["headers"][dlq.H_CONSUMER] == PROJECTOR and doc["body"]["subject"] == world.b
    assert cli(settings, "dlq", "show", "9999").exit_code == 3  # not found (issue 17)

    out = cli(settings, "dlq", "redrive", "--all", "--yes", "--by", "alice",
              "--reason", "enrich fixed")
    assert out.exit_code == 0, out.output
    # A projector letter is published again as it is.
    redriven = asyncio.run(world.messages(settings, f"tasks.progress.{world.b}"))
    assert len(redriven) == 2 and redriven[1].data == redriven[0].data
    assert redriven[1].headers[dlq.REDRIVE_OF] == f"{DLQ_STREAM}:{world.dlq['projector']}"
    # The failed task's letter re-opens it: task.redriven of generation 2, then its request.
    assert (f"redrove {world.dlq['enrich']}: task {world.c} re-opened as generation 2 "
            "(failed -> requested)") in out.output
    [red] = asyncio.run(world.messages(settings, f"tasks.redriven.{world.c}"))
    event = parse_event(red.data)
    assert isinstance(event, TaskRedrivenEvent) and event.taskgeneration == 2
    assert (event.data.by, event.data.reason, event.data.dead_letter_seq) == (
        "alice", "enrich fixed", world.dlq["enrich"])
    original, again = asyncio.run(world.messages(settings, f"tasks.requested.{world.c}"))
    assert again.seq > red.seq and parse_event(again.data).taskgeneration == 2
    assert parse_event(again.data).data == parse_event(original.data).data
    assert again.headers["Nats-Msg-Id"] == f"{world.c}:requested:g2"
    assert again.headers[dlq.REDRIVE_OF] == f"{DLQ_STREAM}:{world.dlq['enrich']}"
    # The completed task's late letter is left alone.
    assert f"skip {world.dlq['late']}: task {world.d} already completed" in out.output
    assert len(asyncio.run(world.messages(settings, f"tasks.requested.{world.d}"))) == 1
    left = json.loads(cli(settings, "dlq", "list", "--json").output)
    assert [(d["consumer"], d["task_id"]) for d in left] == [(ENRICH, world.d)]

    assert cli(settings, "dlq", "purge", "--consumer", ENRICH, "--yes").exit_code == 0
    assert json.loads(cli(settings, "dlq", "list", "--json").output) == []
    assert "no dead letters" in cli(settings, "dlq", "list").output
