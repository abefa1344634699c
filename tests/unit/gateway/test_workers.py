"""The gateway supervisor's bookkeeping (gateway/workers.py) over stand-in processes:
who is started, when a dead worker comes back, when it gives up, how it stops."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from gateway.workers import MAX_QUICK_EXITS, QUICK_EXIT_S, Supervisor
from infra.settings import Settings

SLEEPER = "import time; time.sleep(60)"
"""A worker that runs until signalled (SIGTERM's default action ends it)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor(workers: int = 2, code: str = SLEEPER, **kw: object) -> tuple[Supervisor, Clock]:
    clock = Clock()
    options: dict[str, object] = {"gateway_stop_timeout_s": 5.0} | kw
    settings = Settings(gateway_port=18080, gateway_workers=workers,
                        **options)  # type: ignore[arg-type]
    sup = Supervisor(settings, argv=lambda i: [sys.executable, "-c", code, str(i)], clock=clock)
    return sup, clock


def test_a_shared_port_must_be_named() -> None:
    with pytest.raises(ValueError, match="gateway_port 0"):
        Supervisor(Settings(gateway_port=0, gateway_workers=2))


def test_workers_bounded_by_the_setting() -> None:
    with pytest.raises(ValueError, match="gateway_workers"):
        Settings(gateway_workers=0)
    with pytest.raises(ValueError, match="gateway_workers"):
        Settings(gateway_workers=65)


def test_starts_each_worker_and_replaces_a_dead_one_after_its_delay() -> None:
    sup, clock = supervisor()
    try:
        sup.poll()
        first = [w.proc for w in sup.workers]
        assert all(p is not None and p.poll() is None for p in first)
        assert len({p.pid for p in first if p}) == 2
        dead = sup.workers[0]
        assert dead.proc is not None
        dead.proc.kill()
        dead.proc.wait()
        clock.now += QUICK_EXIT_S + 1  # it had run a while: a crash, not a failed start
        sup.poll()
        assert dead.proc is None and dead.quick_exits == 0
        assert dead.restart_at == clock.now + 1.0
        sup.poll()
        assert dead.proc is None  # not before its delay
        clock.now += 1.0
        sup.poll()
        assert dead.proc is not None and dead.proc.poll() is None
        assert sup.workers[1].proc is first[1]  # the other one was left alone
    finally:
        sup.stop()
    assert all(w.proc is None or w.proc.poll() is not None for w in sup.workers)


def test_gives_up_after_repeated_failed_starts_with_growing_delays() -> None:
    sup, clock = supervisor(workers=1, code="raise SystemExit(3)")
    delays = []
    w = sup.workers[0]
    while not sup.failed:
        sup.poll()  # starts it
        assert w.proc is not None
        w.proc.wait()
        sup.poll()  # notes the exit
        delays.append(w.restart_at - clock.now)
        clock.now = w.restart_at
    assert w.quick_exits == MAX_QUICK_EXITS
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_stop_terminates_and_kills_what_outlives_the_timeout() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
               "print('up', flush=True); time.sleep(60)"
    sup, _ = supervisor(workers=1, code=stubborn, gateway_stop_timeout_s=0.5)
    sup.poll()
    proc = sup.workers[0].proc
    assert proc is not None
    time.sleep(0.5)  # let it install its handler
    sup.stop()
    assert proc.returncode == -signal.SIGKILL
    sup2, _ = supervisor(workers=2)
    sup2.poll()
    sup2.stop()
    assert {w.proc.returncode for w in sup2.workers if w.proc} == {-signal.SIGTERM}
