"""Faults on a real stack: kill -9 and SIGTERM of a training runner, and cancellation.

The gateway and handlers run as services (``start_stack``); each test starts
its runners itself as ``python -m runner`` subprocesses, so it can kill them.
The runner consumer's ack wait is short (Settings.ack_wait_s), so a killed
runner's message comes back in seconds.

Injected, expected, observed (asserted):
- kill -9 after the epoch-1 checkpoint -> a second runner resumes from it
  (task.started says resumed_from_epoch >= 1), exactly one task.completed,
  every epoch once in history.csv, at most one epoch trained twice;
- SIGSTOP in the last epoch, redelivery, the replacement completes, SIGCONT -> the
  stalled runner is fenced: it publishes nothing, settles nothing, and every recorded
  artifact (under the committing attempt's prefix) still has the recorded sha256;
- a second task.ready (another msg id) and a replay of a running task -> acked and
  ignored by the idle runner, one attempt, one task.completed, ledger unchanged;
- five SIGTERMs, each resumed by the next runner -> attempts 1..6, five preemptions,
  no failure counted, one task.completed from the checkpoints;
- SIGTERM mid-epoch -> a checkpoint of that exact position, exit 0, nak, and
  the next runner resumes from it;
- cancel while training -> task.cancelled within a few seconds, checkpoint kept,
  message acked (no redelivery); cancel before any runner -> skipped, cancelled.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from nats.js.errors import NotFoundError
from rich.console import Console

from infra.bus.dead_letters import REPLAY_OF
from infra.bus.topology import DISPATCH_STREAM, TASKS_STREAM, connect, runner_consumer
from infra.kv import RunRepo
from infra.settings import Settings
from infra.store import LocalStore
from radtrain.cli.client import call
from radtrain.cli.demo import build_demo_dataset
from radtrain.stack import Stack, start_stack
from runner.checkpoint import KEEP, checkpoint_key, newest_key, stored_attempts
from schemas.events import Envelope, parse_event
from schemas.runs import RunLedger

pytestmark = pytest.mark.e2e
T = TypeVar("T")
FINAL = {"completed", "failed", "cancelled", "rejected"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("resume")
    settings = Settings(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, nats_sync_always=False, progress_interval_s=0.2,
        heartbeat_s=0.5, ack_wait_s=3.0, cancel_poll_s=0.3, log_format="text")
    st = start_stack(settings, services=("gateway", "handlers"))
    yield st
    st.stop()


@pytest.fixture(scope="module")
def dataset_id(stack: Stack) -> str:
    ds = f"rs-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ds, n_cases=24, seed=3, console=Console(quiet=True))
    return ds


class Runners:
    """Runner subprocesses of one test, each with its own id and log."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.procs = stack, []  # type: ignore[var-annotated]

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = dict(self.stack.env, RADTRAIN_RUNNER_ID=name)
        log = (self.stack.settings.data_dir / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "runner"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.stack.settings.data_dir / "logs" / f"{name}.log").read_text(errors="replace")

    def start_ready(self, *names: str) -> dict[str, subprocess.Popen[bytes]]:
        """Start runners side by side and wait until each one waits for tasks."""
        procs = {name: self.start(name) for name in names}
        for name in names:
            wait_for(lambda n=name: "waiting for tasks" in self.log(n) or None, 120, name)
        return procs

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def runners(stack: Stack) -> Iterator[Runners]:
    r = Runners(stack)
    yield r
    r.stop_all()


def submit(stack: Stack, dataset_id: str, epochs: int) -> str:
    body = {"name": "fault", "flow": "general", "task_type": "classification",
            "dataset_id": dataset_id,
            "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": epochs, "image_size": 64, "batch_size": 4, "seed": 1,
                "augmentation": "none"}}}
    _, accepted, _ = call("POST", f"{stack.gateway_url}/v1/tasks", body, token=stack.api_key)
    return str(accepted["task_id"])


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def record(stack: Stack, task_id: str) -> dict[str, Any]:
    return dict(call("GET", f"{stack.gateway_url}/v1/tasks/{task_id}", token=stack.api_key)[1])


