"""The weights index the enrich handler needs: offline-first lookup over the store mirror."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from handlers.catalog.zoo import (
    UnknownZooEntry,
    ZooEntry,
    catalog,
    get_entry,
    mirror_key,
    weights_key,
    weights_sha256_key,
)
from handlers.enrich.contracts import WeightsRef
from infra.store import ObjectNotFound, ObjectStore

log = logging.getLogger("radtrain.handlers")


def sha256_key(entry_id: str) -> str:
    return weights_sha256_key(entry_id)


def hf_hub_cache() -> Path:
    """huggingface_hub's cache directory, resolved from the same variables it reads.

    ``HF_HUB_CACHE``, then the legacy ``HUGGINGFACE_HUB_CACHE``, then
    ``$HF_HOME/hub`` with ``HF_HOME`` defaulting to ``$XDG_CACHE_HOME/huggingface``
    (``~/.cache/huggingface``). Read here rather than imported: the handlers'
    install has no huggingface_hub.
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_cached_file(repo_id: str, filename: str = "model.safetensors",
                   cache: Path | None = None) -> Path | None:
    """A file of a model repo in the local hub cache: the ``main`` snapshot, else the newest.

    Layout: ``models--<org>--<name>/refs/main`` holds the commit whose
    ``snapshots/<commit>/<filename>`` is the file (a symlink into ``blobs/``).
    """
    repo = (cache or hf_hub_cache()) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = snapshots / ref.read_text().strip() / filename
        if pinned.is_file():
            return pinned
    found = [p / filename for p in snapshots.iterdir() if (p / filename).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class StoreWeightsIndex:
    """Offline first (DESIGN.md §7): the store mirror, then the local Hugging Face cache.

    The mirror is ``zoo/weights/<weights id>.safetensors`` with a ``.sha256``
    sidecar, which avoids hashing hundreds of MB on every enrichment (without
    it the hash is computed once and written back). Weights found only in the
    local hub cache (timm's own format, as timm saved them there) are copied
    into the mirror first, so the runner, possibly on another machine, reads
    them from the store and verifies the same sha256 as every other file.
    """

    def __init__(self, store: ObjectStore, hf_cache: Path | None = None) -> None:
        self._store = store
        self._hf_cache = hf_cache

    def find(self, entry_id: str) -> WeightsRef | None:
        try:
            entry = get_entry(entry_id)
        except UnknownZooEntry:
            return None
        key = mirror_key(entry)
        if self._store.exists(key):
            return WeightsRef(key=key, sha256=self._digest(entry.weights_id, key))
        return self._from_hf_cache(entry)

    def available(self) -> set[str]:
        """Weights ids :meth:`find` resolves offline: the mirror's files (one listing, not
        one lookup per entry) and the timm repos in the local hub cache. Auto-select ranks
        every entry and takes the best of these (handlers/enrich/general.py)."""
        prefix = "zoo/weights/"
        ids = {k.removeprefix(prefix).removesuffix(".safetensors")
               for k in self._store.list(prefix) if k.endswith(".safetensors")}
        cache = self._hf_cache or hf_hub_cache()
        if cache.is_dir():
            repos = {p.name.removeprefix("models--").replace("--", "/")
                     for p in cache.glob("models--timm--*")}
            ids |= {e.weights_id for e in catalog().entries if e.hf_hub_id in repos}
        return ids

    def _digest(self, weights_id: str, key: str) -> str:
        try:
            return self._store.get_bytes(weights_sha256_key(weights_id)).decode().strip()
        except ObjectNotFound:
            digest = hashlib.sha256(self._store.get_bytes(key)).hexdigest()
            self._store.put_bytes(weights_sha256_key(weights_id), digest.encode(), "text/plain")
            return digest

    def _from_hf_cache(self, entry: ZooEntry) -> WeightsRef | None:
        source = get_entry(entry.weights_id)
        if not (source.hf_hub_id or "").startswith("timm/"):
            return None  # only timm's own hub repos hold timm-format state dicts
        path = hf_cached_file(source.hf_hub_id or "", cache=self._hf_cache)
        if path is None:
            return None
        info = self._store.put_file(weights_key(source.id), path, "application/octet-stream")
        self._store.put_bytes(weights_sha256_key(source.id), info.sha256.encode(), "text/plain")
        log.info("staged %s from the local Hugging Face cache (%s)", info.key, path)
        return WeightsRef(key=info.key, sha256=info.sha256)
