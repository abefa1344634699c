"""Gateway rate limiting and API key format/hash, pure logic."""

from __future__ import annotations

import pytest

from gateway.ratelimit import RateLimiter, retry_after_header
from gateway.tenancy import KEY_RE, hash_key, key_id_of


def test_rate_limiter_bursts_then_waits() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k")
    assert wait == pytest.approx(0.5) and retry_after_header(wait) == "1"
    assert limiter.take("other") == 0.0  # per key
    now[0] += 0.5
    assert limiter.take("k") == 0.0


def test_key_format_and_hash() -> None:
    key = "rt_0123456789abcdef_" + "A" * 43
    assert KEY_RE.match(key) and key_id_of(key) == "0123456789abcdef"
    assert key_id_of("rt_short_x") is None
    assert len(hash_key(key)) == 64 and hash_key(key) != hash_key(key + "x")
