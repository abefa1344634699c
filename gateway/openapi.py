"""OpenAPI 3.1 from the pydantic contracts, served at ``/openapi.json``, listed at ``/docs``.

A small hand-written table maps each route to its parameters and to the
models of its request and responses; the schemas themselves come from
``schemas/`` through ``models_json_schema``, so the document cannot drift
from what the gateway validates. A route added elsewhere (datasets, zoo)
adds its :class:`Op` to :data:`OPERATIONS`; a test checks every route is here.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from schemas.api import (
    ArtifactPage,
    CancelAccepted,
    CancelRequest,
    ErrorBody,
    TaskAccepted,
    TaskPage,
)
from schemas.common import ID_PATTERN
from schemas.events import TaskRequestedEvent
from schemas.record import TaskRecord
from schemas.search_state import SearchView
from schemas.tasks import TaskRequest
from schemas.webhooks import DeliveryPage, Webhook, WebhookCreate, WebhookPage, WebhookSecret

Schema = type[BaseModel] | dict[str, Any] | None

ERRORS: dict[int, str] = {
    400: "Malformed JSON or query parameter.",
    401: "Missing, invalid or revoked API key (or, for events, a bad signature).",
    403: "The event names another tenant.",
    404: "Not found for the caller's tenant (another tenant's object looks the same).",
    409: "Conflict: a tenant limit is reached, an Idempotency-Key is reused with another "
         "body, or a task id is not available (already requested with another body, or "
         "not this tenant's to use).",
    413: "Request body over the size limit.",
    415: "Content-Type is not JSON.",
    422: "The body does not match the contract; details name each field.",
    429: "A rate limit (the API key's, or the client address's before a key is known) or "
         "the cap on open event streams; see Retry-After.",
    503: "The event bus or the store is unavailable; retry later.",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: dict[str, Any]
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    op_id: str
    summary: str
    tag: str
    ok: dict[int, Schema]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    body_types: tuple[str, ...] = ("application/json",)
    params: tuple[Param, ...] = ()
    public: bool = False
    ok_type: str = "application/json"
    ok_headers: dict[str, str] = field(default_factory=dict)


def _id(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "string", "pattern": ID_PATTERN}, True, f"{what} id")


PAGING = (Param("limit", "query", {"type": "integer", "minimum": 0, "maximum": 500}),
          Param("offset", "query", {"type": "integer", "minimum": 0, "maximum": 10**9}))
CURSOR = Param("cursor", "query", {"type": "string"},
               description="The `next` of the previous page (not with offset)")
STATUS = {"type": "object", "properties": {"status": {"type": "string"}},
          "required": ["status"]}
AUTHED = (401, 429)
SSE_EVENT = {  # OpenAPI 3.1: an event-stream's schema describes each event, not the stream
    "type": "object", "description": "One event; data is a CloudEvent envelope as JSON.",
    "properties": {"id": {"type": "string"}, "event": {"type": "string"},
                   "data": {"type": "string"}, "retry": {"type": "integer"}}}
SIGNATURE = tuple(Param(h, "header", {"type": "string", "minLength": 1}, True, d) for h, d in (
    ("webhook-id", "Unique message id; a replay is refused."),
    ("webhook-timestamp", "Unix seconds; refused outside the tolerance (5 minutes)."),
    ("webhook-signature", "v1,<base64 HMAC-SHA256 of id.timestamp.body>, space-separated.")))

OPERATIONS: list[Op] = [
    Op("post", "/v1/tasks", "submitTask", "Submit a training task", "tasks",
       {202: TaskAccepted}, (400, *AUTHED, 409, 413, 415, 422, 503), body=TaskRequest,
       params=(Param("Idempotency-Key", "header", {"type": "string", "minLength": 1,
                                                   "maxLength": 255}, False,
                     "Within its retention window (24 h by default, the setting "
                     "idempotency_ttl_s) the same key and body answer the first task again "
                     "(Idempotent-Replayed: true) and another body is a 409; after it, the "
                     "key starts a new task and the answer names the new id."),),
       ok_headers={"Location": "/v1/tasks/{task_id}"}),
    Op("get", "/v1/tasks", "listTasks", "List the tenant's tasks, newest first", "tasks",
       {200: TaskPage}, (400, *AUTHED), params=(*PAGING, CURSOR, Param("state", "query", {
           "type": "string", "enum": ["requested", "ready", "rejected", "running",
                                      "completed", "failed", "cancelled"]}),
           Param("parent", "query", {"type": "string"}, False,
                 "Only the trials of this search (issue 18), in trial order."))),
    Op("get", "/v1/tasks/{task_id}/search", "getSearch",
       "A hyperparameter search: its status, best trial and every trial", "tasks",
       {200: SearchView}, (*AUTHED, 404, 503), params=(_id("task_id", "task"),)),
    Op("get", "/v1/tasks/{task_id}", "getTask", "A task's record", "tasks",
       {200: TaskRecord}, (*AUTHED, 404), params=(_id("task_id", "task"),)),
    Op("get", "/v1/tasks/{task_id}/artifacts/{name}", "getArtifact",
       "Download an artifact of a task", "tasks",
       {200: {"type": "string", "format": "binary"}}, (*AUTHED, 404, 503),
       params=(_id("task_id", "task"), Param("name", "path", {"type": "string",
                                                              "maxLength": 200}, True)),
       ok_type="application/octet-stream"),
    Op("post", "/v1/tasks/{task_id}/cancel", "cancelTask",
       "Ask the runner to stop the task (it keeps its last checkpoint)", "tasks",
       {202: CancelAccepted}, (400, *AUTHED, 404, 409, 413, 415, 422, 503), body=CancelRequest,
       params=(_id("task_id", "task"),)),
    Op("get", "/v1/tasks/{task_id}/artifacts", "listArtifacts",
       "A task's artifacts with sha256 and download links", "tasks",
       {200: ArtifactPage}, (*AUTHED, 404), params=(_id("task_id", "task"),)),
    Op("get", "/v1/tasks/{task_id}/events", "taskEvents",
       "The task's events, replayed then live, as Server-Sent Events", "tasks",
       {200: SSE_EVENT}, (400, *AUTHED, 404),
       params=(_id("task_id", "task"), Param("Last-Event-ID", "header", {"type": "string"})),
       ok_type="text/event-stream"),
    Op("post", "/v1/events", "postEvent",
       "Signed task.requested CloudEvent from upstream (structured mode, or binary mode "
       "with ce-* headers); data.tenant defaults to the key's tenant",
       "events", {202: TaskAccepted}, (400, *AUTHED, 403, 409, 413, 415, 422, 503),
       body=TaskRequestedEvent, body_types=("application/cloudevents+json", "application/json"),
       params=SIGNATURE, ok_headers={"Location": "/v1/tasks/{task_id}"}),
    Op("post", "/v1/webhooks", "createWebhook", "Subscribe a URL to status events", "webhooks",
       {201: WebhookSecret}, (400, *AUTHED, 409, 413, 415, 422), body=WebhookCreate,
       ok_headers={"Location": "/v1/webhooks/{webhook_id}"}),
    Op("get", "/v1/webhooks", "listWebhooks", "List the tenant's webhooks", "webhooks",
       {200: WebhookPage}, (400, *AUTHED), params=PAGING),
    Op("get", "/v1/webhooks/{webhook_id}", "getWebhook", "A webhook subscription", "webhooks",
       {200: Webhook}, (*AUTHED, 404), params=(_id("webhook_id", "webhook"),)),
    Op("delete", "/v1/webhooks/{webhook_id}", "deleteWebhook", "Unsubscribe", "webhooks",
       {204: None}, (*AUTHED, 404), params=(_id("webhook_id", "webhook"),)),
    Op("post", "/v1/webhooks/{webhook_id}/rotate-secret", "rotateWebhookSecret",
       "New signing secret; the old one keeps signing during the overlap", "webhooks",
       {200: WebhookSecret}, (*AUTHED, 404), params=(_id("webhook_id", "webhook"),)),
    Op("get", "/v1/webhooks/{webhook_id}/deliveries", "listDeliveries",
       "Deliveries of a webhook, newest first, with every attempt", "webhooks",
       {200: DeliveryPage}, (400, *AUTHED, 404), params=(_id("webhook_id", "webhook"), *PAGING)),
    Op("get", "/healthz", "health", "Liveness", "operations", {200: STATUS}, public=True),
    Op("get", "/readyz", "ready", "Readiness: NATS connected, streams present", "operations",
       {200: STATUS}, (503,), public=True),
    Op("get", "/metrics", "metrics", "Prometheus metrics", "operations",
       {200: {"type": "string"}}, public=True, ok_type="text/plain"),
    Op("get", "/openapi.json", "openapi", "This document", "operations",
       {200: {"type": "object"}}, public=True),
    Op("get", "/docs", "docs", "This document as a page", "operations",
       {200: {"type": "string"}}, public=True, ok_type="text/html"),
]


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for op in OPERATIONS:
        if op.body is not None and (op.body, "validation") not in seen:
            seen.append((op.body, "validation"))
        for schema in op.ok.values():
            if isinstance(schema, type) and (schema, "serialization") not in seen:
                seen.append((schema, "serialization"))
    return seen


def _response(schema: Any, description: str, content_type: str,
              headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {content_type: {"schema": schema}}
    if headers:
        out["headers"] = headers
    return out


def _operation(op: Op, refs: dict[Any, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.op_id, "summary": op.summary, "tags": [op.tag]}
    if op.params:
        doc["parameters"] = [{"name": p.name, "in": p.where, "required": p.required,
                              "schema": p.schema, "description": p.description}
                             for p in op.params]
    if op.body is not None:
        ref = refs[(op.body, "validation")]
        doc["requestBody"] = {"required": True,
                              "content": {t: {"schema": ref} for t in op.body_types}}
    responses: dict[str, Any] = {}
    for status, schema in op.ok.items():
        resolved = refs[(schema, "serialization")] if isinstance(schema, type) else schema
        ok_headers: dict[str, Any] = {
            name: {"schema": {"type": "string"}, "description": f"e.g. {example}"}
            for name, example in op.ok_headers.items()}
        responses[str(status)] = _response(resolved, "Success", op.ok_type, ok_headers)
    error_ref = refs[(ErrorBody, "serialization")]
    for status in op.errors:
        headers: dict[str, Any] | None = None
        if status == 429:
            headers = {"Retry-After": {"schema": {"type": "string"},
                                       "description": "Seconds to wait."}}
        responses[str(status)] = _response(error_ref, ERRORS[status], "application/json",
                                           headers)
    doc["responses"] = responses
    if op.public:
        doc["security"] = []
    return doc


@cache
def document() -> dict[str, Any]:
    refs, top = models_json_schema(_models(), ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "radtrain", "version": "1",
                 "description": "Train medical-imaging models from events. Every route but "
                                "the operational ones needs `Authorization: Bearer <key>`."},
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def docs_html(doc: dict[str, Any]) -> str:
    """A plain page listing every operation: offline, no renderer, no CDN."""
    rows = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
            body: dict[str, Any] = op.get("requestBody", {}).get("content", {})
            first: dict[str, Any] = next(iter(body.values()), {})
            body_ref = str(first.get("schema", {}).get("$ref", ""))
            statuses = ", ".join(op["responses"])
            auth = "public" if op.get("security") == [] else "bearer key"
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                method.upper(), path, op["summary"], params, body_ref.rsplit("/", 1)[-1],
                statuses, auth)) + "</tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>radtrain API</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h1>{html.escape(doc['info']['title'])} API</h1>"
            f"<p>{html.escape(doc['info']['description'])}</p>"
            "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). "
            "In a browser: the <a href='/console/'>web console</a>.</p>"
            "<table><tr><th>method</th><th>path</th><th>summary</th><th>parameters</th>"
            "<th>body</th><th>responses</th><th>auth</th></tr>" + "".join(rows) +
            "</table></body></html>")


routes = web.RouteTableDef()


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(document()), content_type="application/json")


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_html(document()), content_type="text/html")
