"""Streams, consumers and KV buckets (DESIGN.md §4), defined once, applied idempotently.

Services never create these on the fly: ``radtrain infra apply`` (and
``radtrain up``) call :func:`apply`, which creates what is missing, updates
what drifted and reports the rest as unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from infra.bus.names import *  # noqa: F403  (every name stays importable from here)
from infra.bus.names import (
    ADMISSION,
    ADVISORIES_STREAM,
    ADVISORY_SUBJECTS,
    DATASET_IMPORT,
    DISPATCH_STREAM,
    DISPATCHER,
    DLQ_FORWARDER,
    DLQ_STREAM,
    ENRICH,
    IMPORT_JOBS_SUBJECT,
    IMPORTS_STREAM,
    INBOUND_STREAM,
    INBOUND_SUBJECTS,
    INDEXED_SUBJECTS,
    KV_ADMISSIONS,
    KV_APIKEYS,
    KV_CONSUMER_ERRORS,
    KV_DATASET_IMPORTS,
    KV_DATASETS,
    KV_DELIVERIES,
    KV_IDEMPOTENCY,
    KV_INBOUND_IDS,
    KV_LISTINGS,
    KV_RUNNERS,
    KV_RUNS,
    KV_SEARCHES,
    KV_TASKS,
    KV_TENANTS,
    KV_WEBHOOK_BREAKERS,
    KV_WEBHOOKS,
    OBSOLETE_CONSUMERS,
    PROJECTOR,
    SEARCH,
    SEARCH_SUBJECTS,
    STATUS_SUBJECTS,
    TASK_INDEX,
    TASKS_STREAM,
    WEBHOOK_DELIVERIES,
    WEBHOOKS,
    WEBHOOKS_STREAM,
    dispatch_subject,
    retry_metadata,
    runner_consumer,
    stream_of,
)
from infra.settings import Settings

Action = Literal["created", "updated", "unchanged", "deleted"]


@dataclass(frozen=True)
class Change:
    kind: Literal["stream", "consumer", "kv"]
    name: str
    action: Action


def stream_configs(settings: Settings) -> list[StreamConfig]:
    day = 86_400.0
    common: dict[str, Any] = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "num_replicas": settings.stream_replicas,
        "max_age": settings.stream_max_age_days * day,
        "duplicate_window": settings.duplicate_window_s,
    }
    return [
        StreamConfig(
            name=TASKS_STREAM,
            description="Every task event; history stays replayable.",
            subjects=["tasks.>"],
            **common,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            description="Messages that exhausted their deliveries, or poison; see `radtrain dlq`.",
            subjects=["dlq.>"],
            **{**common, "max_age": settings.dead_letter_days * day},
        ),
        StreamConfig(
            name=ADVISORIES_STREAM,
            description="Max-deliveries and terminated advisories, kept for the DLQ forwarder.",
            subjects=ADVISORY_SUBJECTS,
            **{**common, "max_age": settings.dead_letter_days * day},
        ),
        StreamConfig(
            # One job per (event, subscription): each retries on its own schedule
            # (nak with delay), so a dead receiver never holds up the others.
            name=WEBHOOKS_STREAM,
            description="Outgoing webhook delivery jobs; removed once acked.",
            subjects=["webhooks.>"],
            **{**common, "retention": RetentionPolicy.WORK_QUEUE},
        ),
        StreamConfig(
            # Work that takes longer than a request (a 200,000-file import): one
            # message per job, removed once acked; its status lives in KV.
            name=IMPORTS_STREAM,
            description="Dataset import jobs; removed once acked. Status: KV dataset_imports.",
            subjects=[f"{IMPORT_JOBS_SUBJECT}.>"],
            **{**common, "retention": RetentionPolicy.WORK_QUEUE},
        ),
        StreamConfig(
            # A task.ready per pool; removed once a runner acked it (or dead-lettered).
            name=DISPATCH_STREAM,
            description="task.ready routed to its runner pool: dispatch.<pool>.<task_id>.",
            subjects=["dispatch.>"],
            **{**common, "retention": RetentionPolicy.WORK_QUEUE},
        ),
        StreamConfig(
            # What upstream systems published, as they published it: kept (limits
            # retention) so that a refused or dead-lettered event can be inspected.
            name=INBOUND_STREAM,
            description="task.requested from upstream systems over NATS, before admission.",
            subjects=[INBOUND_SUBJECTS],
            **common,
        ),
    ]


def consumer_configs(settings: Settings) -> dict[str, ConsumerConfig]:
    """Durable pull consumers, each with its ``max_deliver`` and retry schedule.

    Errors are retried with ``nak(delay)`` on the schedule in the metadata
    (:data:`RETRY_DELAYS_S`, scaled by the settings); a crashed worker's message
    comes back after ``ack_wait``. JetStream's own ``backoff`` is left empty on
    purpose: with it the server adds ``backoff[n] - ack_wait`` to every nak delay
    (measured on nats-server 2.15: nak(0.1 s) became 4.1 s), so explicit delays
    would no longer mean what they say.
    """
    configs = _consumer_configs(settings)
    for durable, cfg in configs.items():
        cfg.metadata = retry_metadata(durable, settings)
        cfg.backoff = []  # clears a backoff an older radtrain set
    return configs


def _consumer_configs(settings: Settings) -> dict[str, ConsumerConfig]:
    explicit: dict[str, Any] = {
        "ack_policy": AckPolicy.EXPLICIT,
        "deliver_policy": DeliverPolicy.ALL,
    }
    runners = {runner_consumer(p.name): ConsumerConfig(
        durable_name=runner_consumer(p.name),
        filter_subject=dispatch_subject(p.name, "*"),
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.runner_max_deliver,
        max_ack_pending=64,
        **explicit,
    ) for p in settings.runner_pools}
    return {
        ENRICH: ConsumerConfig(
            durable_name=ENRICH,
            filter_subject="tasks.requested.*",
            ack_wait=30.0,
            max_deliver=5,
            max_ack_pending=256,
            **explicit,
        ),
        DISPATCHER: ConsumerConfig(
            durable_name=DISPATCHER,
            filter_subject="tasks.ready.*",
            ack_wait=30.0,
            max_deliver=5,
            max_ack_pending=256,
            **explicit,
        ),
        **runners,
        PROJECTOR: ConsumerConfig(
            durable_name=PROJECTOR,
            filter_subject="tasks.>",
            ack_wait=30.0,
            max_deliver=10,
            max_ack_pending=1024,
            **explicit,
        ),
        WEBHOOKS: ConsumerConfig(
            durable_name=WEBHOOKS,
            filter_subjects=STATUS_SUBJECTS,
            ack_wait=30.0,
            max_deliver=8,
            max_ack_pending=256,
            **explicit,
        ),
        WEBHOOK_DELIVERIES: ConsumerConfig(
            durable_name=WEBHOOK_DELIVERIES,
            filter_subject="webhooks.jobs.>",
            # An attempt is bounded by the HTTP timeout; the retry schedule is the
            # handler's nak(delay), and it ends the job after the retry window, so
            # deliveries are unbounded here and many jobs may wait at once.
            ack_wait=settings.webhook_timeout_s + 30.0,
            max_deliver=-1,
            max_ack_pending=20_000,
            **explicit,
        ),
        DLQ_FORWARDER: ConsumerConfig(
            # A dead letter must never be dropped: the forwarder retries until it
            # has copied the message (its failures show in `radtrain status`).
            durable_name=DLQ_FORWARDER,
            ack_wait=30.0,
            max_deliver=-1,
            max_ack_pending=256,
            **explicit,
        ),
        DATASET_IMPORT: ConsumerConfig(
            # Minutes per job: the handler sends in_progress every import_heartbeat_s,
            # so a killed handlers process hands the job on after one ack wait.
            durable_name=DATASET_IMPORT,
            filter_subject=f"{IMPORT_JOBS_SUBJECT}.>",
            ack_wait=settings.import_ack_wait_s,
            max_deliver=3,
            max_ack_pending=16,
            **explicit,
        ),
        ADMISSION: ConsumerConfig(
            durable_name=ADMISSION,
            filter_subject=INBOUND_SUBJECTS,
            ack_wait=30.0,
            max_deliver=5,
            max_ack_pending=256,
            **explicit,
        ),
        SEARCH: ConsumerConfig(
            # Issue 18: a search's events in stream order (lane per search); a decision
            # lost to a concurrent writer comes back (compare-and-set on KV searches).
            durable_name=SEARCH,
            filter_subjects=SEARCH_SUBJECTS,
            ack_wait=30.0,
            max_deliver=10,
            max_ack_pending=1024,
            **explicit,
        ),
        TASK_INDEX: ConsumerConfig(
            # Keeps the per-tenant task lists (infra/kv/listing.py) on the events that
            # change a task's state; progress and cancel requests change no list.
            durable_name=TASK_INDEX,
            filter_subjects=INDEXED_SUBJECTS,
            ack_wait=30.0,
            max_deliver=10,
            max_ack_pending=1024,
            **explicit,
        ),
    }


def kv_configs(settings: Settings) -> list[KeyValueConfig]:
    common: dict[str, Any] = {"storage": StorageType.FILE, "replicas": settings.stream_replicas}
    return [
        # direct: listings read a page of records in one batched direct get.
        KeyValueConfig(bucket=KV_TASKS, history=5, direct=True,
                       description="task id -> TaskRecord", **common),
        KeyValueConfig(bucket=KV_DATASETS, history=5, direct=True,
                       description="dataset summaries", **common),
        KeyValueConfig(bucket=KV_WEBHOOKS, history=1, description="subscriptions", **common),
        KeyValueConfig(bucket=KV_APIKEYS, history=1, description="key id -> hashed API key",
                       **common),
        KeyValueConfig(bucket=KV_TENANTS, history=1, description="tenant -> inbound secrets",
                       **common),
        KeyValueConfig(bucket=KV_DELIVERIES, history=1, description="webhook delivery attempts",
                       ttl=settings.webhook_log_days * 86_400.0, **common),
        KeyValueConfig(bucket=KV_INBOUND_IDS, history=1, description="seen webhook-ids (replay)",
                       ttl=2 * settings.inbound_tolerance_s, **common),
        KeyValueConfig(bucket=KV_IDEMPOTENCY, history=1,
                       description="tenant.sha256(Idempotency-Key) -> task id, body hash, response",
                       ttl=settings.idempotency_ttl_s, **common),
        KeyValueConfig(bucket=KV_CONSUMER_ERRORS, history=1,
                       description="stream.consumer.seq -> last error, for dead letters",
                       ttl=settings.dead_letter_days * 86_400.0, **common),
        KeyValueConfig(bucket=KV_DATASET_IMPORTS, history=1,
                       description="tenant.import_id -> ImportStatus (state, progress, report key)",
                       ttl=settings.import_status_days * 86_400.0, **common),
        KeyValueConfig(bucket=KV_ADMISSIONS, history=1,
                       description="task id -> tenant, body sha256, ingress (one owner per id)",
                       **common),
        KeyValueConfig(bucket=KV_RUNS, history=5,
                       description="task id -> RunLedger (owning attempt, per-task numbering)",
                       **common),
        KeyValueConfig(bucket=KV_LISTINGS, history=1, direct=True,
                       description="per-tenant numbered lists of tasks and datasets", **common),
        # issue 17: circuit breaker of each webhook endpoint (handlers/webhook_fairness.py)
        KeyValueConfig(bucket=KV_WEBHOOK_BREAKERS, history=1,
                       description="tenant.webhook id -> circuit breaker state", **common),
        KeyValueConfig(bucket=KV_SEARCHES, history=5,
                       description="search parent id -> SearchState (issue 18)", **common),
        KeyValueConfig(bucket=KV_RUNNERS, history=1,
                       description="runner id -> RunnerHeartbeat (live pool members)",
                       ttl=3 * settings.runner_heartbeat_s, **common),
    ]


def _drifted(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Only the fields we set count: the server fills the rest with its defaults."""
    for key, value in desired.items():
        if value is None or key in ("name", "durable_name"):
            continue
        have = actual.get(key)
        if value == [] and not have:  # "none" either way
            continue
        if isinstance(value, dict) and isinstance(have, dict):  # metadata: the server adds _nats.*
            if any(have.get(k) != v for k, v in value.items()):
                return True
        elif isinstance(value, list) and isinstance(have, list):
            if sorted(map(str, value)) != sorted(map(str, have)):
                return True
        elif have != value:
            return True
    return False


