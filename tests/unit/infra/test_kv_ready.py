"""Services wait for a bucket that is not there yet (or electing) instead of exiting."""

from __future__ import annotations

from typing import Any, cast

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from infra.kv.ready import open_when_ready

JS = cast(JetStreamContext, object())


async def test_a_bucket_that_appears_after_a_few_tries_is_opened() -> None:
    failures: list[Exception] = [BucketNotFoundError(), nats.errors.TimeoutError(),
                                 nats.errors.NoRespondersError()]

    async def opener(js: Any) -> str:
        assert js is JS
        if failures:
            raise failures.pop(0)
        return "bucket"

    assert await open_when_ready(opener, JS, attempts=5, delay_s=0) == "bucket"
    assert failures == []


async def test_the_last_error_is_raised_after_the_attempts() -> None:
    calls = 0

    async def opener(_: Any) -> str:
        nonlocal calls
        calls += 1
        raise BucketNotFoundError()

    with pytest.raises(BucketNotFoundError):
        await open_when_ready(opener, JS, attempts=3, delay_s=0)
    assert calls == 3


async def test_a_programming_error_is_not_retried() -> None:
    calls = 0

    async def opener(_: Any) -> str:
        nonlocal calls
        calls += 1
        raise TypeError("bad call")

    with pytest.raises(TypeError):
        await open_when_ready(opener, JS, attempts=5, delay_s=0)
    assert calls == 1
