"""Object store: one small interface, a local-directory and an S3 implementation.

Every artifact (datasets, checkpoints, models, plots) goes through this module
so that the rest of the system never cares where bytes live (DESIGN.md §5).
Two guarantees matter to callers:

* writes are atomic: an object is written under a temporary key and then
  renamed (local) or copied (S3), or, on S3, sent as one PutObject (atomic
  there: what fits under the multipart threshold), so a reader sees the whole
  object or none;
* the sha256 of what was written is returned, so it can be put in events.

The interface is synchronous on purpose (boto3 is); async code calls it through
``asyncio.to_thread``. ``S3Store`` lives in ``infra.store.s3`` so that importing
this module does not pull in boto3; ``from infra.store import S3Store`` still works.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.store.interface import (
    CHUNK_SIZE,
    MAX_KEY_BYTES,
    DeferredSync,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    StoreUnavailable,
    copy_hashing,
    is_temp_key,
    temp_key_for,
    validate_key,
    validate_prefix,
)
from infra.store.local import LocalStore, write_atomically

if TYPE_CHECKING:
    from infra.settings import Settings
    from infra.store.s3 import S3Store

__all__ = [
    "CHUNK_SIZE",
    "MAX_KEY_BYTES",
    "DeferredSync",
    "InvalidKey",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "StoreUnavailable",
    "copy_hashing",
    "is_temp_key",
    "open_store",
    "temp_key_for",
    "validate_key",
    "validate_prefix",
    "write_atomically",
]


def open_store(settings: Settings, *, ensure_bucket: bool = True) -> ObjectStore:
    """Build the store the settings ask for; with S3, make sure the bucket exists."""
    if settings.store_backend == "local":
        return LocalStore(settings.store_dir)
    from infra.store.s3 import S3Store

    secret = settings.s3_secret_access_key
    store = S3Store(
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key_id,
        secret_key=secret.get_secret_value() if secret is not None else None,
        retry_budget_s=settings.s3_retry_budget_s,
        max_connections=max(settings.s3_max_connections, settings.import_upload_workers),
    )
    if ensure_bucket:
        store.ensure_bucket()
    return store


def __getattr__(name: str) -> Any:
    # Lazy, so that importing infra.store does not import boto3.
    if name == "S3Store":
        from infra.store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