async def _apply_stream(js: JetStreamContext, cfg: StreamConfig) -> Change:
    assert cfg.name is not None
    try:
        info = await js.stream_info(cfg.name)
    except NotFoundError:
        await js.add_stream(cfg)
        return Change("stream", cfg.name, "created")
    if _drifted(cfg.as_dict(), info.config.as_dict()):
        await js.update_stream(cfg)
        return Change("stream", cfg.name, "updated")
    return Change("stream", cfg.name, "unchanged")


async def _apply_consumer(js: JetStreamContext, cfg: ConsumerConfig) -> Change:
    assert cfg.durable_name is not None
    name = cfg.durable_name
    stream = stream_of(name)
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        await js.add_consumer(stream, cfg)
        return Change("consumer", name, "created")
    if _drifted(cfg.as_dict(), info.config.as_dict()):
        await js.add_consumer(stream, cfg)  # create-or-update on the server
        return Change("consumer", name, "updated")
    return Change("consumer", name, "unchanged")


async def _apply_kv(js: JetStreamContext, cfg: KeyValueConfig) -> Change:
    try:
        await js.key_value(cfg.bucket)
        return Change("kv", cfg.bucket, "unchanged")
    except BucketNotFoundError:
        await js.create_key_value(cfg)
        return Change("kv", cfg.bucket, "created")


