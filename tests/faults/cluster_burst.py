"""Clients of the cluster fault tests: submissions through several gateways, each
retried with its own Idempotency-Key on 503 and connection errors (on the next
gateway), and what the stream and KV say about the tasks afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from infra.bus.names import DLQ_STREAM
from infra.bus.topology import KV_LISTINGS
from infra.kv import TaskRepo
from tests.faults.helpers import GOOD_BODY, per_task, subject_counts, wait_for

Body = Callable[[int], dict[str, Any]]


def rejected_body(i: int) -> dict[str, Any]:
    """A task enrich rejects at once (no such dataset): many of them finish fast."""
    return {**GOOD_BODY, "name": f"burst {i}", "dataset_id": f"no-such-dataset-{i % 7}"}


class Burst:
    """``n`` clients' submissions; client ``i`` starts on gateway ``i % len(urls)``."""

    def __init__(self, urls: list[str], api_key: str, tag: str) -> None:
        self.urls, self.api_key, self.tag = urls, api_key, tag
        self.accepted: dict[str, str] = {}
        """Idempotency-Key -> the task id of its 202."""
        self.answers: defaultdict[str, set[str]] = defaultdict(set)
        self.statuses: Counter[int | str] = Counter()
        self.accept_times: list[float] = []
        self._counted = asyncio.Event()
        self._wanted = 0

    def key(self, i: int) -> str:
        return f"{self.tag}-{i}"

    async def reached(self, n: int) -> None:
        """Wait until ``n`` submissions were accepted."""
        self._wanted = n
        if len(self.accepted) < n:
            await self._counted.wait()

    async def post(self, session: aiohttp.ClientSession, url: str, key: str,
                   body: dict[str, Any]) -> str | None:
        """One attempt: the task id of a 202, None on 503 or a connection error."""
        try:
            async with session.post(f"{url}/v1/tasks", json=body,
                                    headers={"Idempotency-Key": key}) as resp:
                self.statuses[resp.status] += 1
                if resp.status == 202:
                    return str((await resp.json())["task_id"])
                assert resp.status == 503, (resp.status, await resp.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.statuses[type(exc).__name__] += 1
        return None

    async def submit(self, session: aiohttp.ClientSession, i: int, body: dict[str, Any],
                     deadline: float) -> None:
        gateway, key = i, self.key(i)
        while time.monotonic() < deadline:
            task_id = await self.post(session, self.urls[gateway % len(self.urls)], key, body)
            if task_id is not None:
                self.answers[key].add(task_id)
                self.accepted[key] = task_id
                self.accept_times.append(time.monotonic())
                if self._wanted and len(self.accepted) >= self._wanted:
                    self._counted.set()
                return
            gateway += 1  # retry on the next gateway, same key
            await asyncio.sleep(0.1)
        raise AssertionError(f"{key} never accepted; answers {dict(self.statuses)}")

    def session(self, limit: int = 100) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.api_key}"},
            connector=aiohttp.TCPConnector(limit=limit),
            timeout=aiohttp.ClientTimeout(total=15))

    async def run(self, n: int, body: Body, *, concurrency: int, budget_s: float,
                  fault: Awaitable[Any] | None = None, spread_s: float = 0.0) -> None:
        """Submit ``n`` tasks; with ``spread_s`` client ``i`` starts ``i * spread_s / n`` late."""
        sem = asyncio.Semaphore(concurrency)
        deadline = time.monotonic() + budget_s
        async with self.session() as session:
            async def one(i: int) -> None:
                await asyncio.sleep(i * spread_s / n)
                async with sem:
                    await self.submit(session, i, body(i), deadline)

            jobs: list[Awaitable[Any]] = [one(i) for i in range(n)]
            await asyncio.gather(*jobs, *([fault] if fault is not None else []))

    def longest_pause(self, after: float) -> float:
        """The longest wait between two 202s (or from ``after`` to the next one)."""
        times = sorted(t for t in self.accept_times if t >= after)
        gaps = [b - a for a, b in zip([after, *times], times, strict=False)]
        return max(gaps, default=0.0)

    def unexpected(self) -> list[int | str]:
        """Answers other than 202, 503 and connection errors."""
        return [s for s in self.statuses if isinstance(s, int) and s not in (202, 503)]


async def requested_ids(js: JetStreamContext) -> set[str]:
    return set(per_task(await subject_counts(js, "tasks.requested.>"), "requested"))


