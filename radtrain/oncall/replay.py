"""Replay: re-publish chosen events of ``TASKS`` (``radtrain replay``, DESIGN.md §9).

Each copy keeps the original's subject and bytes, names the original in
``Radtrain-Replay-Of: TASKS:<seq>`` and gets a fresh ``Nats-Msg-Id`` (else
JetStream would drop it as a duplicate). The consumers keep copies harmless
(the projector only moves forward, enrich re-derives the same ``task.ready``
id, the runner runs a task once), so copying the events of a task that is
running or has ended would do nothing but confuse: :func:`plan` refuses it,
naming the tasks, and with ``force`` re-opens each such task as a new
generation from its selected ``task.requested`` (or else ``task.ready``),
radtrain/oncall/reopen.py. ``--dry-run`` publishes nothing: it re-enriches
each task with today's catalog (a retrain with its base task) and shows what
would change.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from infra.bus.dead_letters import MSG_ID, REPLAY_OF
from infra.bus.stream_read import first_seq_since, scan
from infra.bus.topology import TASKS_STREAM
from infra.kv import DatasetRepo, TaskRepo
from radtrain.oncall.reopen import REOPENERS, Reopened, publish_reopening, reopening
from schemas.cloudevents import event_bytes
from schemas.common import is_identifier
from schemas.dataset import DatasetSummary
from schemas.events import EVENT_TYPES, TaskRequestedEvent, parse_event
from schemas.record import TaskRecord
from schemas.tasks import TaskRequested

EVENT_NAMES = tuple(t.name for t in EVENT_TYPES)
Outcome = tuple[str, dict[str, Any]]
"""("ready", the TrainingSpec as JSON) or ("rejected", {"errors": [...]})."""
Reenrich = Callable[[TaskRequested, DatasetSummary | None], Awaitable[Outcome]]
"""Today's enrichment of a request (async: a retrain loads its base task first)."""
REFUSED_STATES = frozenset({"running", "completed", "failed", "cancelled", "rejected"})
"""A replay of these tasks' events is refused unless forced (then it re-opens them)."""


@dataclass(frozen=True)
class Selection:
    task_id: str | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    since: datetime | None = None
    types: tuple[str, ...] = ()
    limit: int = 10_000

    def __post_init__(self) -> None:
        chosen = [self.task_id is not None, self.seq_from is not None, self.since is not None]
        if sum(chosen) != 1:
            raise ValueError("choose exactly one of --task, --seq and --since")
        if self.task_id is not None and not is_identifier(self.task_id):
            raise ValueError(f"not a task id: {self.task_id!r}")
        unknown = sorted(set(self.types) - set(EVENT_NAMES))
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; use {', '.join(EVENT_NAMES)}")

    def subject(self) -> str:
        """The narrowest server-side filter: one type and/or one task when given."""
        event = self.types[0] if len(self.types) == 1 else "*"
        return f"tasks.{event}.{self.task_id or '*'}"

    def wants(self, subject: str) -> bool:
        parts = subject.split(".")
        return len(parts) == 3 and (not self.types or parts[1] in self.types)


def parse_seq_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[1]) > int(match[2]):
        raise ValueError(f"--seq wants A:B with 1 <= A <= B, got {text!r}")
    return int(match[1]), int(match[2])


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (naive = UTC), or a duration back from now: ``30m``, ``2h``, ``1d``."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return now - timedelta(**{unit: float(match[1])})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since wants a time (2026-01-31T12:00:00Z) or 30m/2h/1d, "
                         f"got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def select(js: JetStreamContext, sel: Selection) -> list[RawStreamMsg]:
    start, stop = sel.seq_from or 1, sel.seq_to
    if sel.since is not None:
        first = await first_seq_since(js, TASKS_STREAM, sel.since)
        if first is None:
            return []
        start = first
    found: list[RawStreamMsg] = []
    async for msg in scan(js, TASKS_STREAM, subject=sel.subject(), start=start, stop=stop):
        if sel.wants(msg.subject or ""):
            found.append(msg)
            if len(found) >= sel.limit:
                break
    return found


def replay_message(msg: RawStreamMsg, token: str | None = None
                   ) -> tuple[str, bytes, dict[str, str]]:
    """The copy to publish: same subject and bytes, a header naming the original."""
    original = dict(msg.headers or {})
    headers = {k: v for k, v in original.items() if not k.startswith("Nats-")}
    origin = f"{TASKS_STREAM}:{msg.seq}"
    headers[REPLAY_OF] = origin
    headers[MSG_ID] = f"{original.get(MSG_ID) or origin}:replay:{token or uuid.uuid4().hex[:12]}"
    return msg.subject or "", msg.data or b"", headers


@dataclass
class ReplayPlan:
    copies: list[RawStreamMsg] = field(default_factory=list)
    """Re-published as they are (tasks that have not started running)."""
    reopen: list[tuple[TaskRecord, RawStreamMsg]] = field(default_factory=list)
    """``force``: each task re-opened as a new generation from this event."""
    refused: list[str] = field(default_factory=list)
    """Why the replay may not go ahead; when not empty, nothing is published."""
    left_out: list[str] = field(default_factory=list)
    """Selected events that belong to a generation being replaced (``force``)."""


def _kind(msg: RawStreamMsg) -> str:
    return (msg.subject or "").split(".")[1]