def history(stack: Stack, task_id: str) -> list[Envelope]:
    async def read() -> list[Envelope]:
        nc, js = await connect(stack.settings, "fault-history")
        try:
            out: list[Envelope] = []
            seq = 1
            while True:  # only this task's messages: one request each, not one per stream seq
                try:
                    msg = await js.get_msg(TASKS_STREAM, seq, subject=f"tasks.*.{task_id}",
                                           next=True)
                except NotFoundError:
                    return out
                out.append(parse_event(msg.data or b""))
                seq = int(msg.seq or 0) + 1
        finally:
            await nc.close()
    return asyncio.run(read())


def latest(stack: Stack, task_id: str, name: str) -> tuple[int, Any] | None:
    """The task's last event of one kind and its stream seq (one request, for polling)."""
    async def read() -> tuple[int, Any] | None:
        nc, js = await connect(stack.settings, "fault-latest")
        try:
            msg = await js.get_last_msg(TASKS_STREAM, f"tasks.{name}.{task_id}")
        except NotFoundError:
            return None
        finally:
            await nc.close()
        return int(msg.seq or 0), parse_event(msg.data or b"")
    return asyncio.run(read())


def named(events: list[Envelope], name: str) -> list[Any]:
    return [e for e in events if e.name == name]


def checkpoint_epoch(stack: Stack, task_id: str) -> int | None:
    store = LocalStore(stack.settings.store_dir)
    key = newest_key(store, task_id)  # the newest attempt's: what the next one resumes from
    if key is None:
        return None
    try:
        state = torch.load(store.root / key, map_location="cpu", weights_only=True)
    except Exception:  # replaced while we read it
        return None
    return int(state["epoch"])


def run_ledger(stack: Stack, task_id: str) -> RunLedger | None:
    async def read() -> RunLedger | None:
        nc, js = await connect(stack.settings, "fault-ledger")
        try:
            found = await (await RunRepo.open(js)).get(task_id)
            return found[0] if found else None
        finally:
            await nc.close()
    return asyncio.run(read())


def publish_ready_again(stack: Stack, task_id: str, headers: dict[str, str]) -> int:
    """The task's task.ready, published again as-is under other headers (msg id) on the
    pool's queue, as a copy that came after the dispatcher's duplicate window: its seq."""
    async def send() -> int:
        nc, js = await connect(stack.settings, "fault-again")
        try:
            raw = await js.get_last_msg(TASKS_STREAM, f"tasks.ready.{task_id}")
            ack = await js.publish(f"dispatch.cpu.{task_id}", raw.data or b"", headers=headers)
            assert not ack.duplicate
            return int(ack.seq)
        finally:
            await nc.close()
    return asyncio.run(send())


def ready_seq(stack: Stack, task_id: str) -> int:
    """The DISPATCH sequence of the task's first copy on its pool's queue (the runner's
    ownership check names it)."""
    async def read() -> int:
        nc, js = await connect(stack.settings, "fault-seq")
        try:
            first = await js.get_msg(DISPATCH_STREAM, seq=1, subject=f"dispatch.cpu.{task_id}",
                                     next=True)
            return int(first.seq or 0)
        finally:
            await nc.close()
    return asyncio.run(read())


def download(stack: Stack, task_id: str, name: str) -> bytes:
    req = urllib.request.Request(f"{stack.gateway_url}/v1/tasks/{task_id}/artifacts/{name}",
                                 headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


def ack_pending(stack: Stack) -> int:
    async def read() -> int:
        nc, js = await connect(stack.settings, "fault-consumer")
        try:
            info = await js.consumer_info(DISPATCH_STREAM, runner_consumer("cpu"))
            return int(info.num_ack_pending)
        finally:
            await nc.close()
    return asyncio.run(read())


def test_kill_9_then_a_second_runner_finishes_from_the_checkpoint(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    first = runners.start("runner-a")
    task_id = submit(stack, dataset_id, epochs=8)
    killed_at = wait_for(lambda: checkpoint_epoch(stack, task_id), 120, "a checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert killed_at >= 1
    runners.start("runner-b")
    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 180, "end")
    assert final["state"] == "completed", final

    events = history(stack, task_id)
    assert len(named(events, "completed")) == 1
    started = named(events, "started")
    assert [s.data.attempt for s in started] == [1, 2]
    resumed = started[-1].data.resumed_from_epoch
    assert resumed is not None and resumed >= killed_at >= 1
    assert started[-1].data.runner_id == "runner-b"
    csv_key = next(a["key"] for a in final["artifacts"] if a["name"] == "history.csv")
    rows = list(csv.DictReader(io.StringIO(LocalStore(stack.settings.store_dir)
                                           .get_bytes(csv_key).decode())))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))  # each epoch once in the result
    # epochs trained twice = those runner A finished past its checkpoint (0) plus the one
    # it was in when killed: at most one
    epochs_a = {p.data.epoch for p in named(events, "progress") if p.data.metrics
                and p.time < started[-1].time}
    assert max(epochs_a, default=0) <= resumed + 1
    print(f"kill -9 after checkpoint epoch {killed_at}; resumed_from_epoch {resumed}; "
          f"runner A reached epoch {max(epochs_a, default=0)}; completed events 1")


