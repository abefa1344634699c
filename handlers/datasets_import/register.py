"""Registering a dataset: manifest snapshot in the store, summary in KV ``datasets``.

The manifest's sha256 is what a task pins: a later re-registration writes a
new snapshot, and the runner refuses a manifest whose hash moved.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from handlers.datasets_import.stats import dataset_stats
from infra.kv import DatasetRepo
from infra.store import ObjectStore
from schemas.dataset import DatasetManifest, DatasetStats, DatasetSummary, manifest_key

__all__ = ["register_dataset"]


async def register_dataset(
    store: ObjectStore, repo: DatasetRepo, manifest: DatasetManifest,
    *, stats: DatasetStats | None = None,
) -> DatasetSummary:
    """Write the manifest (latest + content-addressed snapshot) and the KV summary.

    ``stats`` come from the importer, which knows the image sizes; without
    them the statistics that the manifest alone gives are computed here.
    """
    if stats is None:
        stats = dataset_stats(manifest.cases, manifest.classes)
    data = manifest.model_dump_json(indent=2).encode()
    info = await asyncio.to_thread(store.put_bytes, manifest_key(manifest.id), data,
                                   "application/json")
    snapshot = manifest_key(manifest.id, info.sha256)
    await asyncio.to_thread(store.put_bytes, snapshot, data, "application/json")
    summary = DatasetSummary(
        id=manifest.id, tenant=manifest.tenant, name=manifest.name,
        annotation_type=manifest.annotation_type, modality=manifest.modality,
        classes=list(manifest.classes), num_cases=len(manifest.cases),
        manifest_key=snapshot, manifest_sha256=info.sha256, stats=stats,
        created_at=datetime.now(UTC),
    )
    await repo.put(summary)
    return summary
