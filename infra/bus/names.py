"""The names of every stream, subject, consumer and KV bucket (DESIGN.md §4), and the
retry schedule each consumer carries in its metadata.

Apart from :mod:`infra.bus.topology` (their configurations and ``apply``) so that the
many modules that only need a name import nothing of the NATS client.
"""

from __future__ import annotations

from infra.settings import Settings

__all__ = ["ADMISSION", "ADVISORIES_STREAM", "ADVISORY_SUBJECTS", "CONSUMER_STREAMS",
           "DATASET_IMPORT", "DISPATCHER", "DISPATCH_STREAM", "DLQ_FORWARDER", "DLQ_STREAM",
           "ENRICH", "IMPORTS_STREAM", "IMPORT_JOBS_SUBJECT", "INBOUND_STREAM",
           "INBOUND_SUBJECTS", "INDEXED_SUBJECTS", "KV_ADMISSIONS", "KV_APIKEYS",
           "KV_CONSUMER_ERRORS", "KV_DATASETS", "KV_DATASET_IMPORTS", "KV_DELIVERIES",
           "KV_IDEMPOTENCY", "KV_INBOUND_IDS", "KV_LISTINGS", "KV_RUNNERS", "KV_RUNS",
           "KV_SEARCHES",
           "KV_TASKS", "KV_TENANTS", "KV_WEBHOOKS", "KV_WEBHOOK_BREAKERS",
           "OBSOLETE_CONSUMERS", "PROJECTOR",
           "RETRY_DELAYS_S", "RETRY_METADATA_KEY", "RUNNER_PREFIX", "SEARCH", "SEARCH_SUBJECTS",
           "STATUS_SUBJECTS",
           "TASKS_STREAM", "TASK_INDEX", "WEBHOOKS", "WEBHOOKS_STREAM",
           "WEBHOOK_DELIVERIES", "dispatch_subject", "is_runner_consumer",
           "parse_retry_metadata", "retry_metadata", "runner_consumer", "stream_of"]

TASKS_STREAM = "TASKS"
DLQ_STREAM = "DLQ"
ADVISORIES_STREAM = "ADVISORIES"
KV_TASKS = "tasks"
KV_DATASETS = "datasets"
KV_WEBHOOKS = "webhooks"
KV_APIKEYS = "apikeys"
KV_TENANTS = "tenants"
KV_DELIVERIES = "webhook_deliveries"
KV_INBOUND_IDS = "inbound_ids"
KV_IDEMPOTENCY = "idempotency"
KV_CONSUMER_ERRORS = "consumer_errors"
WEBHOOKS_STREAM = "WEBHOOKS"
IMPORTS_STREAM = "IMPORTS"
KV_DATASET_IMPORTS = "dataset_imports"
IMPORT_JOBS_SUBJECT = "imports.jobs"
INBOUND_STREAM = "INBOUND"
INBOUND_SUBJECTS = "inbound.*.task.requested"
"""Upstream systems publish ``task.requested`` on ``inbound.<tenant>.task.requested``;
NATS permissions bind each upstream user to its tenant's subject (DESIGN.md §10)."""
KV_ADMISSIONS = "admissions"
"""task id -> who admitted it (tenant, body sha256, ingress): one owner per task id."""
KV_RUNS = "runs"
"""task id -> RunLedger: the attempt that owns the task, numbered per task."""
KV_LISTINGS = "listings"
"""Numbered per-tenant lists of tasks and datasets (infra/kv/listing.py)."""
KV_RUNNERS = "runners"
"""runner id -> RunnerHeartbeat (pool, devices, current task); TTL: a few heartbeats."""
# --- issue 18: hyperparameter search ---
KV_SEARCHES = "searches"
"""parent task id -> SearchState (plan, trials, values): the search handler's only state."""
KV_WEBHOOK_BREAKERS = "webhook_breakers"
"""issue 17: ``<tenant>.<webhook id>`` -> EndpointBreaker (closed/open/half-open)."""
DISPATCH_STREAM = "DISPATCH"
"""``dispatch.<pool>.<task_id>``: each ``task.ready`` routed to its runner pool
(handlers/dispatch.py); work-queue retention, one consumer ``runner-<pool>`` per pool."""
"""Dataset import jobs: ``imports.jobs.<tenant>.<import_id>``."""

ENRICH = "enrich"
DISPATCHER = "dispatch"
RUNNER_PREFIX = "runner-"
"""Runners of pool ``p`` share the durable ``runner-p`` on ``DISPATCH`` (KEDA scales on
its lag). The single ``runner`` consumer on ``TASKS`` of earlier versions is gone:
``infra apply`` deletes it (:data:`OBSOLETE_CONSUMERS`)."""
PROJECTOR = "projector"
WEBHOOKS = "webhooks"
WEBHOOK_DELIVERIES = "webhook-deliveries"
DLQ_FORWARDER = "dlq-forwarder"
DATASET_IMPORT = "dataset-import"
ADMISSION = "admission"
TASK_INDEX = "task-index"
SEARCH = "search"
"""Issue 18: the search handler (handlers/search) on a search's and its trials' events."""

