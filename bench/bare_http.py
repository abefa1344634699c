"""The HTTP hop alone: an aiohttp server on uvloop that answers every ``POST /v1/tasks``
with a fixed 202, doing nothing else. ``bench_submit`` measures it with the gateway's
client and concurrency, so the gateway's figures can be read against what one HTTP
request costs on the same machine in the same minutes.

    python -m bench.bare_http    # prints its port, serves until killed
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from infra.event_loop import loop_factory

ANSWER = b'{"task_id":"0123456789abcdef0123456789abcdef"}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=ANSWER, content_type="application/json")


async def serve() -> None:
    app = web.Application()
    app.router.add_post("/v1/tasks", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)  # the port the kernel gave
    await asyncio.Event().wait()


@contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    """``(url, pid)`` of a bare server in a child process, stopped on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_http"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())
