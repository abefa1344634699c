"""Typed errors that decide what happens to a message (DESIGN.md §9).

A consumer never decides ack/nak/term ad hoc: it raises one of these, and the
transport glue maps it. Anything else is unexpected, hence transient until
the consumer's ``max_deliver`` makes it a dead letter.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (bad spec, missing dataset, corrupt weights): ``term()``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientError(Exception):
    """Worth another try later (store or NATS hiccup): ``nak(delay)``.

    ``delay_s`` only where the cause says how long to wait (a circuit breaker's
    gate, a webhook's own schedule). Without it the consumer's backoff schedule
    decides (infra/bus/names.py ``RETRY_DELAYS_S``): an outage or a wait for
    another consumer gets the whole growing budget, so a leader election does
    not burn a consumer's deliveries at a fixed short pace into a dead letter."""

    def __init__(self, code: str, message: str, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.delay_s = delay_s


class Superseded(Exception):
    """A newer attempt owns the task or it is already finished: ack and do nothing."""


class Fenced(Exception):
    """A newer delivery of this very message is being worked on: settle nothing.

    JetStream takes an ack (or nak) that arrives after the ack wait for the
    message, whichever delivery sent it; acking a stale delivery would end the
    newer attempt's redelivery guarantee, and a nak would start a third one.
    """


class PoisonMessage(PermanentError):
    """The message itself is unusable (not an event, inconsistent): nobody can be told
    through its task, so besides ``term()`` it is copied to the ``DLQ`` stream for a human."""


class KVConflict(TransientError):
    """A KV compare-and-set kept losing to concurrent writers: try the message later.

    Each lost round means another writer's update landed, so this takes more
    concurrent writers than attempts on one key; a redelivery will find it calm.
    """

    def __init__(self, bucket: str, key: str, attempts: int) -> None:
        super().__init__("kv_conflict", f"KV {bucket or '?'}/{key}: still changing after "
                         f"{attempts} compare-and-set attempts", delay_s=1.0)
        self.bucket = bucket
        self.key = key


class KVUnavailable(TransientError):
    """A KV read got no answer in time: try again, never a partial answer taken whole."""

    def __init__(self, message: str) -> None:
        super().__init__("kv_unavailable", message)
