"""A loopback TCP proxy that can take the service behind it away, for fault tests.

While "down" it closes every open connection and resets new ones, which is
what a crashed or unreachable S3 endpoint looks like to a client. It can go
down by itself the first time a pattern (say, part of a request line) passes
through, for a fixed time. It runs its own event loop on a thread, so the
services under test (subprocesses) and a synchronous test can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

log = logging.getLogger(__name__)


class PausableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.down = False
        self.cuts = 0
        """Connections cut or refused while down."""
        self.triggered = threading.Event()
        self.outage: tuple[float, float] | None = None
        """Monotonic start and end of the triggered outage."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="proxy")
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._trigger: tuple[bytes, float] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PausableProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        def shut() -> None:
            if self._server is not None:
                self._server.close()
            self._cut_all()

        self._loop.call_soon_threadsafe(shut)
        time.sleep(0.1)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def down_on(self, pattern: bytes, seconds: float) -> None:
        """Go down for ``seconds`` when a client first sends ``pattern``."""
        self._loop.call_soon_threadsafe(setattr, self, "_trigger", (pattern, seconds))

    async def _go_down_for(self, seconds: float) -> None:
        log.warning("proxy: down for %.0fs", seconds)
        started = time.monotonic()
        self.down = True
        self._cut_all()
        self.triggered.set()
        await asyncio.sleep(seconds)
        self.down = False
        self.outage = (started, time.monotonic())
        log.warning("proxy: back up")

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            self._abort(writer)

    def _abort(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.transport.abort()
        self.cuts += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self._abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._abort(writer)
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, watch=True),
                             self._pipe(up_reader, writer, watch=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    watch: bool) -> None:
        tail = b""
        try:
            while not self.down:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if watch and self._trigger is not None:
                    seen, tail = tail + chunk, (tail + chunk)[-512:]
                    if self._trigger[0] in seen:  # cut this very request
                        seconds, self._trigger = self._trigger[1], None
                        self._tasks.append(asyncio.create_task(self._go_down_for(seconds)))
                        break
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if writer in self._writers:
                self._writers.discard(writer)
                with contextlib.suppress(Exception):
                    writer.transport.abort()