CONSUMER_STREAMS: dict[str, str] = {WEBHOOK_DELIVERIES: WEBHOOKS_STREAM,
                                    DLQ_FORWARDER: ADVISORIES_STREAM,
                                    DATASET_IMPORT: IMPORTS_STREAM,
                                    ADMISSION: INBOUND_STREAM}
"""The stream of each durable consumer that is not on ``TASKS``."""

OBSOLETE_CONSUMERS: dict[str, tuple[str, ...]] = {TASKS_STREAM: ("runner",)}
"""Consumers radtrain no longer defines, deleted by ``infra apply``: the ``runner``
consumer on ``TASKS`` would otherwise keep every ``task.ready`` pending for ever."""


def runner_consumer(pool: str) -> str:
    """The durable all runners of ``pool`` share: ``runner-<pool>``."""
    return f"{RUNNER_PREFIX}{pool}"


def is_runner_consumer(durable: str) -> bool:
    return durable.startswith(RUNNER_PREFIX)


def dispatch_subject(pool: str, task_id: str) -> str:
    return f"dispatch.{pool}.{task_id}"


ADVISORY_SUBJECTS = [
    f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.*"
    for kind in ("MAX_DELIVERIES", "MSG_TERMINATED")
    for stream in (TASKS_STREAM, WEBHOOKS_STREAM, INBOUND_STREAM, DISPATCH_STREAM)
]
"""Advisories are fire-and-forget on core NATS: a stream keeps them while the
dead-letter forwarder is down, so no dead letter is missed."""

RETRY_METADATA_KEY = "radtrain.retry_delays_s"
"""Consumer metadata holding the nak delays after each failed delivery: every
process bound to the consumer reads the same schedule from the server."""

RETRY_DELAYS_S: dict[str, tuple[float, ...]] = {
    ENRICH: (2.0, 5.0, 15.0, 30.0),
    DISPATCHER: (1.0, 2.0, 5.0, 15.0, 30.0),
    RUNNER_PREFIX: (30.0, 60.0),
    PROJECTOR: (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 30.0, 60.0, 60.0),
    WEBHOOKS: (2.0, 5.0, 15.0, 30.0, 60.0, 60.0, 60.0),
    WEBHOOK_DELIVERIES: (5.0, 30.0, 60.0),
    DLQ_FORWARDER: (1.0, 5.0, 15.0, 30.0, 60.0),
    DATASET_IMPORT: (10.0, 30.0),
    ADMISSION: (2.0, 5.0, 15.0, 30.0),
    TASK_INDEX: (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 30.0, 60.0, 60.0),
    SEARCH: (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 30.0, 60.0),
}
"""Delay before delivery n+1 after delivery n failed (an unexpected error, or a
``TransientError`` that names no delay of its own); the last entry repeats. The final
allowed delivery naks at once so its dead letter is prompt."""


def stream_of(durable: str) -> str:
    if is_runner_consumer(durable):
        return DISPATCH_STREAM
    return CONSUMER_STREAMS.get(durable, TASKS_STREAM)


def retry_metadata(durable: str, settings: Settings) -> dict[str, str]:
    key = RUNNER_PREFIX if is_runner_consumer(durable) else durable
    delays = (round(d * settings.retry_delay_scale, 3) for d in RETRY_DELAYS_S[key])
    return {RETRY_METADATA_KEY: " ".join(f"{d:g}" for d in delays)}


def parse_retry_metadata(metadata: dict[str, str] | None) -> tuple[float, ...]:
    """The schedule written by :func:`retry_metadata`; empty when absent or garbled."""
    raw = (metadata or {}).get(RETRY_METADATA_KEY, "")
    try:
        return tuple(float(x) for x in raw.split())
    except ValueError:
        return ()

INDEXED_SUBJECTS = [f"tasks.{event}.*" for event in (
    "requested", "ready", "rejected", "started", "completed", "failed", "cancelled", "redriven")]
"""The events that move a task from one state to another (the task-index consumer)."""

SEARCH_SUBJECTS = [f"tasks.{event}.*" for event in (
    "ready", "progress", "completed", "failed", "rejected", "cancelled", "cancel_requested")]
"""What the search handler reads: a parent's ready and cancel, its trials' progress and ends."""

STATUS_SUBJECTS = [
    "tasks.rejected.*",
    "tasks.started.*",
    "tasks.completed.*",
    "tasks.failed.*",
    "tasks.cancelled.*",
]
