"""Reading a registered dataset back: its manifest snapshot and cached case previews.

Shared by the gateway and the CLI so both render the same pixels. Previews
are cached in the store under ``datasets/<id>/previews/<case_id>/<digest>.png``,
the digest covering everything that changes the picture (the case's image and
mask keys, which are content-addressed, its boxes, the classes, the window,
the size and the renderer's version): a re-import that changes a case changes
its keys, hence its digest, and an old preview is never shown for new data.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from imaging.preview import render_files
from imaging.reader import MAX_IMAGE_BYTES, CaseReadError
from infra.store import InvalidKey, ObjectNotFound, ObjectStore
from schemas.dataset import Case, DatasetManifest, DatasetSummary, case_key

RENDER_VERSION = 1
"""Bump when the renderer's output changes: old cache entries are then ignored."""


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
                 max_bytes: int | None = None) -> tuple[bytes, bool]:
    """(PNG bytes, served from cache) for one case's middle image with its overlays.

    Synchronous (store and decoding both block): async callers use a thread.
    Raises ``CaseReadError`` for an image or mask that cannot be read.
    """
    key = preview_key(manifest.id, case, manifest.classes, window, size)
    if cache:
        try:
            return store.get_bytes(key), True
        except ObjectNotFound:
            pass
    image = case.images[len(case.images) // 2]
    label = f"{case.case_id} ({image})"
    with tempfile.TemporaryDirectory(prefix="radtrain-preview-") as tmp:
        local = _fetch(store, case_key(manifest.id, image), Path(tmp) / "image", label)
        mask = None
        if case.mask is not None:
            mask = _fetch(store, case_key(manifest.id, case.mask), Path(tmp) / "mask", label)
        png = render_files(local, window=window, size=size, mask_path=mask, boxes=case.boxes,
                           classes=manifest.classes, source=label,
                           max_bytes=max_bytes or MAX_IMAGE_BYTES)
    if cache:
        store.put_bytes(key, png, "image/png")
    return png, False


def _fetch(store: ObjectStore, key: str, path: Path, label: str) -> Path:
    try:
        return store.get_file(key, path)
    except ObjectNotFound as exc:
        raise CaseReadError(label, f"{key} is missing from the store") from exc
    except InvalidKey as exc:
        raise CaseReadError(label, f"invalid key in the manifest ({exc})") from exc
