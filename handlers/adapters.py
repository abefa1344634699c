"""Adapters the pure handlers need: the weights index over the object store."""

from __future__ import annotations

import hashlib

from handlers.catalog.zoo import weights_key
from handlers.enrich import WeightsRef
from infra.store import ObjectNotFound, ObjectStore


def sha256_key(entry_id: str) -> str:
    return weights_key(entry_id) + ".sha256"


class StoreWeightsIndex:
    """Offline mirror first (DESIGN.md §7): ``zoo/weights/<entry>.safetensors`` + its sha256.

    The sidecar avoids hashing hundreds of MB on every enrichment; without it
    the hash is computed once and written back.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def find(self, entry_id: str) -> WeightsRef | None:
        key = weights_key(entry_id)
        if not self._store.exists(key):
            return None
        try:
            digest = self._store.get_bytes(sha256_key(entry_id)).decode().strip()
        except ObjectNotFound:
            digest = hashlib.sha256(self._store.get_bytes(key)).hexdigest()
            self._store.put_bytes(sha256_key(entry_id), digest.encode(), "text/plain")
        return WeightsRef(key=key, sha256=digest)
