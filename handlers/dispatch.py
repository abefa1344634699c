"""The dispatcher: ``task.ready`` → ``dispatch.<pool>.<task_id>``, the runner pool's queue.

The enrich handler placed the task (``spec.pool``, handlers/enrich/placement.py);
this copies the ``task.ready`` message as it is (body and CloudEvents headers) onto
the ``DISPATCH`` stream (work-queue retention), where the runners of that pool
share the durable ``runner-<pool>`` (filter ``dispatch.<pool>.*``). KEDA scales
each pool on that consumer's lag. JetStream does the queueing: no scheduler here.

Every ``task.ready`` goes through here, so a replay or a redrive of one (a new
generation, radtrain/oncall/reopen.py) is dispatched again by itself. The copy's
``Nats-Msg-Id`` is ``<task_id>:dispatch`` (``:g<n>`` for generation n > 1): a
redelivery, or a second copy of the same generation, is dispatched once.

A spec written before pools (no ``pool``) goes to the first pool of the catalog;
a pool the catalog no longer has fails the task (``pool_unavailable``) rather
than leaving it on a queue no runner reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.errors
from nats.js import JetStreamContext

from infra.bus.topology import dispatch_subject
from infra.errors import TransientError
from schemas.events import Envelope, TaskFailed, TaskFailedEvent, TaskReadyEvent
from schemas.pools import RunnerPool

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery

log = logging.getLogger("radtrain.dispatch")
SOURCE = "radtrain/dispatch"
POOL_UNAVAILABLE = "pool_unavailable"


def dispatch_msg_id(event: TaskReadyEvent) -> str:
    gen = f":g{event.taskgeneration}" if event.taskgeneration > 1 else ""
    return f"{event.task_id}:dispatch{gen}"


def pool_of(event: TaskReadyEvent, pools: Sequence[RunnerPool]) -> str | None:
    """The pool to dispatch to, or ``None`` when the catalog has no such pool."""
    names = [p.name for p in pools]
    wanted = event.data.pool or (names[0] if names else None)
    return wanted if wanted in names else None


def unavailable(event: TaskReadyEvent, pools: Sequence[RunnerPool]) -> TaskFailedEvent:
    known = ", ".join(p.name for p in pools) or "none"
    return TaskFailedEvent(source=SOURCE, subject=event.task_id, **event.carry(),
                           data=TaskFailed(
                               task_id=event.task_id, code=POOL_UNAVAILABLE, retryable=False,
                               message=f"the task was placed on runner pool "
                                       f"{event.data.pool!r}, which is no longer configured "
                                       f"(pools: {known}); replay it with --force to place "
                                       f"it again", attempt=1))


async def handle_ready(event: TaskReadyEvent, delivery: Delivery, *, js: JetStreamContext,
                       pools: Sequence[RunnerPool]) -> list[Envelope]:
    """Copy the message onto ``dispatch.<pool>.<task_id>``; ``[task.failed]`` for a pool
    that is gone. Publishes the copy itself: it is not a task event."""
    if event.data.search is not None:  # issue 18: a search parent; its trials run instead
        log.info("task %s is a search: its trials are dispatched, not itself", event.task_id)
        return []
    pool = pool_of(event, pools)
    if pool is None:
        log.warning("task %s: pool %r is not configured", event.task_id, event.data.pool)
        return [unavailable(event, pools)]
    headers = {k: v for k, v in (delivery.msg.headers or {}).items()
               if not k.startswith("Nats-")}
    headers["Nats-Msg-Id"] = dispatch_msg_id(event)
    try:
        await js.publish(dispatch_subject(pool, event.task_id), delivery.msg.data,
                         headers=headers, timeout=10.0)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("publish_failed", f"dispatch of {event.task_id}: {exc!r}") from exc
    log.info("task %s (generation %d) dispatched to pool %s", event.task_id,
             event.taskgeneration, pool)
    return []
