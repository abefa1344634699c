"""Liveness and readiness endpoints of the handlers and runner processes (Kubernetes probes).

A small aiohttp server on a settings port (``handlers_health_port``,
``runner_health_port``; 0 = none), beside the Prometheus port:

- ``GET /healthz``: 200 while the event loop answers (a wedged loop answers
  nothing, and the liveness probe restarts the pod);
- ``GET /readyz``: 200 once the process is connected to NATS and each of its
  durable consumers exists on the server and is being pulled; 503 with the
  reasons otherwise (NATS down or reconnecting, ``infra apply`` not run yet).
  The answer is computed on each probe (one consumer-info request per consumer,
  bounded by a short timeout).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

log = logging.getLogger("radtrain.health")
PROBE_TIMEOUT_S = 2.0


@dataclass
class Readiness:
    """What ``/readyz`` looks at; the process fills it in as it starts."""

    nc: NATS | None = None
    js: JetStreamContext | None = None
    consumers: list[tuple[str, str]] = field(default_factory=list)
    """``(stream, durable)`` the process pulls from."""
    bound: bool = False
    """Set once the subscriber loops run."""

    async def problems(self) -> list[str]:
        if self.nc is None or self.js is None:
            return ["not connected to NATS yet"]
        if not self.nc.is_connected:
            return ["NATS connection lost (reconnecting)"]
        if not self.bound:
            return ["consumers not bound yet"]
        found = []
        for stream, durable in self.consumers:
            try:
                await asyncio.wait_for(self.js.consumer_info(stream, durable), PROBE_TIMEOUT_S)
            except (nats.errors.Error, TimeoutError) as exc:
                found.append(f"consumer {stream}/{durable}: {exc!r}")
        return found


def health_app(readiness: Readiness) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problems = await readiness.problems()
        if problems:
            return web.json_response({"status": "unready", "problems": problems}, status=503)
        return web.json_response({"status": "ready",
                                  "consumers": [d for _, d in readiness.consumers]})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve_health(host: str, port: int, readiness: Readiness) -> web.AppRunner | None:
    """Start the probe server (``None`` when ``port`` is 0); ``await runner.cleanup()``."""
    if not port:
        return None
    runner = web.AppRunner(health_app(readiness), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("health probes on http://%s:%d/healthz and /readyz", host, port)
    return runner
