"""Fault: 1,000 concurrent submissions with one Idempotency-Key make one task.

The gateway runs as its own process on a private nats-server (no handlers,
so the stream holds exactly what the gateway published).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from infra.bus.topology import TASKS_STREAM, connect
from radtrain.stack import Stack, start_stack
from tests.faults.helpers import GOOD_BODY, fault_settings, subject_counts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

N = 1000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(fault_settings(tmp_path_factory.mktemp("dups")), services=("gateway",))
    yield stack
    stack.stop()


async def _post(session: aiohttp.ClientSession, stack: Stack, key: str,
                body: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
    async with session.post(f"{stack.gateway_url}/v1/tasks", json=body,
                            headers={"Idempotency-Key": key}) as resp:
        return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed") == "true"


async def test_thousand_duplicates_make_one_task(gateway: Stack) -> None:
    auth = {"Authorization": f"Bearer {gateway.api_key}"}
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(headers=auth, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        results = await asyncio.gather(*(_post(session, gateway, "dup-1", GOOD_BODY)
                                         for _ in range(N)))
        statuses = Counter(status for status, _, _ in results)
        assert statuses == {202: N}, statuses
        assert len({body["task_id"] for _, body, _ in results}) == 1
        assert sum(1 for _, _, replayed in results if not replayed) == 1  # one first writer
        task_id = results[0][1]["task_id"]

        changed = {**GOOD_BODY, "name": "something else"}
        status, body, _ = await _post(session, gateway, "dup-1", changed)
        assert status == 409 and body["error"]["code"] == "idempotency_key_reused", body
        assert task_id in body["error"]["message"]

    nc, js = await connect(gateway.settings, "test-dups")
    try:
        counts = await subject_counts(js)
        assert counts == {f"tasks.requested.{task_id}": 1}, counts
        assert (await js.stream_info(TASKS_STREAM)).state.messages == 1
        print(f"{N} concurrent duplicates: all 202, one task {task_id}, one task.requested")
    finally:
        await nc.close()
