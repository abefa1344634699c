"""NATS for one CLI command: connect once, fail fast when the server is not there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.js import JetStreamContext

from infra.settings import Settings


@asynccontextmanager
async def open_js(settings: Settings, name: str = "radtrain-cli"
                  ) -> AsyncIterator[JetStreamContext]:
    """Unlike the services (which reconnect forever), a command gives up after one try."""
    nc = await nats.connect(settings.nats_url, name=name, allow_reconnect=False,
                            connect_timeout=5.0, max_reconnect_attempts=0)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
