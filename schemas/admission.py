"""Admission: who owns a task id, and the digest that tells a retry from another request.

Every ingress (``POST /v1/tasks``, signed ``POST /v1/events``, the NATS inbound
subjects) admits a task id once, in KV ``admissions``: task id →
:class:`AdmissionRecord`. The digest is of the user's request alone (the
:class:`~schemas.tasks.TaskRequest` fields, canonical JSON), not of who sent it
or how, so the same request sent through any ingress has the same digest.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import Identifier, Strict
from schemas.tasks import TaskRequest

Ingress = Literal["http", "events", "nats", "search"]
"""``search``: a trial the search handler (handlers/search) admits for its parent's tenant."""

NOT_REQUEST_FIELDS = frozenset({"task_id", "tenant", "idempotency_key", "parent_task_id",
                                "trial"})
"""Fields of ``task.requested`` data that say who asked and under which id, not what (a
search trial's parent and number: issue 18)."""


class AdmissionRecord(Strict):
    """KV ``admissions``: the owner of one task id."""

    tenant: Identifier
    body_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ingress: Ingress
    admitted_at: datetime


def request_digest(request: TaskRequest) -> str:
    """sha256 of the request's canonical JSON (sorted keys, no spaces, defaults filled in):
    a ``TaskRequest`` and the ``TaskRequested`` built from it have the same digest."""
    fields = {k: v for k, v in request.model_dump(mode="json").items()
              if k not in NOT_REQUEST_FIELDS}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
