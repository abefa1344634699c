"""NATS for one CLI command: connect once, fail fast when the server is not there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import nats
import nats.errors
from nats.js import JetStreamContext

from infra.bus.connection import connect_options, mask_url
from infra.settings import Settings
from radtrain.cli.client import Exit, fail

CONNECT_S = 15.0


async def _quiet(exc: Exception) -> None:
    """Connection errors are reported once, by the command (nats-py logs each try)."""


@asynccontextmanager
async def open_js(settings: Settings, name: str = "radtrain-cli", *,
                  identity: Literal["services", "oncall"] | None = None
                  ) -> AsyncIterator[JetStreamContext]:
    """Unlike the services (which reconnect forever), a command gives up after one try.

    ``identity`` is whose local-stack credentials to use when no credential is
    set (on-call commands pass ``"oncall"``); see :mod:`infra.bus.connection`.
    """
    # max_reconnect_attempts=1: nats-py reads 0 as "no limit" while choosing a server
    # and would retry the initial connection for ever (on-call's "NATS down" must end).
    try:
        nc = await asyncio.wait_for(nats.connect(
            **connect_options(settings, identity=identity), name=name, allow_reconnect=False,
            connect_timeout=5.0, max_reconnect_attempts=1, error_cb=_quiet), CONNECT_S)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        fail(f"NATS unreachable at {mask_url(settings.nats_url)} ({type(exc).__name__}: "
             f"{exc})", Exit.UNAVAILABLE)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
