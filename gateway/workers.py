"""Several gateway processes on one port: a supervisor and its workers.

The gateway is CPU-bound under load (bench/bench_submit.py) and one Python
process uses one core. With ``gateway_workers`` N > 1, ``python -m gateway``
becomes a small supervisor (no event loop, no NATS, no HTTP) that starts N
workers, ``python -m gateway --worker <i>``. Each worker is a whole gateway
(its own NATS connection, KV handles, caches and limits) that binds
``gateway_host:gateway_port`` with SO_REUSEPORT, so the kernel spreads the
connections among them.

Per process, so N workers allow N times each: the SSE caps
(``sse_max_per_key``, ``sse_max_total``), the preview cache and decoding budget,
the per-key and unauthenticated rate limits, the API-key cache.

Readiness: aiohttp opens a worker's socket only after the app's start-up (NATS
connected, buckets open), so whichever worker answers ``/readyz`` is ready and
a worker that is not yet ready takes no connections. ``/healthz`` names the
answering worker's ``pid``.

The supervisor restarts a worker that exits, after a delay that doubles (1 s to
30 s) while it keeps dying within ``QUICK_EXIT_S`` of its start; after
``MAX_QUICK_EXITS`` such exits in a row it stops every worker and exits 1, so a
launcher (``radtrain up``) sees a broken start instead of a restart loop. On
SIGTERM or SIGINT it sends SIGTERM to each worker, waits
``gateway_stop_timeout_s`` for them, kills what is left and exits 0. A worker
whose supervisor is gone (SIGKILLed) stops itself: it checks its parent each
second. SO_REUSEPORT lets any process of the same user bind the port as well, so
with workers a stale gateway of the same user would share it silently: one
gateway per port and user. ``radtrain up`` starts the gateway through ``python -m
gateway`` with every setting in its environment, so ``RADTRAIN_GATEWAY_WORKERS``
applies there too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import FrameType

from aiohttp import web

from infra.settings import Settings

log = logging.getLogger("radtrain.gateway.workers")

QUICK_EXIT_S = 10.0
"""A worker that exits sooner than this after its start counts as a failed start."""
MAX_QUICK_EXITS = 5
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
POLL_S = 0.2


def worker_argv(index: int) -> list[str]:
    return [sys.executable, "-m", "gateway", "--worker", str(index)]


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    """When a dead worker is started again (monotonic clock)."""
    quick_exits: int = 0


class Supervisor:
    """Starts ``settings.gateway_workers`` workers, keeps them running, stops them."""

    def __init__(self, settings: Settings, *, argv: Callable[[int], list[str]] = worker_argv,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.gateway_port == 0:
            raise ValueError(f"gateway_port 0 (any free port) cannot be shared by "
                             f"{settings.gateway_workers} gateway workers: set "
                             "RADTRAIN_GATEWAY_PORT to a port")
        self.settings = settings
        self.workers = [Worker(i) for i in range(1, settings.gateway_workers + 1)]
        self._argv, self._clock = argv, clock
        self._stopping = False
        self.failed = False

    def start(self, worker: Worker) -> None:
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
        # stops the workers once (a second signal would cut a worker's clean shutdown).
        worker.proc = subprocess.Popen(self._argv(worker.index), process_group=0)
        worker.started_at = self._clock()
        log.info("gateway worker %d started (pid %d)", worker.index, worker.proc.pid)

    def poll(self) -> None:
        """Start what is due; note each worker that exited and when to start it again."""
        now = self._clock()
        for w in self.workers:
            if w.proc is None:
                if now >= w.restart_at:
                    self.start(w)
                continue
            code = w.proc.poll()
            if code is None:
                continue
            quick = now - w.started_at < QUICK_EXIT_S
            w.quick_exits = w.quick_exits + 1 if quick else 0
            delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(0, w.quick_exits - 1))
            log.error("gateway worker %d (pid %d) exited with %s; restarting in %.0fs",
                      w.index, w.proc.pid, code, delay)
            w.proc, w.restart_at = None, now + delay
            if w.quick_exits >= MAX_QUICK_EXITS:
                log.error("gateway worker %d failed to start %d times in a row: stopping",
                          w.index, w.quick_exits)
                self.failed = True
                self._stopping = True

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self._stopping = True

    def stop(self) -> None:
        """SIGTERM to every worker, then wait; SIGKILL to any still running at the deadline."""
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        log.info("gateway supervisor: stopping %d workers", len(running))
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = self._clock() + self.settings.gateway_stop_timeout_s
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                log.error("gateway worker pid %d did not stop in %.0fs: killed", proc.pid,
                          self.settings.gateway_stop_timeout_s)
                proc.kill()
                proc.wait()

    def run(self) -> int:
        """Until SIGTERM/SIGINT (0) or a worker that cannot start (1)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        log.info("gateway supervisor (pid %d): %d workers on %s:%d", os.getpid(),
                 len(self.workers), self.settings.gateway_host, self.settings.gateway_port)
        try:
            while not self._stopping:
                self.poll()
                time.sleep(POLL_S)
        finally:
            self.stop()
        return 1 if self.failed else 0


async def watch_parent(app: web.Application) -> AsyncIterator[None]:
    """A worker stops itself (a clean SIGTERM shutdown) once its supervisor is gone."""
    parent = os.getppid()

    async def watch() -> None:
        while True:  # nothing to wait on: a parent's death sends no signal (off Linux)
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                break
        log.error("gateway supervisor (pid %d) is gone: stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.create_task(watch())
    yield
    task.cancel()