def plan(msgs: list[RawStreamMsg], records: dict[str, TaskRecord | None], *,
         force: bool) -> ReplayPlan:
    """Per task: copy its events, refuse (running or ended), or re-open it (``force``)."""
    out = ReplayPlan()
    for task_id in task_ids(msgs):
        mine = [m for m in msgs if (m.subject or "").split(".")[2] == task_id]
        rec = records.get(task_id)
        if rec is None or rec.state not in REFUSED_STATES:
            out.copies += mine
            continue
        what = f"task {task_id} is {rec.state} (generation {rec.generation})"
        if not force:
            out.refused.append(
                f"{what}: its events would not run it again; --force re-opens it as "
                f"generation {rec.generation + 1} from its task.requested or task.ready")
            continue
        chosen = next((m for kind in REOPENERS for m in reversed(mine) if _kind(m) == kind),
                      None)
        if chosen is None:
            out.refused.append(f"{what}: --force re-opens a task from its task.requested or "
                               "task.ready, and neither is selected (--type requested)")
            continue
        out.reopen.append((rec, chosen))
        if len(mine) > 1:
            out.left_out.append(f"task {task_id}: {len(mine) - 1} other selected event(s) "
                                f"of generation {rec.generation} not re-published")
    return out


async def records(js: JetStreamContext, ids: list[str]) -> dict[str, TaskRecord | None]:
    """Each task's KV record (the projector's view), ``None`` when it has none."""
    repo = await TaskRepo.open(js)
    found = {task_id: await repo.get(task_id) for task_id in ids}
    return {task_id: entry[0] if entry else None for task_id, entry in found.items()}


async def reopen(js: JetStreamContext, record: TaskRecord, msg: RawStreamMsg, *, by: str,
                 reason: str) -> Reopened:
    """``task.redriven`` of generation n+1, then ``msg``'s event again with it."""
    try:
        event = parse_event(event_bytes(msg.headers, msg.data or b""))
    except ValueError as exc:
        raise ValueError(f"TASKS #{msg.seq} ({msg.subject}) does not parse: {exc}") from None
    return await publish_reopening(js, reopening(record, event, by=by, reason=reason),
                                   original_seq=int(msg.seq or 0))


async def publish(js: JetStreamContext, msgs: list[RawStreamMsg]) -> list[int]:
    """Re-publish in stream order; returns the new sequences."""
    token = uuid.uuid4().hex[:12]  # one replay run, so its copies are recognisable together
    seqs = []
    for msg in msgs:
        subject, data, headers = replay_message(msg, token)
        ack = await js.publish(subject, data, headers=headers)
        seqs.append(int(ack.seq))
    return seqs


# --- dry run: re-enrich and compare ---------------------------------------------


@dataclass(frozen=True)
class Difference:
    path: str
    before: Any
    after: Any


@dataclass
class TaskComparison:
    task_id: str
    before: str
    """``ready``, ``rejected`` or ``none`` (the stream has no outcome)."""
    after: str
    differences: list[Difference] = field(default_factory=list)
    note: str = ""


def diff(before: Any, after: Any, path: str = "") -> list[Difference]:
    """Leaf-by-leaf differences of two JSON documents, with dotted paths."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[Difference] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append(Difference(sub, None, after[key]))
            elif key not in after:
                out.append(Difference(sub, before[key], None))
            else:
                out += diff(before[key], after[key], sub)
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True))
                for d in diff(b, a, f"{path}[{i}]")]
    return [] if before == after else [Difference(path or "(root)", before, after)]


async def _original_outcome(js: JetStreamContext, task_id: str) -> Outcome | None:
    for name in ("ready", "rejected"):
        try:
            raw = await js.get_last_msg(TASKS_STREAM, f"tasks.{name}.{task_id}")
        except NotFoundError:
            continue
        try:
            event = parse_event(raw.data or b"")
        except ValidationError:
            continue
        data = event.data.model_dump(mode="json")
        return (name, data) if name == "ready" else (name, {"errors": data["errors"]})
    return None


async def _requested(js: JetStreamContext, task_id: str) -> TaskRequested | None:
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
        event = parse_event(raw.data or b"")
    except (NotFoundError, ValidationError):
        return None
    return event.data if isinstance(event, TaskRequestedEvent) else None


async def compare(js: JetStreamContext, task_id: str, reenrich: Reenrich) -> TaskComparison:
    """Today's enrichment of the task's request against what the stream recorded."""
    cmd = await _requested(js, task_id)
    if cmd is None:
        return TaskComparison(task_id, "none", "none", note="no readable task.requested")
    dataset = await (await DatasetRepo.open(js)).get(cmd.dataset_id)
    after = await reenrich(cmd, dataset)
    before = await _original_outcome(js, task_id)
    if before is None:
        return TaskComparison(task_id, "none", after[0], diff({}, after[1]),
                              note="the stream has no task.ready/rejected for it")
    return TaskComparison(task_id, before[0], after[0], diff(before[1], after[1]))


def task_ids(msgs: list[RawStreamMsg]) -> list[str]:
    """The tasks a selection touches, in first-seen order."""
    seen: dict[str, None] = {}
    for msg in msgs:
        parts = (msg.subject or "").split(".")
        if len(parts) == 3:
            seen.setdefault(parts[2], None)
    return list(seen)
