"""CloudEvents content modes: one event dict, whether it came structured or binary.

Other systems send CloudEvents two ways (HTTP binding 1.0.2, NATS binding in
the spec's main branch, where NATS 2.2 headers made binary mode possible):

* structured: the whole event is the JSON body (``application/cloudevents+json``,
  or plain ``application/json``);
* binary: each attribute is a ``ce-<name>`` header (values percent-encoded), the
  body is the event's ``data``, and its media type is ``Content-Type`` (HTTP) or
  ``ce-datacontenttype`` / ``content-type`` (NATS).

:func:`event_dict` turns either into the structured JSON object that
``schemas.events.parse_event`` validates, so every ingress (HTTP, NATS, the
subscriber loop) parses one shape. Written here rather than taken from the
official SDK because the SDK is an HTTP/Kafka helper that owns parsing of
``data``; it is used in the tests to build what senders send.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

__all__ = [
    "STRUCTURED_MEDIA",
    "CloudEventFormatError",
    "event_bytes",
    "event_dict",
    "is_binary",
]

PREFIX = "ce-"
STRUCTURED_MEDIA = "application/cloudevents+json"
BATCH_MEDIA = "application/cloudevents-batch"
MAX_HEADER_CHARS = 4096


class CloudEventFormatError(ValueError):
    """The message is not a CloudEvent in a mode we read; the text names what is wrong."""


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def is_binary(headers: Mapping[str, str] | None) -> bool:
    """Binary mode is told by a ``ce-specversion`` header (any case). Asked of every
    event a consumer decodes, most with a few headers and none of them CloudEvents':
    no copy of the headers is made."""
    if not headers:
        return False
    name = f"{PREFIX}specversion"
    return name in headers or any(k.lower() == name for k in headers)


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json_media(media: str) -> bool:
    return media in ("", "application/json", "text/json") or media.endswith("+json")


def event_dict(headers: Mapping[str, str] | None, body: bytes) -> dict[str, Any]:
    """The event as one JSON object (attributes + ``data``), from either content mode.

    Raises :class:`CloudEventFormatError` naming the header or the part of the body
    that is wrong; attribute-level validation is left to the pydantic models.
    """
    lower = _lower(headers)
    if _media(lower.get("content-type")).startswith(BATCH_MEDIA):
        raise CloudEventFormatError("batched CloudEvents are not accepted: send one event "
                                    "per message")
    if is_binary(headers):
        return _from_binary(lower, body)
    return _from_structured(body)


def event_bytes(headers: Mapping[str, str] | None, body: bytes) -> bytes:
    """Structured JSON bytes of the event: ``body`` itself when it already is one."""
    if not is_binary(headers):
        return body
    return json.dumps(event_dict(headers, body), separators=(",", ":")).encode()


def _from_structured(body: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CloudEventFormatError(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CloudEventFormatError(
            f"a structured CloudEvent is a JSON object, not {type(raw).__name__}")
    return raw


def _from_binary(lower: dict[str, str], body: bytes) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for name, value in lower.items():
        if not name.startswith(PREFIX) or len(name) == len(PREFIX):
            continue
        if len(value) > MAX_HEADER_CHARS:
            raise CloudEventFormatError(f"header {name!r} is longer than {MAX_HEADER_CHARS}")
        attr = name[len(PREFIX):]
        if attr == "data":
            raise CloudEventFormatError("header 'ce-data': data travels in the body")
        event[attr] = unquote(value)
    media = event.get("datacontenttype") or lower.get("content-type") or "application/json"
    event["datacontenttype"] = media
    if not _is_json_media(_media(media)):
        raise CloudEventFormatError(f"datacontenttype {media!r}: data must be JSON")
    if body:
        try:
            event["data"] = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CloudEventFormatError(f"data (the body) is not JSON: {exc}") from None
    return event
