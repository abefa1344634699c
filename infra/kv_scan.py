"""Read every live value under a KV key pattern in one pass, filtered by the server.

``KeyValue.keys(filters=...)`` lists the whole bucket and filters in the
client; a tenant's keys are ``<tenant>.<id>``, so a subject wildcard lets the
server send only that tenant's entries, values included.
"""

from __future__ import annotations

import nats.errors
from nats.js.kv import KeyValue


async def scan(kv: KeyValue, pattern: str = ">", timeout_s: float = 5.0) -> dict[str, bytes]:
    """``{key: value}`` of the latest live revision of each key matching ``pattern``."""
    watcher = await kv.watch(pattern, ignore_deletes=True)
    found: dict[str, bytes] = {}
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=timeout_s)
            except nats.errors.TimeoutError:
                break
            if entry is None:  # the marker: everything present at start was sent
                break
            if entry.value is not None and entry.operation is None:
                found[entry.key] = entry.value
            else:
                found.pop(entry.key, None)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return found