async def _delete_obsolete(js: JetStreamContext) -> list[Change]:
    gone = []
    for stream, names in OBSOLETE_CONSUMERS.items():
        for name in names:
            try:
                await js.delete_consumer(stream, name)
            except NotFoundError:
                continue
            gone.append(Change("consumer", name, "deleted"))
    return gone


async def apply(js: JetStreamContext, settings: Settings) -> list[Change]:
    """Create what is missing, update what drifted, delete :data:`OBSOLETE_CONSUMERS`.
    A pool removed from ``runner_pools`` keeps its ``runner-<pool>`` consumer (and
    whatever waits on it) until an operator deletes it."""
    changes = [await _apply_stream(js, cfg) for cfg in stream_configs(settings)]
    for ccfg in consumer_configs(settings).values():
        changes.append(await _apply_consumer(js, ccfg))
    changes.extend(await _delete_obsolete(js))
    for kcfg in kv_configs(settings):
        changes.append(await _apply_kv(js, kcfg))
    return changes


async def connect(settings: Settings, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect with reconnects forever: a NATS restart must not kill a service.

    Credentials and TLS come from the settings (:func:`infra.bus.connection.connect_options`).
    A node that stops answering (hung, frozen, cut off) is left for another node of
    the cluster after about 8 s of unanswered pings, not nats-py's default 6 minutes.
    """
    from infra.bus.connection import connect_options

    nc = await nats.connect(
        **connect_options(settings),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1.0,
        connect_timeout=5.0,
        ping_interval=2,
        max_outstanding_pings=3,
    )
    return nc, nc.jetstream()


async def streams_exist(js: JetStreamContext) -> bool:
    try:
        await js.stream_info(TASKS_STREAM)
    except (NotFoundError, nats.errors.Error, TimeoutError):
        return False
    return True


async def wait_for_streams(js: JetStreamContext, timeout_s: float = 60.0) -> None:
    """Services start before ``infra apply`` may have run: wait instead of creating."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await streams_exist(js):
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"stream {TASKS_STREAM} missing: run `radtrain infra apply`")
        await asyncio.sleep(0.5)
