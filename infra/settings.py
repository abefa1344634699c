"""One settings object per process, built in ``main()`` and passed down.

Every field can be set through the environment with the ``RADTRAIN_`` prefix
(``RADTRAIN_NATS_URL``, ``RADTRAIN_STORE_BACKEND`` ...). No module reads
``os.environ`` itself: that keeps tests free to run several stacks side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.pools import DEFAULT_POOLS, RunnerPool


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADTRAIN_", extra="ignore")

    # --- NATS / JetStream -------------------------------------------------
    nats_url: str = "nats://127.0.0.1:4222"
    """May carry ``user:password@`` (then no other credential setting is needed)."""
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_nkey_seed: Path | None = None
    """File holding this process's NKey seed (``SU...``); what ``radtrain up`` generates."""
    nats_creds: Path | None = None
    """A ``.creds`` file (JWT + seed), for servers in operator (decentralized JWT) mode."""
    nats_tls_ca: Path | None = None
    """CA bundle that signed the server's certificate; set it to connect with TLS."""
    nats_tls_cert: Path | None = None
    """Client certificate, where the server verifies clients (mutual TLS)."""
    nats_tls_key: Path | None = None
    nats_identity: Literal["services", "oncall"] = "services"
    """Which local-stack identity to use when no credential is set: its seed file is
    ``<data_dir>/nats/<identity>.nk`` (written by ``radtrain up``)."""
    stream_replicas: int = Field(1, ge=1, le=5)
    stream_max_age_days: float = Field(30.0, gt=0)
    duplicate_window_s: float = Field(180.0, ge=120.0)
    retry_delay_scale: float = Field(1.0, gt=0, le=10)
    """Scales every consumer's nak delays (infra/bus/topology.py); tests shrink the schedules."""
    idempotency_ttl_s: float = Field(86_400.0, ge=1)
    """How long an ``Idempotency-Key`` returns the same task and response; after it a
    reused key creates a new task (the answer names the new id)."""
    dead_letter_days: float = Field(30.0, gt=0)
    uvloop: bool = True
    """Run the services on uvloop where it is installed (infra/event_loop.py)."""

    # --- object store -----------------------------------------------------
    store_backend: Literal["local", "s3"] = "local"
    store_dir: Path = Path(".radtrain/store")
    s3_endpoint_url: str | None = None
    s3_bucket: str = "radtrain"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_retry_budget_s: float = Field(30.0, gt=0)
    """How long one S3 call keeps retrying connection errors, throttling and 5xx."""

    # --- gateway ----------------------------------------------------------
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8080, ge=0, le=65535)
    default_tenant: str = "default"
    max_request_bytes: int = Field(1_048_576, ge=1024)

    # --- runner -----------------------------------------------------------
    runner_id: str | None = None
    """Unique per runner process; default ``<hostname>-<pid>``."""
    runner_max_failures: int = Field(3, ge=1, le=20)
    """Attempts of one task that may end in a crash or an unexpected error before the task
    fails; a graceful stop (SIGTERM, preemption) does not count."""
    runner_max_deliver: int = Field(50, ge=2)
    """Backstop of the ``runner`` consumer (JetStream deliveries, preemptions included)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: Path = Path(".radtrain/cache")
    work_dir: Path = Path(".radtrain/work")
    heartbeat_s: float = Field(15.0, gt=0)
    progress_interval_s: float = Field(3.0, ge=0)
    ack_wait_s: float = Field(60.0, gt=0)
    dataloader_workers: int = Field(0, ge=0)
    compile_model: bool = False
    """``torch.compile`` the network (worth it on long GPU runs; slow to start)."""
    ddp_cpu_processes_max: int = Field(2, ge=1, le=256)
    """A CPU runner trains ``resources.gpus: N`` (N > 1) as N gloo processes when N is at
    most this; more is a permanent ``resources_unavailable`` (a CUDA runner: N devices)."""
    ddp_timeout_s: float = Field(1800.0, gt=0)
    """torch.distributed collective timeout: a rank stuck longer fails the attempt."""
    cancel_poll_s: float = Field(1.0, gt=0)
    """How often a training runner looks for ``task.cancel_requested``."""
    runner_pools: list[RunnerPool] = Field(default_factory=lambda: list(DEFAULT_POOLS))
    """The pool catalog (JSON list in ``RADTRAIN_RUNNER_POOLS``): enrich places tasks on
    these pools, ``infra apply`` creates one consumer ``runner-<pool>`` each. Order
    matters: a request that does not say ``gpus`` goes to the first pool. Default: one
    CPU pool ``cpu`` taking the requests the embedded stack always took."""
    runner_pool: str = "cpu"
    """The pool this runner serves (binds ``runner-<pool>``)."""
    runner_once: bool = False
    """Take one task, then exit 0 (a Kubernetes Job); ``python -m runner --once``."""
    runner_idle_exit_s: float = Field(0.0, ge=0)
    """Exit 0 after this long without a task (0: never); scale to zero."""
    runner_heartbeat_s: float = Field(5.0, gt=0)
    """How often a runner rewrites its record in KV ``runners`` (TTL: 3 heartbeats)."""

    # --- issue 15: held-out metrics with confidence intervals (runner/confidence.py) ---
    eval_bootstrap_resamples: int = Field(2000, ge=0, le=100_000)
    """Bootstrap resamples of the 95 % intervals when a task does not say (0: none)."""

    # --- issue 13 (H6): attempt-scoped checkpoints (runner/checkpoint.py) ----------
    checkpoints_kept: int = Field(2, ge=1, le=100)
    """Checkpoints a task keeps, one per attempt (``runs/<id>/attempts/<n>/checkpoints/``):
    once an attempt writes its first, older attempts' beyond the newest ``N - 1`` go."""

    # --- issue 16: datasets over the runner's disk (runner/shards.py, shard_cache.py) ---
    runner_cache_budget_bytes: int = Field(20 << 30, ge=1 << 20, le=1 << 50)
    """Most local disk one task's decoded data may take: a dataset whose decoded cache is
    larger streams from shards built once and shared through the store, through a local
    least-recently-used copy of at most this many bytes."""

    # --- issue 16 item 1 (H1): first-epoch decoding (runner/decode_pool.py) -------
    runner_decode_workers: int = Field(0, ge=0, le=256)
    """Processes decoding a task's cases into the cache (pydicom and numpy are CPU bound
    and hold the GIL); 0 = one per available CPU core, 1 = in the runner's process. They
    share the runner's decode memory budget (``decode_budget_process_bytes``)."""
    # --- end issue 16 item 1 (H1) -----------------------------------------------

    # --- embedded stack ---------------------------------------------------
    data_dir: Path = Path(".radtrain")
    nats_port: int = Field(4222, ge=0, le=65535)
    nats_sync_always: bool = True

    secrets_seal_key: Path | None = None
    """File with the hex HMAC key the services seal secret KV records with
    (infra/security/sealing.py); default: ``<data_dir>/nats/secrets-seal.key`` if present."""

    # --- tenancy, limits (issue 8) ----------------------------------------
    api_key: SecretStr | None = None
    """The key the CLI sends (``radtrain demo --url``); services never use it."""
    api_key_cache_s: float = Field(5.0, ge=0)
    """How long the gateway trusts a looked-up key: a revocation takes at most this long."""
    rate_limit_per_s: float = Field(20.0, gt=0)
    rate_limit_burst: int = Field(60, ge=1)
    inbound_tolerance_s: float = Field(300.0, gt=0)
    """Incoming signed events older or newer than this are refused (and replay ids kept 2x)."""

    # --- issue 17: resource limits (README "Limits") -------------------------
    unauth_rate_per_s: float = Field(5.0, gt=0)
    """Requests per second per client address whose key is not already known to this
    gateway (none, malformed, revoked, or not yet looked up): limited before any KV read."""
    unauth_burst: int = Field(20, ge=1)
    sse_max_per_key: int = Field(8, ge=1)
    """Open ``GET /v1/tasks/{id}/events`` streams per API key (per gateway process)."""
    sse_max_total: int = Field(1000, ge=1)
    """Open event streams of all keys together (per gateway process)."""
    decode_budget_request_bytes: int = Field(1 << 30, ge=1 << 20)
    """Estimated peak memory of decoding one image (every intermediate array: decoded,
    rescaled, windowed, resized), from its header before any decoding; over it: refused."""
    decode_budget_process_bytes: int = Field(2 << 30, ge=1 << 20)
    """All decodes in flight in one process together; a decode waits for room."""
    decode_budget_wait_s: float = Field(10.0, ge=0)
    """How long a decode waits for room in the process budget before a 503."""
    decode_workers: int = Field(2, ge=1, le=64)
    """Threads of the gateway's decoding pool (previews): never the event loop."""
    preview_cache_entries: int = Field(4096, ge=1)
    """Rendered previews kept in the store by one gateway; the least recently used go."""
    preview_cache_bytes: int = Field(256 << 20, ge=1 << 16)
    import_max_object_bytes: int = Field(1 << 30, ge=1)
    """One object of an import source larger than this fails the import before any copy."""
    import_max_total_bytes: int = Field(50 << 30, ge=1)
    """All objects of an import source together; checked from the listing, before copying."""

    # --- outgoing webhooks ------------------------------------------------
    webhooks_allow_private: bool = False
    """Allow loopback/private/link-local targets: only for tests and closed networks."""
    webhook_timeout_s: float = Field(15.0, gt=0, le=120)
    webhook_retry_base_s: float = Field(5.0, gt=0)
    webhook_retry_max_delay_s: float = Field(7200.0, gt=0)
    webhook_retry_window_s: float = Field(86_400.0, gt=0)
    """Retries stop once the next attempt would fall this long after the first."""
    webhook_secret_overlap_s: float = Field(86_400.0, ge=0)
    """After a rotation the previous secret keeps signing this long (several signatures)."""
    webhook_log_days: float = Field(7.0, gt=0)
    webhook_list_cache_s: float = Field(5.0, ge=0, le=300)
    """Most seconds the deliverer keeps a tenant's subscriptions in memory while its KV
    watch is down; with the watch up a change is seen at once (infra/kv/tenant_cache.py)."""

    # --- issue 17: fair webhook delivery (handlers/delivery_pool.py, webhook_fairness.py)
    webhook_workers: int = Field(64, ge=1, le=4096)
    """Delivery attempts in flight at once in one handlers process (all tenants)."""
    webhook_per_tenant: int = Field(16, ge=1)
    """Most attempts one tenant holds at once: the rest of the workers stay for others."""
    webhook_per_endpoint: int = Field(4, ge=1)
    """Most attempts to one subscription (endpoint) at once."""
    webhook_queue_per_tenant: int = Field(64, ge=1)
    """Jobs of one tenant held waiting in a process; more are deferred (nak) to the stream."""
    webhook_queue_hold_s: float = Field(5.0, gt=0)
    """A job waits in the process at most this long, then goes back to the stream."""
    webhook_defer_s: float = Field(1.0, gt=0)
    """Delay of a job deferred by the fair scheduler (not an attempt: no retry counted)."""
    webhook_breaker_failures: int = Field(5, ge=1)
    """Consecutive failed attempts of an endpoint before its circuit may open ..."""
    webhook_breaker_period_s: float = Field(60.0, ge=0)
    """... once it has been failing for at least this long."""
    webhook_breaker_cooldown_s: float = Field(60.0, gt=0)
    """An open circuit waits this long, then lets one probe through (half-open)."""

    # --- dataset import jobs (handlers/datasets_import/job.py) -------------
    import_ack_wait_s: float = Field(60.0, gt=0)
    """Ack wait of the ``dataset-import`` consumer; a running job sends in_progress meanwhile."""
    import_heartbeat_s: float = Field(15.0, gt=0)
    """How often a running import tells JetStream it is alive (``in_progress``)."""
    import_progress_interval_s: float = Field(1.0, ge=0)
    """At most one KV progress write per interval."""
    import_status_days: float = Field(30.0, gt=0)
    """How long KV ``dataset_imports`` keeps an import's status."""
    import_max_objects: int = Field(200_000, ge=1)
    """An import source with more objects than this fails at once."""

    # --- issue 16 item 2 (H3): import throughput ----------------------------
    import_upload_workers: int = Field(16, ge=1, le=256)
    """Threads storing an import's images at once (the store is I/O bound: fsyncs, requests)."""
    import_header_workers: int = Field(0, ge=0, le=64)
    """Processes reading image headers in parallel (pydicom is CPU bound and holds the GIL);
    0 = one per idle CPU core (cores less the load average), 1 = in the importing process."""
    import_header_pool_min: int = Field(20_000, ge=1)
    """Fewer images than this are read in-process: starting the workers (a forkserver that
    imports pydicom, then each worker) costs about a second of CPU, more than they save on
    a few thousand headers."""
    s3_max_connections: int = Field(32, ge=1, le=1024)
    """Pooled HTTP connections of the S3 client; at least ``import_upload_workers``, or
    uploads queue for a connection."""
    # --- end issue 16 item 2 (H3) -------------------------------------------

    # --- issue 16 item 3 (H4): gateway worker processes (gateway/workers.py) ---
    gateway_workers: int = Field(1, ge=1, le=64)
    """Gateway processes sharing ``gateway_port`` (SO_REUSEPORT; the kernel spreads the
    connections), under one supervisor that restarts a dead one and stops them all on
    SIGTERM/SIGINT. 1 = the gateway serves in its own process. The SSE caps, the preview
    cache and decoding budget and the rate limits are per process: N workers allow up to
    N times each."""
    gateway_stop_timeout_s: float = Field(15.0, gt=0, le=300)
    """How long the supervisor waits for its workers to finish after SIGTERM before it
    kills them (less than what ``radtrain up`` waits for the supervisor)."""
    # --- end issue 16 item 3 (H4) ----------------------------------------------

    # --- issue 13 item 7 (H5): handlers CPU per task (infra/bus/subscriber.py) -----
    decode_cache_bytes: int = Field(4 * 1024 * 1024, ge=0, le=256 * 1024 * 1024)
    """Task events the handlers keep decoded (bytes of their JSON; in memory about 6
    times more), so that the consumers that receive the same event (projector, task
    index, webhooks, enrich) decode it once. The projector can run a thousand tasks
    behind enrich under load, hence megabytes. 0 = every consumer decodes for itself."""
    # --- end issue 13 item 7 (H5) ----------------------------------------------

    # --- issue 14: browser uploads (gateway/uploads.py) ---------------------
    upload_max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    """One file uploaded through ``PUT /v1/uploads/...``: streamed to the store, never held
    in gateway memory; a body past this many bytes is refused (413) and nothing is kept."""

    # --- observability ----------------------------------------------------
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    handlers_metrics_port: int = Field(0, ge=0, le=65535)
    """Prometheus port of the handlers process; 0 = no metrics server."""
    runner_metrics_port: int = Field(0, ge=0, le=65535)
    handlers_health_port: int = Field(0, ge=0, le=65535)
    """``/healthz`` (loop alive) and ``/readyz`` (NATS connected, consumers bound) of the
    handlers process; 0 = none."""
    runner_health_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