def test_a_runner_stalled_in_its_last_epoch_changes_nothing_when_it_wakes_up(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    """SIGSTOP in the last epoch (a stall past the ack wait), redelivery to the other
    runner, which completes; SIGCONT: the stalled one must stop on its own, publish nothing
    and settle nothing, and no committed artifact changes (what is served and stored has
    the recorded sha256)."""
    epochs = 3
    procs = runners.start_ready("runner-g", "runner-h")
    task_id = submit(stack, dataset_id, epochs=epochs)
    _, first = wait_for(lambda: latest(stack, task_id, "started"), 120, "started")
    name = first.data.runner_id
    other = next(n for n in procs if n != name)
    stalled = procs[name]
    wait_for(lambda: checkpoint_epoch(stack, task_id) == epochs - 1 or None, 120, "last epoch")
    stalled.send_signal(signal.SIGSTOP)
    try:
        final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 180,
                         "the replacement to finish")
    finally:
        stalled.send_signal(signal.SIGCONT)
    assert final["state"] == "completed" and final["attempt"] == 2, final
    wait_for(lambda: "left unsettled" in runners.log(name) or None, 60,
             "the stalled attempt to end, fenced, without settling its message")
    events = history(stack, task_id)
    completed = named(events, "completed")
    assert len(completed) == 1 and completed[0].data.attempt == 2
    assert events[-1].name == "completed"  # nothing published after it woke up
    assert [s.data.runner_id for s in named(events, "started")] == [name, other]
    ledger = run_ledger(stack, task_id)
    assert ledger is not None and (ledger.state, ledger.attempt, ledger.failures) == (
        "completed", 2, 1)
    assert ledger.committed == completed[0].data
    store = LocalStore(stack.settings.store_dir)
    for art in final["artifacts"]:
        assert art["key"].startswith(f"runs/{task_id}/attempts/2/"), art
        served = download(stack, task_id, art["name"])
        assert hashlib.sha256(served).hexdigest() == art["sha256"], art["name"]
        assert hashlib.sha256(store.get_bytes(art["key"])).hexdigest() == art["sha256"]
    # Whatever the stalled attempt wrote went to its own folder: the newest is attempt 2's,
    # unless the stop landed after the last epoch's checkpoint (a slow poll of it on a
    # busy machine): attempt 2 then resumed with nothing left to train and wrote none.
    trained_nothing = f"resumes from attempt 1's checkpoint (epoch {epochs})" in runners.log(
        other)
    assert newest_key(store, task_id) == checkpoint_key(task_id, 1 if trained_nothing else 2)
    assert stalled.poll() is None  # it lives on and takes other work
    print(f"stalled in epoch {epochs} of {epochs}; fenced after waking; attempt 2 committed "
          f"{len(final['artifacts'])} artifacts, all served with their recorded sha256")


