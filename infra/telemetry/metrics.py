"""Prometheus metrics shared by every process, and the per-process setup.

Each process owns its default registry: the gateway serves it at ``/metrics``,
the handlers and the runner through ``prometheus_client.start_http_server`` on
a settings port (0 = off, the default, so tests and the embedded stack never
fight over a port).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from infra.settings import Settings
from infra.telemetry.logging import setup_logging

log = logging.getLogger("radtrain.metrics")

HTTP_REQUESTS = Counter(
    "radtrain_http_requests_total", "HTTP requests answered by the gateway.",
    ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "radtrain_http_request_duration_seconds", "Gateway request latency.", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
EVENTS_HANDLED = Counter(
    "radtrain_events_handled_total", "Messages settled by a consumer, by event type and outcome.",
    ["consumer", "type", "outcome"])
EVENT_LATENCY = Histogram(
    "radtrain_event_handle_duration_seconds", "Time to handle one message.", ["consumer"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 600.0))
CONSUMER_LAG = Gauge(
    "radtrain_consumer_lag", "Messages waiting for a durable consumer (num_pending).",
    ["consumer"])
RUNNER_IMAGES_PER_S = Gauge(
    "radtrain_runner_images_per_second", "Training throughput of the runner's current task.")
WEBHOOK_ATTEMPTS = Counter(
    "radtrain_webhook_attempts_total", "Outgoing webhook attempts by outcome.", ["outcome"])
LISTING_OWED = Gauge(
    "radtrain_listing_owed_positions",
    "List positions this process still has to settle after a step failed half way.")
LISTING_LEFT = Counter(
    "radtrain_listing_positions_left_total",
    "Owed list positions given up on (a task may show twice in a list), by reason.",
    ["reason"])


def setup_process(service: str, settings: Settings, metrics_port: int = 0) -> None:
    """JSON logs and, when a port is set, the Prometheus endpoint of one process."""
    setup_logging(service, fmt=settings.log_format, level=settings.log_level)
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, metrics_port)


LABELLED_MAX = 4096
"""Label sets kept at hand by :func:`labelled` (routes are templates, consumers, event
types, methods and outcomes few: a few hundred); past it, children are looked up anew."""
_labelled: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per label set: ``labels()`` takes a lock
    and builds a key on every call, a measurable share of a request's or a delivery's CPU
    (the gateway's and the handlers' hot paths)."""
    key = (metric, values)
    child = _labelled.get(key)
    if child is None:
        child = metric.labels(*values)
        if len(_labelled) < LABELLED_MAX:
            _labelled[key] = child
    return child