async def check_exactly_once(js: JetStreamContext, tasks: set[str], terminal: str,
                             timeout_s: float = 120.0) -> dict[str, int]:
    """Every task: one task.requested and one ``terminal`` event in the stream, none of
    another outcome, and its KV record in that state. Returns the stream's counts."""
    async def outcomes() -> dict[str, int] | None:
        counts = await subject_counts(js)
        return counts if tasks <= set(per_task(counts, terminal)) else None

    counts = await wait_for(outcomes, timeout_s, f"every task's task.{terminal}",
                            interval_s=1.0)
    requested, ended = per_task(counts, "requested"), per_task(counts, terminal)
    assert {t: requested.get(t) for t in tasks} == dict.fromkeys(tasks, 1)
    assert {t: ended.get(t) for t in tasks} == dict.fromkeys(tasks, 1)
    others = {"ready", "rejected", "completed", "failed", "cancelled"} - {terminal}
    assert not [t for o in others for t in per_task(counts, o) if t in tasks]
    repo = await TaskRepo.open(js)

    behind: dict[str, str] = {}

    async def projected() -> bool:
        records = await asyncio.gather(*(repo.get(t) for t in tasks))
        behind.clear()
        behind.update({t: "missing" if r is None else r[0].state
                       for t, r in zip(tasks, records, strict=True)
                       if r is None or r[0].state != terminal})
        return not behind

    # The projector's retries back off (1, 2, 5, 10, 15, 30 s ...): a write that failed
    # during the fault may wait a minute for its turn, so the same bound as the stream's.
    try:
        await wait_for(projected, timeout_s, f"every KV record {terminal}", interval_s=1.0)
    except AssertionError as exc:
        dead = await subject_counts(js, ">", DLQ_STREAM)
        raise AssertionError(f"{exc}: {len(behind)} behind, e.g. "
                             f"{dict(list(behind.items())[:5])}; dead letters {dead}") from exc
    return counts


async def check_listed(burst: Burst, tasks: set[str], state: str, timeout_s: float = 60.0,
                       js: JetStreamContext | None = None) -> None:
    """``GET /v1/tasks?state=...`` by cursor lists every task once, and the tenant's list
    of all holds no task twice: the task index of both handlers processes, through the
    fault, converged (it trails the projector, so wait for it)."""
    async def pages(session: aiohttp.ClientSession, query: str) -> tuple[list[str], int]:
        ids: list[str] = []
        cursor: str | None = None
        total = 0
        while True:
            url = f"{burst.urls[-1]}/v1/tasks?limit=200{query}"
            async with session.get(url + (f"&cursor={cursor}" if cursor else "")) as resp:
                assert resp.status == 200, (resp.status, await resp.text())
                page = await resp.json()
            ids += [item["task_id"] for item in page["items"]]
            total, cursor = page["total"], page.get("next")
            if not cursor:
                return ids, total

    seen: dict[str, Any] = {}

    async def listed() -> bool:
        async with burst.session() as session:
            in_state, in_state_total = await pages(session, f"&state={state}")
            every, every_total = await pages(session, "")
        seen.update(missing=sorted(tasks - set(in_state))[:5], in_state=len(in_state),
                    in_state_total=in_state_total, every=len(every), every_total=every_total,
                    twice=[t for t, n in Counter(every).items() if n > 1][:5],
                    twice_in_state=[t for t, n in Counter(in_state).items() if n > 1][:5])
        return (tasks <= set(in_state) and len(set(in_state)) == len(in_state) == in_state_total
                and len(set(every)) == len(every) == every_total)

    try:
        await wait_for(listed, timeout_s, f"every task listed once in {state}", interval_s=2.0)
    except AssertionError as exc:
        odd = [*seen["twice"], *seen["twice_in_state"], *seen["missing"]]
        where = await _where_listed(js, odd) if js is not None else {}
        raise AssertionError(f"{exc}: {seen}; markers and positions: {where}") from exc


async def _where_listed(js: JetStreamContext, ids: list[str]) -> dict[str, list[str]]:
    """Each id's marker and the positions of any list that hold it (a scan)."""
    kv = await js.key_value(KV_LISTINGS)
    found: dict[str, list[str]] = {i: [] for i in ids}
    for i in ids:
        with contextlib.suppress(KeyNotFoundError):
            for entry in await kv.history(f"mt.{i}"):
                found[i].append(f"marker@{entry.revision} {entry.value!r}")
            marker = json.loads((await kv.get(f"mt.{i}")).value or b"{}")
            if marker.get("state") and marker.get("sp"):
                slot = f"t.{marker['tenant']}.s.{marker['state']}.{marker['sp']}"
                for entry in await kv.history(slot):
                    found[i].append(f"{slot}@{entry.revision} {entry.value!r}")
    for key in await kv.keys():
        if key.rsplit(".", 1)[-1].isdigit():
            value = (await kv.get(key)).value or b""
            found.update({i: [*found[i], key] for i in ids if i.encode() in value})
    return found
