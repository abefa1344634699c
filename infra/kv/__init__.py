"""Typed access to the KV buckets: one generic repository, and each bucket's key scheme.

:mod:`infra.kv.repository` holds :class:`KVRepository` (get, put, create,
compare-and-set update, delete, server-filtered scan) and the :class:`Bucket` /
:class:`BucketRepo` declarations; :mod:`infra.kv.buckets` the buckets several
services share. A bucket only one service uses is declared with that service
(gateway/tenancy.py, gateway/idempotency.py, infra/bus/last_errors.py).
"""

from infra.kv.buckets import DatasetRepo, DeliveryRepo, RunRepo, TaskRepo, WebhookRepo
from infra.kv.repository import Bucket, BucketRepo, KVRepository

__all__ = ["Bucket", "BucketRepo", "DatasetRepo", "DeliveryRepo", "KVRepository", "RunRepo",
           "TaskRepo", "WebhookRepo"]
