"""On-call operations on the ``DLQ`` stream: list, show, redrive, purge (``radtrain dlq``).

The stream's contract (subjects, headers, how a dead letter is built and
re-published) is infra/bus/dead_letters.py, shared with the forwarder in the
handlers; these are the operator's verbs over it.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from infra.bus.dead_letters import StoredDeadLetter, dlq_subject
from infra.bus.stream_read import get_seq, scan
from infra.bus.topology import DLQ_STREAM


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


async def purge(js: JetStreamContext, consumer: str | None = None) -> int:
    """Remove dead letters (all, or one consumer's); returns how many there were."""
    subject = dlq_subject(consumer) if consumer else None
    info = await js.stream_info(DLQ_STREAM, subjects_filter=subject or ">")
    count = sum((info.state.subjects or {}).values()) if subject else int(info.state.messages)
    await js.purge_stream(DLQ_STREAM, subject=subject)
    return count
