"""The last error of each failing message, kept for its dead letter (KV ``consumer_errors``).

A max-deliveries advisory names the stream, consumer and sequence but not why
the deliveries failed, and the nak that preceded it carries no text. So the
consumer glue records the error here, keyed by ``<stream>.<consumer>.<seq>``,
just before it naks or terms, and the dead-letter forwarder reads it back.
KV rather than memory: the runner's errors are raised in the runner process,
the forwarder runs in the handlers process, and either may restart between the
two. Only failures are written, so the happy path costs nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, ValidationError

from infra.bus.topology import KV_CONSUMER_ERRORS
from infra.kv.repository import Bucket, KVRepository

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 2000


class LastError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    delivery: int
    at: str

    def summary(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


def error_key(stream: str, consumer: str, seq: int) -> str:
    return f"{stream}.{consumer}.{seq}"


class LastErrors:
    BUCKET = Bucket(KV_CONSUMER_ERRORS, LastError)

    def __init__(self, kv: KVRepository[LastError]) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> LastErrors | None:
        """``None`` when the bucket is missing (``infra apply`` not yet run): never fatal."""
        try:
            return cls(await cls.BUCKET.open(js))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("no %s bucket, dead letters will lack their error: %r",
                        KV_CONSUMER_ERRORS, exc)
            return None

    async def record(self, stream: str, consumer: str, seq: int, code: str, message: str,
                     delivery: int) -> None:
        """Best effort: failing to record must not keep the message from being settled."""
        entry = LastError(code=code, message=message[:MAX_MESSAGE_CHARS], delivery=delivery,
                          at=datetime.now(UTC).isoformat())
        try:
            await self.kv.put(error_key(stream, consumer, seq), entry)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not record the error of %s/%s #%d: %r", stream, consumer, seq, exc)

    async def get(self, stream: str, consumer: str, seq: int) -> LastError | None:
        try:
            return await self.kv.get(error_key(stream, consumer, seq))
        except ValidationError:
            return None