def test_a_second_ready_and_a_replay_of_a_running_task_make_one_run(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    names = ("runner-one-a", "runner-one-b")
    runners.start_ready(*names)
    task_id = submit(stack, dataset_id, epochs=6)
    started = wait_for(lambda: named(history(stack, task_id), "started"), 120, "started")
    trainer = started[0].data.runner_id
    idle = next(n for n in names if n != trainer)
    again = publish_ready_again(stack, task_id, {"Nats-Msg-Id": f"{task_id}:ready:again"})
    replayed = publish_ready_again(stack, task_id, {
        "Nats-Msg-Id": f"{task_id}:ready:replay:t1", REPLAY_OF: f"{TASKS_STREAM}:1"})
    wait_for(lambda: runners.log(idle).count("task.ready ignored") == 2 or None, 60,
             "the idle runner to ignore both")
    ignored = [line for line in runners.log(idle).splitlines() if "task.ready ignored" in line]
    assert f"seq {again}" in ignored[0] and f"seq {replayed}" in ignored[1]
    assert all("attempt 1 of seq" in line and "is running" in line for line in ignored)
    during = run_ledger(stack, task_id)
    assert during is not None and during.attempt == 1 and during.runner_id == trainer
    assert during.owner_seq == ready_seq(stack, task_id) not in (again, replayed)

    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 180, "end")
    assert final["state"] == "completed" and final["attempt"] == 1, final
    late = publish_ready_again(stack, task_id, {"Nats-Msg-Id": f"{task_id}:ready:late"})
    wait_for(lambda: sum(runners.log(n).count(f"seq {late}") for n in names) or None, 30,
             "the late one ignored")
    wait_for(lambda: ack_pending(stack) == 0 or None, 10, "every copy acked")
    events = history(stack, task_id)
    assert [(s.data.attempt, s.data.runner_id) for s in named(events, "started")] == [
        (1, trainer)]
    assert [c.data.attempt for c in named(events, "completed")] == [1]
    ledger = run_ledger(stack, task_id)
    assert ledger is not None and (ledger.state, ledger.attempt, ledger.failures) == (
        "completed", 1, 0)
    print(f"3 extra task.ready (2 while running, 1 after) ignored; one run by {trainer}")


def test_five_sigterms_then_the_task_completes_from_its_checkpoints(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    """Graceful stops cost no failure (runner_max_failures is 3): six attempts, one run."""
    procs = runners.start_ready(*(f"runner-p{i}" for i in range(6)))
    task_id = submit(stack, dataset_id, epochs=8)
    for attempt in range(1, 6):
        seq, start = wait_for(lambda a=attempt: (got := latest(stack, task_id, "started"))
                              and got[1].data.attempt == a and got, 120, f"attempt {attempt}")
        wait_for(lambda s=seq: (got := latest(stack, task_id, "progress")) and got[0] > s, 60,
                 f"attempt {attempt} training")
        proc = procs[start.data.runner_id]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 180, "end")
    assert final["state"] == "completed", final
    events = history(stack, task_id)
    started = named(events, "started")
    assert [s.data.attempt for s in started] == [1, 2, 3, 4, 5, 6]
    assert len({s.data.runner_id for s in started}) == 6
    assert all(s.data.resumed_from_epoch is not None for s in started[1:])  # from checkpoints
    assert [c.data.attempt for c in named(events, "completed")] == [6]
    ledger = run_ledger(stack, task_id)
    assert ledger is not None
    assert (ledger.state, ledger.attempt, ledger.preemptions, ledger.failures) == (
        "completed", 6, 5, 0)
    csv_key = next(a["key"] for a in final["artifacts"] if a["name"] == "history.csv")
    rows = list(csv.DictReader(io.StringIO(LocalStore(stack.settings.store_dir)
                                           .get_bytes(csv_key).decode())))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    kept = stored_attempts(LocalStore(stack.settings.store_dir), task_id)
    assert kept == list(range(6, 6 - KEEP, -1)), kept  # its own, older ones pruned
    print("five SIGTERMs: attempts 1..6, preemptions 5, failures 0, completed once; resumed "
          f"from epochs {[s.data.resumed_from_epoch for s in started[1:]]}")


def test_sigterm_writes_a_checkpoint_and_the_next_runner_resumes(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    first = runners.start("runner-c")
    # Enough epochs that a quiet machine cannot finish before the signal lands.
    task_id = submit(stack, dataset_id, epochs=12)
    wait_for(lambda: checkpoint_epoch(stack, task_id) == 1 or None, 120, "epoch 1")
    time.sleep(0.3)  # inside epoch 2 (or a little later)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    store = LocalStore(stack.settings.store_dir)
    key = newest_key(store, task_id)
    assert key is not None and "/attempts/1/" in key  # the SIGTERMed attempt's own
    state = torch.load(store.root / key, map_location="cpu", weights_only=True)
    stopped_at = (int(state["epoch"]), int(state["batch_index"]))
    assert stopped_at[0] >= 1
    runners.start("runner-d")
    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 180, "end")
    assert final["state"] == "completed", final
    events = history(stack, task_id)
    assert len(named(events, "completed")) == 1
    last_start = named(events, "started")[-1].data
    assert last_start.runner_id == "runner-d" and stopped_at[0] < 12
    assert last_start.resumed_from_epoch == stopped_at[0]
    print(f"SIGTERM checkpoint at epoch {stopped_at[0]}, next batch {stopped_at[1]}; resumed")


