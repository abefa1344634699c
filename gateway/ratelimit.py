"""Per-key token buckets: a steady rate with a burst, and how long to wait when empty.

In memory, per gateway process: with N replicas a key gets up to N times the
rate. That is the usual trade for not putting a shared counter on the hot
path; a hard global quota would belong in NATS KV or the load balancer.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0.0 when allowed (a token is spent), else the seconds until one is available."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def refund(self, key: str) -> None:
        """Give back the token of a request that turned out to be legitimate."""
        found = self._buckets.get(key)
        if found is not None:
            self._buckets[key] = (min(self.burst, found[0] + 1.0), found[1])

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:  # forget the least recently used
            self._buckets.popitem(last=False)


def retry_after_header(wait_s: float) -> str:
    """Retry-After takes whole seconds; round up so an obedient client succeeds."""
    return str(max(1, math.ceil(wait_s)))

