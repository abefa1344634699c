"""``GET /v1/runners``: the live members of every runner pool, from their heartbeats.

Runners rewrite their record in KV ``runners`` every few seconds and the bucket's
TTL drops those that stopped (runner/presence.py), so this lists what is alive
now. Any authenticated tenant may list them (pools are shared); the task a
runner trains is named only to the tenant that owns it.
"""

from __future__ import annotations

import nats.errors
from aiohttp import web
from nats.js.errors import BucketNotFoundError, NotFoundError

from gateway.app_keys import JS, SETTINGS
from gateway.auth import tenant_of
from gateway.errors import ApiError
from gateway.openapi import AUTHED, OPERATIONS, Op
from infra.kv.runners import RunnerRepo
from schemas.pools import RunnerHeartbeat, RunnerPage, RunnerView

routes = web.RouteTableDef()


def view(record: RunnerHeartbeat, tenant: str) -> RunnerView:
    """What ``tenant`` may see of one runner: its task only when the task is its own."""
    own = record.current_task is not None and record.current_tenant == tenant
    return RunnerView(runner_id=record.runner_id, pool=record.pool, devices=record.devices,
                      memory_gb=record.memory_gb, busy=record.current_task is not None,
                      current_task=record.current_task if own else None,
                      started_at=record.started_at, last_seen=record.last_seen,
                      mode=record.mode)


@routes.get("/v1/runners")
async def list_runners(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    try:
        repo = await RunnerRepo.open(request.app[JS])
        live = await repo.live()
    except (BucketNotFoundError, NotFoundError):
        raise ApiError(503, "unavailable",
                       "KV 'runners' missing: run `radtrain infra apply`") from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise ApiError(503, "unavailable", f"KV 'runners' unavailable: {exc!r}") from exc
    page = RunnerPage(items=[view(r, tenant) for r in live], total=len(live),
                      pools=list(request.app[SETTINGS].runner_pools))
    return web.json_response(text=page.model_dump_json())


RUNNER_OPERATIONS = [
    Op("get", "/v1/runners", "listRunners",
       "The live runners of every pool (heartbeats: pool, devices, memory, busy) and the "
       "pool catalog; a runner's task is named only to its tenant", "runners",
       {200: RunnerPage}, (*AUTHED, 503)),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in RUNNER_OPERATIONS if (op.method, op.path) not in known)


register_operations()
