"""On-call operations on the ``DLQ`` stream: list, show, redrive, purge (``radtrain dlq``).

The stream's contract (subjects, headers, how a dead letter is built and
re-published) is infra/bus/dead_letters.py, shared with the forwarder in the
handlers; these are the operator's verbs over it.

Redrive: a letter of a consumer that moves its task forward (enrich, runner)
has failed its task, and a failed task's state holds; publishing the letter
again would change nothing. :class:`Redriver` re-opens such a task instead, as
a new generation (radtrain/oncall/reopen.py; a runner's letter, on ``DISPATCH``, re-opens
with its ``task.ready`` on ``TASKS``, which the dispatcher routes again): the task goes back to
``requested``/``ready``, its record lists the redrive and the dead letter, and
the letter's event runs again. A task that completed, was cancelled or
rejected, or is running, is skipped unless forced; other letters (projector,
webhooks, ...) are published again as they are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from nats.js import JetStreamContext

from infra.bus.dead_letters import (
    H_SEQ,
    H_STREAM,
    H_SUBJECT,
    MSG_ID,
    REDRIVE_OF,
    StoredDeadLetter,
    dlq_subject,
    finished,
    owns_task,
)
from infra.bus.stream_read import get_seq, scan
from infra.bus.topology import DLQ_STREAM, TASKS_STREAM
from infra.kv import TaskRepo
from radtrain.oncall.reopen import publish_reopening, reopening
from schemas.cloudevents import event_bytes
from schemas.events import Envelope, encode_event, parse_event
from schemas.record import TaskRecord


async def list_dead_letters(js: JetStreamContext, consumer: str | None = None,
                            task_id: str | None = None, limit: int = 100
                            ) -> list[StoredDeadLetter]:
    return [StoredDeadLetter.from_raw(m)
            async for m in scan(js, DLQ_STREAM, subject=dlq_subject(consumer, task_id),
                                limit=limit)]


async def get_dead_letter(js: JetStreamContext, seq: int) -> StoredDeadLetter | None:
    raw = await get_seq(js, DLQ_STREAM, seq)
    return StoredDeadLetter.from_raw(raw) if raw is not None else None


async def redrive(js: JetStreamContext, letter: StoredDeadLetter) -> int:
    """Publish the original again, then drop the dead letter. Returns the new sequence."""
    subject, data, headers = letter.redrive_message()
    if not subject:
        raise ValueError(f"dead letter {letter.seq} does not name its original subject")
    ack = await js.publish(subject, data, headers=headers)
    await js.delete_msg(DLQ_STREAM, letter.seq)
    return int(ack.seq)


Action = Literal["reopened", "republished", "skipped"]
REOPEN_STATES = frozenset({"requested", "ready", "failed"})
"""A task-owner letter re-opens its task from these states without ``force``: failed
(the forwarder marked it so) or not yet (the record lags the stream)."""


@dataclass(frozen=True)
class Redriven:
    seq: int
    """The dead letter's DLQ sequence."""
    action: Action
    detail: str
    generation: int | None = None


def judge(letter: StoredDeadLetter, event: Envelope | None, record: TaskRecord | None,
          ended: str | None, *, force: bool) -> tuple[Action, str]:
    """What to do with one letter: re-open its task, publish it again, or skip it (why).

    ``ended`` is the terminal event the stream holds for the record's generation (the
    KV record may lag it)."""
    owner = owns_task(letter.consumer, letter.get(H_STREAM))
    if not owner or not letter.task_id:
        return "republished", ""
    task = f"task {letter.task_id}"
    if event is None:  # unreadable: it can only be published again as it is
        if ended and not force:
            return "skipped", f"{task} already {ended} and the letter does not parse"
        return "republished", ""
    if record is None:
        if force:
            return "republished", ""
        return "skipped", f"{task} has no record in KV tasks yet (is the projector running?)"
    if event.taskgeneration < record.generation and not force:
        return "skipped", (f"{task} was re-opened since (generation {record.generation}); "
                           f"this letter is of generation {event.taskgeneration}")
    state = ended or record.state
    if state not in REOPEN_STATES and not force:
        return "skipped", f"{task} already {state}" if ended else f"{task} is {state}"
    return "reopened", ""


