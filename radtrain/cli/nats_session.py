"""NATS for one CLI command: connect once, fail fast when the server is not there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import nats
from nats.js import JetStreamContext

from infra.bus.connection import connect_options
from infra.settings import Settings


@asynccontextmanager
async def open_js(settings: Settings, name: str = "radtrain-cli", *,
                  identity: Literal["services", "oncall"] | None = None
                  ) -> AsyncIterator[JetStreamContext]:
    """Unlike the services (which reconnect forever), a command gives up after one try.

    ``identity`` is whose local-stack credentials to use when no credential is
    set (on-call commands pass ``"oncall"``); see :mod:`infra.bus.connection`.
    """
    nc = await nats.connect(**connect_options(settings, identity=identity), name=name,
                            allow_reconnect=False, connect_timeout=5.0,
                            max_reconnect_attempts=0)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
