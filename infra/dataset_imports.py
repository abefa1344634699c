"""Dataset import jobs on the bus: the job message and KV ``dataset_imports`` (status).

Shared by the gateway (``POST /v1/datasets/imports``), the CLI (``radtrain
datasets import``) and the job handler (handlers/datasets_import/job.py):

- the job goes to ``imports.jobs.<tenant>.<import_id>`` on the work-queue
  stream ``IMPORTS`` with ``Nats-Msg-Id: dataset-import-<import_id>``, so a
  re-published job within the duplicate window is dropped by the server;
- its status lives in KV under ``<tenant>.<import_id>``: a reader looks up its
  own tenant's key only, so another tenant's import is simply not there.
  Writers use compare-and-set on the revision (infra/kv).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from infra.bus.topology import IMPORT_JOBS_SUBJECT, IMPORTS_STREAM, KV_DATASET_IMPORTS
from infra.kv import Bucket, BucketRepo
from infra.store import validate_key
from schemas.dataset_import import ImportJob, ImportStatus

IMPORT_NS = uuid.UUID("0d7c5a43-2f0e-4c8e-93a5-8f3c1b6e9d21")
IMPORTS_PREFIX = "imports"
"""Where a tenant's import sources are uploaded: ``imports/<tenant>/<source>/``."""


def source_prefix(tenant: str, source: str) -> str:
    """``imports/<tenant>/<source>``; ``InvalidKey`` for an absolute path or ``..``, so a
    source can never reach another tenant's area."""
    return f"{IMPORTS_PREFIX}/{tenant}/{validate_key(source.rstrip('/'))}"


def new_import_id(tenant: str, idempotency_key: str | None = None) -> str:
    """A repeated Idempotency-Key maps to the same id (hence the same message id)."""
    if idempotency_key:
        return uuid.uuid5(IMPORT_NS, f"{tenant}\x00{idempotency_key}").hex
    return uuid.uuid4().hex


def status_key(tenant: str, import_id: str) -> str:
    return f"{tenant}.{import_id}"


def job_subject(tenant: str, import_id: str) -> str:
    return f"{IMPORT_JOBS_SUBJECT}.{tenant}.{import_id}"


def job_msg_id(import_id: str) -> str:
    return f"dataset-import-{import_id}"


def queued_status(job: ImportJob) -> ImportStatus:
    now = datetime.now(UTC)
    return ImportStatus(import_id=job.import_id, tenant=job.tenant, state="queued",
                        request=job.request, dataset_id=job.request.dataset_id,
                        created_at=job.submitted_at, updated_at=now)


class ImportRepo(BucketRepo[ImportStatus]):
    """KV ``dataset_imports``: ``<tenant>.<import_id>`` → ImportStatus."""

    BUCKET = Bucket(KV_DATASET_IMPORTS, ImportStatus)

    async def get(self, tenant: str, import_id: str) -> tuple[ImportStatus, int] | None:
        return await self.kv.get_entry(status_key(tenant, import_id))

    async def create(self, status: ImportStatus) -> bool:
        """Write the first status; ``False`` (and nothing written) if the import exists."""
        return await self.kv.create(status_key(status.tenant, status.import_id),
                                    status) is not None

    async def update(self, tenant: str, import_id: str,
                     change: Callable[[ImportStatus | None], ImportStatus | None]
                     ) -> ImportStatus | None:
        """Read, apply ``change`` (``None``: write nothing), write by compare-and-set."""
        return await self.kv.update(status_key(tenant, import_id), change)

    async def list(self, tenant: str) -> list[ImportStatus]:
        """The tenant's imports, newest first; a malformed entry is skipped."""
        out = list((await self.kv.scan(f"{tenant}.*")).values())
        out.sort(key=lambda s: s.created_at, reverse=True)
        return out


async def publish_job(js: JetStreamContext, job: ImportJob, *, ack_timeout_s: float = 10.0
                      ) -> PubAck:
    """Publish and wait for the JetStream ack; a duplicate within the window is a no-op."""
    return await js.publish(job_subject(job.tenant, job.import_id),
                            job.model_dump_json().encode(), timeout=ack_timeout_s,
                            headers={"Nats-Msg-Id": job_msg_id(job.import_id)})


async def job_in_stream(js: JetStreamContext, tenant: str, import_id: str) -> bool:
    """Whether the job still waits in the stream (acked jobs are removed)."""
    try:
        await js.get_last_msg(IMPORTS_STREAM, job_subject(tenant, import_id))
    except NotFoundError:
        return False
    return True


async def submit_import(js: JetStreamContext, repo: ImportRepo, job: ImportJob) -> ImportStatus:
    """Queued status first (a reader never sees a job without one), then the job.

    Safe to call again for the same ``import_id``: the status is only created
    if absent, and the message id makes a second publish a no-op.
    """
    status = queued_status(job)
    if not await repo.create(status):
        found = await repo.get(job.tenant, job.import_id)
        if found is not None:
            status = found[0]
            if status.finished:
                return status
    await publish_job(js, job)
    return status
