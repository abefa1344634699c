"""``radtrain tasks logs``: a task's events from ``GET /v1/tasks/{id}/events`` (SSE).

The gateway replays the history, then follows live events and closes the stream
after a terminal one. Without ``--follow`` the command stops once the stream
has been quiet for ``idle`` seconds (the history is sent at once), so a running
task's log prints and returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from radtrain.cli.client import Target
from radtrain.cli.watch import sse_frames

FOLLOW_TIMEOUT_S = 60.0


def read_events(t: Target, path: str, follow: bool, idle_s: float
                ) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(id, event, data)`` of each event; ``data`` is the CloudEvent's ``data``."""
    frames = sse_frames(t.url + path, t.token, None,
                        timeout_s=FOLLOW_TIMEOUT_S if follow else idle_s)
    try:
        for event_id, name, raw in frames:
            yield event_id, name, dict(json.loads(raw).get("data") or {})
    except TimeoutError:
        if follow:
            raise
        return  # quiet for idle_s: the history has been read


def event_line(event_id: str, name: str, data: dict[str, Any]) -> str:
    """One human line per event: sequence, name and what matters in it."""
    keys = {
        "started": ("attempt", "runner_id", "resumed_from_epoch"),
        "progress": ("epoch", "epochs", "step", "total_steps", "loss"),
        "failed": ("code", "message", "retryable", "attempt"),
        "rejected": ("errors",),
        "cancelled": ("reason", "by"),
        "cancel_requested": ("reason", "by"),
        "completed": ("metrics", "duration_s"),
        "redriven": ("generation", "by", "reason"),
    }.get(name, ())
    parts = [f"{k}={_short(data[k])}" for k in keys if data.get(k) is not None]
    return f"#{event_id:<6} {name:<16} {' '.join(parts)}".rstrip()


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."
