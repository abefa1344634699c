"""One training job, synchronous and transport-free: spec in, stored artifacts out.

Runs in a worker thread; everything NATS-related stays in ``runner.worker``.
Errors that retrying cannot fix are ``infra.errors.PermanentError`` with a code
(``CaseReadError``, ``DatasetError``, ``WeightsError`` and the ones below).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import ValidationError

from infra.errors import PermanentError
from infra.settings import Settings
from infra.store import InvalidKey, ObjectNotFound, ObjectStore
from runner.artifacts import write_artifacts
from runner.checkpoint import Checkpointer, State
from runner.distributed import train_group, world_size
from runner.shards import prepare_within_budget
from runner.train import ProgressUpdate, TrainingStopped, TrainOptions, train
from schemas.dataset import DatasetManifest
from schemas.events import Artifact
from schemas.spec import TrainingSpec


@dataclass(frozen=True)
class JobResult:
    metrics: dict[str, float]
    artifacts: list[Artifact]
    duration_s: float


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("RADTRAIN_DEVICE=cuda but no CUDA device is visible")
    return setting


def load_manifest(store: ObjectStore, spec: TrainingSpec) -> DatasetManifest:
    """The task trains on the snapshot it was enriched with, or not at all."""
    snap = spec.dataset
    try:
        raw = store.get_bytes(snap.manifest_key)
    except (ObjectNotFound, InvalidKey) as exc:
        raise PermanentError("dataset_missing",
                                f"manifest {snap.manifest_key} not found: {exc}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != snap.sha256:
        raise PermanentError("dataset_changed", f"manifest {snap.manifest_key} has sha256 "
                                f"{digest[:12]}, the task pinned {snap.sha256[:12]}")
    try:
        return DatasetManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise PermanentError("dataset_invalid", f"manifest {snap.manifest_key}: {exc}") from exc


def run_job(spec: TrainingSpec, store: ObjectStore, settings: Settings, device: str,
            on_progress: Callable[[ProgressUpdate], None],
            should_stop: Callable[[], object], *,
            checkpointer: Checkpointer | None = None,
            resume: State | None = None, attempt: int = 1) -> JobResult:
    """Prepare (or hit the cache), train (or resume) in this thread or, for
    ``resources.gpus: N > 1``, over N processes it supervises, then write and upload the
    artifacts under the attempt's own prefix (``runs/<task_id>/attempts/<attempt>/``)."""
    started = time.monotonic()
    world = world_size(spec, device, settings.ddp_cpu_processes_max)
    manifest = load_manifest(store, spec)
    data = prepare_within_budget(spec, manifest, store, settings.cache_dir,
                                 settings.runner_cache_budget_bytes,
                                 workers=settings.runner_decode_workers)
    if world > 1 and data.shards is not None:  # issue 16: ranks have no store to stream from
        raise PermanentError("resources_unavailable", f"{world} processes cannot share a "
                             "dataset over runner_cache_budget_bytes yet: train it on one")
    reason = should_stop()
    if reason:  # cancelled or shut down while the data was decoded
        raise TrainingStopped(str(reason) if isinstance(reason, str) else "stopped",
                              None if resume is None else int(resume["epoch"]))
    options = TrainOptions(workers=settings.dataloader_workers, compile=settings.compile_model,
                           checkpointer=checkpointer, resume=resume)
    work = settings.work_dir / spec.task_id / f"attempt-{attempt}"
    if world > 1:  # N processes, this thread supervising (runner/distributed.py)
        result = train_group(spec, data, device, world, on_progress, should_stop, store=store,
                             options=options, work_dir=work, timeout_s=settings.ddp_timeout_s)
    else:
        result = train(spec, data, torch.device(device), on_progress, should_stop,
                       store=store, options=options)
    if should_stop() == "fenced":  # replaced while training its last epoch: upload nothing
        raise TrainingStopped("fenced", None)
    work.mkdir(parents=True, exist_ok=True)
    artifacts = write_artifacts(store, spec, result, work, attempt,
                                resamples=settings.eval_bootstrap_resamples)
    return JobResult(metrics=result.metrics, artifacts=artifacts,
                     duration_s=time.monotonic() - started)