def test_cancel_while_training_stops_within_seconds_and_keeps_the_checkpoint(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    runners.start("runner-e")
    task_id = submit(stack, dataset_id, epochs=30)
    wait_for(lambda: checkpoint_epoch(stack, task_id), 120, "a checkpoint")
    asked = time.monotonic()
    status, body, _ = call("POST", f"{stack.gateway_url}/v1/tasks/{task_id}/cancel",
                           {"reason": "wrong dataset"}, token=stack.api_key)
    assert status == 202 and body["cancel_requested"]
    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 30, "cancel")
    took = time.monotonic() - asked
    assert final["state"] == "cancelled" and took < 10, took
    print(f"cancel -> cancelled state in {took:.2f}s")
    events = history(stack, task_id)
    cancelled = named(events, "cancelled")
    assert len(cancelled) == 1 and cancelled[0].data.reason == "wrong dataset"
    assert cancelled[0].data.last_checkpoint_epoch is not None
    assert checkpoint_epoch(stack, task_id) is not None
    assert not named(events, "completed")
    wait_for(lambda: ack_pending(stack) == 0 or None, 10, "the ack")
    time.sleep(4)  # longer than the ack wait: an unacked message would be back by now
    assert len(named(history(stack, task_id), "started")) == 1


def test_cancel_before_any_runner_skips_the_task(stack: Stack, dataset_id: str,
                                                 runners: Runners) -> None:
    task_id = submit(stack, dataset_id, epochs=2)
    wait_for(lambda: record(stack, task_id)["state"] == "ready" or None, 60, "ready")
    status, _, _ = call("POST", f"{stack.gateway_url}/v1/tasks/{task_id}/cancel",
                        token=stack.api_key)
    assert status == 202
    runners.start("runner-f")
    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 60, "end")
    assert final["state"] == "cancelled"
    events = history(stack, task_id)
    assert not named(events, "started")
    assert named(events, "cancelled")[0].data.last_checkpoint_epoch is None


def _rank_pids(pid: int) -> list[int]:
    """The runner's child processes (its training ranks), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_kill_9_of_a_two_process_runner_then_another_finishes_from_the_checkpoint(
        stack: Stack, dataset_id: str, runners: Runners) -> None:
    """``resources.gpus: 2`` on the CPU pool: two gloo ranks under the runner. kill -9 of
    the runner takes its ranks with it; the next runner resumes over two ranks."""
    first = runners.start("runner-ddp-a")
    body = {"name": "ddp", "flow": "general", "task_type": "classification",
            "dataset_id": dataset_id, "resources": {"gpus": 2},
            "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": 6, "image_size": 64, "batch_size": 4, "seed": 1,
                "augmentation": "none"}}}
    _, accepted, _ = call("POST", f"{stack.gateway_url}/v1/tasks", body, token=stack.api_key)
    task_id = str(accepted["task_id"])
    killed_at = wait_for(lambda: checkpoint_epoch(stack, task_id), 180, "a checkpoint")
    ranks = _rank_pids(first.pid)
    assert len(ranks) >= 2, ranks  # two ranks (and the spawn resource tracker)
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: all(_gone(p) for p in ranks) or None, 20, "the ranks to exit")
    runners.start("runner-ddp-b")
    final = wait_for(lambda: (r := record(stack, task_id))["state"] in FINAL and r, 240, "end")
    assert final["state"] == "completed", final
    events = history(stack, task_id)
    assert len(named(events, "completed")) == 1
    started = named(events, "started")
    assert [s.data.attempt for s in started] == [1, 2]
    resumed = started[-1].data.resumed_from_epoch
    assert resumed is not None and resumed >= killed_at >= 1
    csv_key = next(a["key"] for a in final["artifacts"] if a["name"] == "history.csv")
    rows = list(csv.DictReader(io.StringIO(LocalStore(stack.settings.store_dir)
                                           .get_bytes(csv_key).decode())))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert "2 ranks on cpu" in runners.log("runner-ddp-b")
    print(f"two ranks: kill -9 of the runner after checkpoint epoch {killed_at}; "
          f"{len(ranks)} children exited; resumed_from_epoch {resumed}; completed once")
