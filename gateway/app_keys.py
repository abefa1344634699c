"""Typed application keys shared by the gateway's route modules."""

from __future__ import annotations

from aiohttp import web
from nats.js import JetStreamContext

from gateway.idempotency import IdempotencyStore
from gateway.keyed_ids import KeyedIds
from gateway.ratelimit import RateLimiter
from gateway.tenancy import ReplayGuard, TenantRepo
from infra.admission import AdmissionRepo
from infra.kv import DeliveryRepo, TaskRepo, WebhookRepo
from infra.kv.listing import ListingIndex
from infra.settings import Settings
from infra.store import ObjectStore

SETTINGS = web.AppKey("settings", Settings)
JS = web.AppKey("js", JetStreamContext)
TASKS = web.AppKey("tasks", TaskRepo)
CONNECTED = web.AppKey("connected", object)
TENANTS = web.AppKey("tenants", TenantRepo)
REPLAY = web.AppKey("replay", ReplayGuard)
WEBHOOK_SUBS = web.AppKey("webhook_subs", WebhookRepo)
DELIVERIES = web.AppKey("deliveries", DeliveryRepo)
LIMITER = web.AppKey("limiter", RateLimiter)
STORE: web.AppKey[ObjectStore] = web.AppKey("store")
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)
ADMISSIONS = web.AppKey("admissions", AdmissionRepo)
KEYED_IDS: web.AppKey[KeyedIds | None] = web.AppKey("keyed_ids")
"""``None``: every Idempotency-Key takes the KV path (gateway/keyed_ids.py)."""
TASK_LISTS = web.AppKey("task_lists", ListingIndex)

# Request-scoped values set by the middlewares (gateway/auth.py, gateway/observe.py).
TENANT = web.RequestKey("tenant", str)
API_KEY_ID = web.RequestKey("api_key_id", str)
TRACEPARENT = web.RequestKey("traceparent", str)
