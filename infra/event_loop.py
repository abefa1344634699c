"""The services' event loop: uvloop (libuv) where it is installed, asyncio's otherwise.

uvloop takes a large share off the CPU each request and each NATS message costs
(the gateway and the handlers are CPU-bound under load: bench/README.md), and it is
a drop-in loop, so the choice is made here once, from a setting, not in each service.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop]:
    """``uvloop.new_event_loop`` when asked for and importable, else asyncio's default."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # Windows, or an install without it: the default loop works
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """``asyncio.run`` on the chosen loop (Python 3.11's Runner takes the factory)."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)


def freeze_startup_heap() -> None:
    """Move everything allocated so far (modules, catalogs, models, clients) out of the
    garbage collector's reach, and collect the young generation less often.

    Full collections traversed that startup heap each time: a 45-55 ms stall of every
    request in flight (``bench_submit`` p99 44-55 ms, 14-20 ms frozen). Collecting
    generation 0 every 20,000 allocations rather than 700 took 10-20 % off the handlers'
    CPU per task (``bench_enrich``); the young objects a request or a message leaves
    are few and short-lived, so the memory it holds back is small. Called once a
    service has started, before it serves."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
