"""The search consumer's glue: KV ``searches`` and the store around :func:`core.decide`.

Order per event (the handler publishes itself, as the dispatcher does): read the
record, decide, admit each new trial (KV ``admissions``, ingress ``search``: a
trial is a task of the parent's tenant like any other), write the results of a
finished search, publish every event (deterministic message ids), and only then
write the record by compare-and-set. A lost write (another handler got there
first) is a transient error: the event comes back and is decided again on the
newer record. See :mod:`handlers.search.core` for why a crash repeats nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from handlers.search.core import (
    PARENT_EXTENSION,
    Decision,
    advance,
    completed_event,
    decide,
    parent_of,
)
from handlers.search.results import result_files
from handlers.search.study import importances
from infra.admission import AdmissionRepo, admit
from infra.bus.names import KV_SEARCHES
from infra.bus.subscriber import publish_all, task_of_subject
from infra.errors import TransientError
from infra.kv.repository import Bucket, BucketRepo
from infra.store import ObjectStore, StoreUnavailable
from schemas.events import (
    Artifact,
    Envelope,
    TaskCancelRequestedEvent,
    TaskReadyEvent,
    TaskRequestedEvent,
)
from schemas.search_state import SearchState

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery

log = logging.getLogger("radtrain.search")
_TRIAL = re.compile(r"^(.+)-t\d+$")


class SearchRepo(BucketRepo[SearchState]):
    """KV ``searches``: parent task id -> :class:`SearchState` (compare-and-set only)."""

    BUCKET = Bucket(KV_SEARCHES, SearchState)

    async def get(self, task_id: str) -> tuple[SearchState, int] | None:
        return await self.kv.get_entry(task_id)

    async def compare_and_set(self, state: SearchState, revision: int) -> int | None:
        return await self.kv.compare_and_set(state.task_id, state, revision)


def search_of(event: Envelope) -> str | None:
    """The parent whose record this event may change, without reading KV."""
    if isinstance(event, TaskReadyEvent):
        return event.subject if event.data.search is not None else None
    if isinstance(event, TaskCancelRequestedEvent):
        return parent_of(event) or event.subject
    return parent_of(event)


_MAY_BE_PARENT = frozenset({"ready", "cancel_requested"})
_EXTENSION_BYTES = f'"{PARENT_EXTENSION}"'.encode()
_EXTENSION_HEADER = f"ce-{PARENT_EXTENSION}"


def not_for_search(msg: Msg) -> bool:
    """True for an event that cannot concern a search, told from the raw message alone:
    not a ``ready`` or ``cancel_requested`` (a parent's), its task id is not a trial's
    (``<parent>-t<n>``) and it carries no ``searchparent`` extension, in its JSON or as
    a binary-mode header. Most events (every task's progress and end) are such; JSON
    with ``\\u`` escapes (which could spell the extension's name) is decoded anyway."""
    parts = msg.subject.split(".")
    if len(parts) != 3 or parts[1] in _MAY_BE_PARENT or _TRIAL.match(parts[2]):
        return False
    data = msg.data or b""
    if _EXTENSION_BYTES in data or b"\\u" in data:
        return False
    return not any(name.lower() == _EXTENSION_HEADER for name in (msg.headers or {}))


def search_lane(subject: str) -> str | None:
    """A search's events (the parent's and its trials') in one lane, in stream order."""
    task_id = task_of_subject(subject)
    if task_id is None:
        return None
    m = _TRIAL.match(task_id)
    return m[1] if m else task_id


def _now() -> datetime:
    return datetime.now(UTC)


async def handle_search_event(event: Envelope, delivery: Delivery, *, js: JetStreamContext,
                              searches: SearchRepo, store: ObjectStore,
                              admissions: AdmissionRepo,
                              clock: Callable[[], datetime] = _now) -> list[Envelope]:
    """Apply one event to its search; publishes what it decides itself, returns ``[]``."""
    del delivery
    key = search_of(event)
    if key is None:
        return []
    try:
        found = await searches.get(key)
        state, revision = found if found else (None, 0)
        if state is None and not isinstance(event, TaskReadyEvent):
            return []
        now = clock()
        decision = decide(state, event, now)
        if decision is None:
            return []
        decision = await _admit_trials(decision, js, admissions, now)
        events = decision.events
        if decision.finished:
            events = [*events, await _results(decision.state, store, now)]
        await publish_all(js, events)
        written = await searches.compare_and_set(decision.state, revision)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", f"search {key}: {exc!r}") from exc
    if written is None:
        raise TransientError("search_conflict", f"search {key} changed meanwhile; deciding "
                                                "again", delay_s=0.5)
    log.info("search %s: %s", key, ", ".join(f"{e.name} {e.subject}" for e in events) or "-")
    return []


async def _admit_trials(decision: Decision, js: JetStreamContext, admissions: AdmissionRepo,
                        now: datetime) -> Decision:
    """Admit every new trial for the parent's tenant; a refused id fails its trial (and the
    search moves on without it)."""
    for _ in range(len(decision.state.trials) + 1):
        refused = []
        for event in decision.events:
            if isinstance(event, TaskRequestedEvent):
                admission = await admit(admissions, js, event, "search")
                if not admission.accepted:
                    refused.append(event.subject)
        if not refused:
            return decision
        log.warning("search %s: trial ids %s refused by admission", decision.state.task_id,
                    refused)
        trials = [t.model_copy(update={"state": "failed", "note": "task id not admitted"})
                  if t.task_id in refused else t for t in decision.state.trials]
        kept = [e for e in decision.events if e.subject not in refused]
        state = decision.state.model_copy(update={"trials": trials})
        decision = advance(state, now, kept)
    return decision


async def _results(state: SearchState, store: ObjectStore, now: datetime) -> Envelope:
    """Write metrics.json and the plots under ``runs/<parent>/search/``; the parent's
    ``task.completed`` with the best trial's artifacts (referenced) and these."""
    plan = state.spec.search
    assert plan is not None and state.best is not None
    best = next(t for t in state.trials if t.number == state.best)
    files = result_files(state, await asyncio.to_thread(importances, plan, state.trials))
    own: list[Artifact] = []
    try:
        for name, data in files.items():
            info = await asyncio.to_thread(store.put_bytes,
                                           f"runs/{state.task_id}/search/{name}", data)
            own.append(Artifact(name=name, key=info.key, uri=info.uri, sha256=info.sha256,
                                size=info.size))
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", f"search results: {exc}") from exc
    names = {a.name for a in own}
    artifacts = [a for a in best.artifacts if a.name not in names] + own
    return completed_event(state, artifacts, (now - state.started_at).total_seconds())