@dataclass
class Redriver:
    """``radtrain dlq redrive`` over any number of letters; a task is re-opened once."""

    js: JetStreamContext
    tasks: TaskRepo
    by: str
    reason: str = ""
    force: bool = False
    reopened: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def open(cls, js: JetStreamContext, *, by: str, reason: str = "",
                   force: bool = False) -> Redriver:
        return cls(js, await TaskRepo.open(js), by, reason, force)

    async def redrive(self, letter: StoredDeadLetter) -> Redriven:
        if letter.task_id in self.reopened:
            return Redriven(letter.seq, "skipped", f"task {letter.task_id} was re-opened "
                            f"as generation {self.reopened[letter.task_id]} just now")
        event = _event_of(letter)
        found = await self.tasks.get(letter.task_id) if letter.task_id else None
        record = found[0] if found else None
        if record is not None and event is not None and _interrupted(record, event, letter):
            return await self._finish_reopening(letter, record, event)
        ended = await finished(self.js, letter.task_id, generation=(
            record.generation if record else 1)) if letter.task_id else None
        action, why = judge(letter, event, record, ended, force=self.force)
        if action == "skipped":
            return Redriven(letter.seq, action, why)
        if action == "republished" or event is None or record is None:
            new_seq = await redrive(self.js, letter)
            return Redriven(letter.seq, "republished",
                            f"-> {letter.get(H_SUBJECT)} (TASKS seq {new_seq})")
        plan = reopening(record, event, by=self.by, reason=self.reason or
                         f"redrive of dead letter {letter.seq}", dead_letter_seq=letter.seq)
        done = await publish_reopening(self.js, plan, original_seq=int(letter.get(H_SEQ) or 0),
                                       dead_letter_seq=letter.seq,
                                       original_stream=letter.get(H_STREAM) or TASKS_STREAM)
        await self.js.delete_msg(DLQ_STREAM, letter.seq)
        self.reopened[letter.task_id] = done.generation
        return Redriven(letter.seq, "reopened", (
            f"task {letter.task_id} re-opened as generation {done.generation} "
            f"({plan.redriven.data.from_state} -> {plan.redriven.data.to_state}): "
            f"task.redriven TASKS #{done.redriven_seq}, task.{event.name} TASKS "
            f"#{done.event_seq}"), done.generation)


    async def _finish_reopening(self, letter: StoredDeadLetter, record: TaskRecord,
                                event: Envelope) -> Redriven:
        """An earlier redrive of this very letter published ``task.redriven`` and then
        failed (NATS error, Ctrl-C) before the event: publish the event of that generation
        now. Its msg id names the generation, so if it did get through this is a no-op."""
        again = event.model_copy(update={"id": str(uuid.uuid4()),
                                         "taskgeneration": record.generation})
        ack = await self.js.publish(again.nats_subject, encode_event(again), timeout=10.0,
                                    headers={MSG_ID: again.msg_id,
                                             REDRIVE_OF: f"{DLQ_STREAM}:{letter.seq}"})
        await self.js.delete_msg(DLQ_STREAM, letter.seq)
        self.reopened[letter.task_id] = record.generation
        return Redriven(letter.seq, "reopened", (
            f"task {letter.task_id}: finished the interrupted re-open as generation "
            f"{record.generation}: task.{event.name} TASKS #{ack.seq}"
            f"{' (already there)' if ack.duplicate else ''}"), record.generation)


def _interrupted(record: TaskRecord, event: Envelope, letter: StoredDeadLetter) -> bool:
    """The record's last re-open came from this letter, one generation after it, and the
    task still waits in the state that re-open set: its event may never have been sent."""
    last = record.redrives[-1] if record.redrives else None
    return (last is not None and last.dead_letter_seq == letter.seq
            and event.taskgeneration == record.generation - 1
            and record.state == last.to_state == event.name)


def _event_of(letter: StoredDeadLetter) -> Envelope | None:
    try:
        return parse_event(event_bytes(letter.headers, letter.data))
    except ValueError:
        return None


async def purge(js: JetStreamContext, consumer: str | None = None) -> int:
    """Remove dead letters (all, or one consumer's); returns how many there were."""
    subject = dlq_subject(consumer) if consumer else None
    info = await js.stream_info(DLQ_STREAM, subjects_filter=subject or ">")
    count = sum((info.state.subjects or {}).values()) if subject else int(info.state.messages)
    await js.purge_stream(DLQ_STREAM, subject=subject)
    return count
