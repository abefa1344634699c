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
    garbage collector's reach: its full collections traversed that startup heap each
    time, a 45-55 ms stall of every request in flight (``bench_submit`` p99 44-55 ms,
    14-20 ms frozen). Called by a service's entry point once it has started, never by
    code that tests run in their own process (a frozen object is never collected).

    The collection thresholds stay Python's: collecting less often took 10-20 % off the
    handlers' CPU per task, but cyclic garbage that holds large buffers (decoded images
    in the handlers' imports) then lives far longer, and that was not worth it."""
    gc.collect()
    gc.freeze()
