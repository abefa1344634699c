"""JSON Schemas of the contracts, for clients written in other languages."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.api import ErrorBody, TaskAccepted
from schemas.dataset import DatasetManifest, DatasetSummary
from schemas.dataset_import import ImportReport, ImportRequest
from schemas.events import EVENT_ADAPTER, EVENT_TYPES
from schemas.record import TaskRecord
from schemas.spec import TrainingSpec
from schemas.tasks import TaskRequest


def export_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    models: list[type[BaseModel]] = [TaskRequest, TaskAccepted, ErrorBody, TaskRecord,
                                     TrainingSpec, DatasetManifest, DatasetSummary,
                                     ImportRequest, ImportReport]
    docs: dict[str, dict] = {m.__name__: m.model_json_schema() for m in models}  # type: ignore[type-arg]
    for event_type in EVENT_TYPES:
        docs[event_type.__name__] = event_type.model_json_schema()
    docs["Event"] = EVENT_ADAPTER.json_schema()
    written = []
    for name, schema in sorted(docs.items()):
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


__all__ = ["export_all"]
