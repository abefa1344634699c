"""The HTTP hop alone: an aiohttp server on uvloop that answers every ``POST /v1/tasks``
with a fixed 202, doing nothing else. ``bench_submit`` measures it with the gateway's
client and concurrency, so the gateway's figures can be read against what one HTTP
request costs on the same machine in the same minutes.

With ``--publish`` it also publishes one event per request as the raw bound does
(:func:`publish_one`) and answers once JetStream acked it: the least any HTTP front
of the stream can do (no validation, auth, limits, metrics or trace), so the most any
gateway of aiohttp and nats-py can reach on this machine.

    python -m bench.bare_http [--publish]   # prints its port, serves until killed
                                            # (--publish: NATS from RADTRAIN_* settings)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from nats.js import JetStreamContext

from infra.bus.topology import connect
from infra.event_loop import loop_factory
from infra.settings import Settings
from schemas.events import TaskRequestedEvent, encode_event
from schemas.tasks import TaskRequested

BODY: dict[str, Any] = {
    "name": "bench", "flow": "general", "task_type": "classification", "dataset_id": "ds-bench",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}
"""The request body of every bench request, and the fields of every raw event."""

ANSWER = b'{"task_id":"0123456789abcdef0123456789abcdef"}'


async def publish_one(js: JetStreamContext) -> None:
    """One new task's event, built, encoded and published, acked by JetStream: the raw
    bound's unit of work (bench_submit's ``raw nats-py`` path)."""
    task_id = uuid.uuid4().hex
    event = TaskRequestedEvent(source="bench", subject=task_id, data=TaskRequested(
        **BODY, task_id=task_id, tenant="default"))
    await js.publish(event.nats_subject, encode_event(event),
                     headers={"Nats-Msg-Id": event.msg_id})


async def serve(publish: bool) -> None:
    js = (await connect(Settings(), "bench-bare-http"))[1] if publish else None

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        if js is not None:
            await publish_one(js)
        return web.Response(status=202, body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/tasks", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)  # the port the kernel gave
    await asyncio.Event().wait()


@contextmanager
def bare_server(nats: Settings | None = None) -> Iterator[tuple[str, int]]:
    """``(url, pid)`` of a bare server in a child process, stopped on exit; with ``nats``
    (the stack's settings) it publishes to that server (``--publish``)."""
    env = os.environ.copy()
    if nats is not None:
        env |= {"RADTRAIN_NATS_URL": nats.nats_url, "RADTRAIN_DATA_DIR": str(nats.data_dir)}
    args = ["--publish"] if nats is not None else []
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_http", *args],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve("--publish" in sys.argv[1:]))
