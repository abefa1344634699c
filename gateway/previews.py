"""Reading a registered dataset back: its manifest snapshot and cached case previews.

Shared by the gateway and the CLI so both render the same pixels. Previews
are cached in the store under ``datasets/<id>/previews/<case_id>/<digest>.png``,
the digest covering everything that changes the picture (the case's image and
mask keys, which are content-addressed, its boxes, the classes, the window,
the size and the renderer's version): a re-import that changes a case changes
its keys, hence its digest, and an old preview is never shown for new data.

Bounded (issue 17): sizes come from :data:`PREVIEW_SIZES` (a requested size is
snapped up to the next one), the cache keeps at most ``preview_cache_entries``
previews and ``preview_cache_bytes`` per gateway, evicting the least recently
used from the store, and decoding runs in the gateway's own small thread pool
(``decode_workers``) under its decoding budget (imaging/budget.py), never on
the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from aiohttp import web

from imaging.budget import DecodeBudget
from imaging.preview import MAX_SIZE, MIN_SIZE, render_files
from imaging.reader import MAX_IMAGE_BYTES, CaseReadError
from infra.settings import Settings
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreError
from schemas.dataset import Case, DatasetManifest, DatasetSummary, case_key

log = logging.getLogger("radtrain.gateway")

RENDER_VERSION = 1
"""Bump when the renderer's output changes: old cache entries are then ignored."""
PREVIEW_SIZES = (32, 64, 128, 256, 512, 1024)
"""The only sizes rendered and cached: a request for another is snapped up to the next."""


def snap_size(size: int) -> int:
    """The smallest listed size at least ``size`` (``size`` within MIN_SIZE..MAX_SIZE)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE}")
    return next(s for s in PREVIEW_SIZES if s >= size)


class PreviewIndex:
    """LRU of the previews this gateway cached in the store, by count and by bytes.

    Thread-safe (previews render in worker threads). ``add`` returns the keys to
    evict; a key found in the store by another gateway joins on its first hit.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, key: str, size: int) -> list[str]:
        """Record ``key`` as just used; the least recently used keys over the caps."""
        with self._lock:
            self._bytes -= self._sizes.pop(key, 0)
            self._sizes[key] = size
            self._bytes += size
            evicted = []
            while len(self._sizes) > 1 and (len(self._sizes) > self.max_entries
                                            or self._bytes > self.max_bytes):
                old, old_size = self._sizes.popitem(last=False)
                self._bytes -= old_size
                evicted.append(old)
            return evicted


class ManifestMismatch(Exception):
    """The snapshot's bytes do not hash to the sha256 the summary pins."""


def load_manifest(store: ObjectStore, summary: DatasetSummary) -> DatasetManifest:
    """The snapshot the summary points at, checked against its sha256."""
    data = store.get_bytes(summary.manifest_key)
    digest = hashlib.sha256(data).hexdigest()
    if digest != summary.manifest_sha256:
        raise ManifestMismatch(f"manifest {summary.manifest_key} hashes to {digest[:12]}, "
                               f"expected {summary.manifest_sha256[:12]}")
    return DatasetManifest.model_validate_json(data)


def preview_key(dataset_id: str, case: Case, classes: list[str], window: str,
                size: int) -> str:
    material = json.dumps({
        "v": RENDER_VERSION, "images": case.images, "mask": case.mask,
        "boxes": [b.model_dump() for b in case.boxes], "classes": classes,
        "window": window, "size": size,
    }, sort_keys=True).encode()
    digest = hashlib.sha256(material).hexdigest()[:32]
    return f"datasets/{dataset_id}/previews/{case.case_id}/{digest}.png"


def case_preview(store: ObjectStore, manifest: DatasetManifest, case: Case, *,
                 window: str = "auto", size: int = 512, cache: bool = True,
                 max_bytes: int | None = None, budget: DecodeBudget | None = None,
                 index: PreviewIndex | None = None) -> tuple[bytes, bool]:
    """(PNG bytes, served from cache) for one case's middle image with its overlays.

    Synchronous (store and decoding both block): async callers use a thread.
    Raises ``CaseReadError`` for an image or mask that cannot be read, and
    ``DecodeBusy`` when the decoding budget stays full. With ``index``, the
    previews it evicts are deleted from the store.
    """
    key = preview_key(manifest.id, case, manifest.classes, window, size)
    if cache:
        try:
            png = store.get_bytes(key)
        except ObjectNotFound:
            pass
        else:
            _evict(store, index.add(key, len(png)) if index is not None else [])
            return png, True
    image = case.images[len(case.images) // 2]
    label = f"{case.case_id} ({image})"
    with tempfile.TemporaryDirectory(prefix="radtrain-preview-") as tmp:
        local = _fetch(store, case_key(manifest.id, image), Path(tmp) / "image", label)
        mask = None
        if case.mask is not None:
            mask = _fetch(store, case_key(manifest.id, case.mask), Path(tmp) / "mask", label)
        png = render_files(local, window=window, size=size, mask_path=mask, boxes=case.boxes,
                           classes=manifest.classes, source=label,
                           max_bytes=max_bytes or MAX_IMAGE_BYTES, budget=budget)
    if cache:
        store.put_bytes(key, png, "image/png")
        _evict(store, index.add(key, len(png)) if index is not None else [])
    return png, False


def _evict(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except ObjectNotFound:
            pass
        except StoreError as exc:  # a leftover preview is only clutter: the next add retries
            log.warning("could not evict a cached preview: %s", type(exc).__name__)


class Previewer:
    """The gateway's preview machinery: its decoding pool, budget and cache index."""

    def __init__(self, settings: Settings) -> None:
        self.pool = ThreadPoolExecutor(settings.decode_workers,
                                       thread_name_prefix="radtrain-decode")
        self.budget = DecodeBudget(settings.decode_budget_request_bytes,
                                   settings.decode_budget_process_bytes,
                                   settings.decode_budget_wait_s)
        self.index = PreviewIndex(settings.preview_cache_entries, settings.preview_cache_bytes)

    async def render(self, store: ObjectStore, manifest: DatasetManifest, case: Case, *,
                     window: str, size: int) -> tuple[bytes, bool]:
        """:func:`case_preview` in the decoding pool: the event loop never decodes."""
        call = partial(case_preview, store, manifest, case, window=window, size=size,
                       budget=self.budget, index=self.index)
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


PREVIEWER = web.AppKey("previewer", Previewer)


def install(app: web.Application, settings: Settings) -> None:
    """Give ``app`` its Previewer, shut down with the app."""
    app[PREVIEWER] = Previewer(settings)

    async def close(app: web.Application) -> None:
        app[PREVIEWER].close()

    app.on_cleanup.append(close)


def _fetch(store: ObjectStore, key: str, path: Path, label: str) -> Path:
    try:
        return store.get_file(key, path)
    except ObjectNotFound as exc:
        raise CaseReadError(label, f"{key} is missing from the store") from exc
    except InvalidKey as exc:
        raise CaseReadError(label, f"invalid key in the manifest ({exc})") from exc
