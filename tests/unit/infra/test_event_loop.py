"""The services' loop and heap settings, each checked in a fresh interpreter (they are
process-wide: the test process's own must not change)."""

from __future__ import annotations

import subprocess
import sys


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def test_a_started_service_leaves_its_startup_heap_to_no_collection() -> None:
    out = run_python(
        "import gc\n"
        "from infra.event_loop import freeze_startup_heap\n"
        "before = gc.get_freeze_count()\n"
        "catalog = [{'entry': i} for i in range(10_000)]  # what a service loads\n"
        "freeze_startup_heap()\n"
        "print(before, gc.get_freeze_count() >= 10_000, gc.get_threshold())\n")
    assert out == "0 True (700, 10, 10)"  # Python's thresholds: see the docstring


def test_the_loop_is_uvloop_when_asked_for_and_asyncio_otherwise() -> None:
    out = run_python(
        "from infra.event_loop import loop_factory\n"
        "print(type(loop_factory(True)()).__module__.split('.')[0],"
        " type(loop_factory(False)()).__module__.split('.')[0])\n")
    assert out == "uvloop asyncio"
