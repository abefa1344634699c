"""``POST /v1/tasks/validate``: a synchronous dry run of enrichment, publishing nothing.

The body is a ``POST /v1/tasks`` body. It goes through the same pure
:func:`handlers.enrich.enrich` the enrich handler runs (same flows table, same
dataset checks, same weights index, same runner pools, a retrain's base task
loaded by the same :func:`load_base_task`), so the answer is what the task
would become: the resolved TrainingSpec, or every reason it would be rejected.
A malformed body is a 422 naming each field (like ``POST /v1/tasks``); a
well-formed body answers 200 with ``valid`` and either ``spec`` and
``estimate`` or ``errors`` (``field``, ``code``, ``message``).

The estimate is rough on purpose and says how it was made: images processed =
training images × epochs (the validation images once per epoch besides), and
time = 3 × the network's GMACs at the training size × images, over a nominal
throughput of the pool the task was placed on.

``GET /v1/hyperparameters`` serves the JSON Schema of the full hyperparameter
set (bounds and defaults), from which a client builds its manual tuning form.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from typing import Any

import nats.errors
from aiohttp import web
from pydantic import BaseModel, Field

from gateway.app_keys import JS, SETTINGS, STORE, TASKS
from gateway.auth import tenant_of
from gateway.body import read_model
from gateway.errors import ApiError
from gateway.openapi import AUTHED, OPERATIONS, Op
from handlers.catalog.zoo import UnknownZooEntry, get_entry, list_entries
from handlers.enrich import Rejected, enrich
from handlers.enrich.handler import load_base_task
from handlers.weights_index import StoreWeightsIndex
from infra.errors import TransientError
from infra.kv import DatasetRepo
from infra.store import StoreError
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.pools import RunnerPool
from schemas.spec import TrainingSpec
from schemas.tasks import Hyperparameters, TaskRequest, TaskRequested

routes = web.RouteTableDef()

VAL_FRACTION = 0.2
"""The runner holds out about this share of the non-test cases for validation."""
CPU_GMACS_PER_S = 150.0
"""Nominal multiply-accumulates per second of one CPU training process (10^9)."""
GPU_GMACS_PER_S = 15_000.0
"""Nominal multiply-accumulates per second of one GPU (10^9), a mid-range card in bf16."""


class Estimate(BaseModel):
    pool: str
    train_images: int
    val_images: int
    epochs: int
    images_processed: int
    """Forward and backward passes over training images plus validation forwards."""
    gmacs_per_image: float
    seconds: float
    basis: str


class ValidateResponse(BaseModel):
    valid: bool
    spec: TrainingSpec | None = None
    errors: list[ErrorDetail] = Field(default_factory=list)
    estimate: Estimate | None = None


_REPOS: weakref.WeakKeyDictionary[web.Application, DatasetRepo] = weakref.WeakKeyDictionary()


async def _datasets(request: web.Request) -> DatasetRepo:
    app = request.app
    if app not in _REPOS:
        try:
            _REPOS[app] = await DatasetRepo.open(app[JS])
        except Exception as exc:
            raise ApiError(503, "unavailable", f"KV 'datasets' unavailable: {exc!r}") from exc
    return _REPOS[app]


@routes.post("/v1/tasks/validate")
async def validate_task(request: web.Request) -> web.Response:
    req = await read_model(request, TaskRequest)
    cmd = TaskRequested(**req.model_dump(), task_id=f"dryrun{uuid.uuid4().hex}",
                        tenant=tenant_of(request))
    store, settings = request.app[STORE], request.app[SETTINGS]
    try:
        dataset = await (await _datasets(request)).get(cmd.dataset_id)
        base = await load_base_task(request.app[TASKS], store, cmd.base_task_id) \
            if cmd.flow == "retrain" and cmd.base_task_id else None
        spec = await asyncio.to_thread(enrich, cmd, dataset, StoreWeightsIndex(store), base,
                                       settings.runner_pools)
    except Rejected as rej:
        body = ValidateResponse(valid=False, errors=rej.errors)
        return web.json_response(text=body.model_dump_json())
    except (nats.errors.Error, TimeoutError, TransientError) as exc:
        raise ApiError(503, "unavailable", f"cannot validate now, retry later: {exc}",
                       headers={"Retry-After": "1"}) from exc
    assert dataset is not None  # enrich rejects a missing dataset
    body = ValidateResponse(valid=True, spec=spec,
                            estimate=estimate(spec, dataset, settings.runner_pools))
    return web.json_response(text=body.model_dump_json())


def estimate(spec: TrainingSpec, dataset: DatasetSummary,
             pools: list[RunnerPool]) -> Estimate:
    """Images processed and a nominal duration on the pool enrich placed the task on."""
    stats = dataset.stats
    test = stats.splits.get("test", 0) if stats else 0
    pool_cases = max(1, dataset.num_cases - test)
    val = max(1, round(VAL_FRACTION * pool_cases)) if pool_cases > 1 else 0
    train = max(1, pool_cases - val)
    hp = spec.hyperparameters
    try:
        entry = get_entry(spec.model.entry_id)
        gmacs = entry.gmacs * (hp.image_size / max(1, entry.input_size)) ** 2
    except UnknownZooEntry:
        gmacs = 1.0
    pool = next((p for p in pools if p.name == spec.pool), None)
    if pool is None or pool.is_cpu:
        rate = CPU_GMACS_PER_S * max(1, spec.resources.gpus or 1)
        what = f"{CPU_GMACS_PER_S:g} GMAC/s per CPU process"
    else:
        rate = GPU_GMACS_PER_S * max(1, spec.resources.gpus)
        what = f"{GPU_GMACS_PER_S:g} GMAC/s per GPU"
    work = hp.epochs * (3 * train + val) * gmacs  # backward ≈ 2 × forward
    return Estimate(
        pool=spec.pool, train_images=train, val_images=val, epochs=hp.epochs,
        images_processed=hp.epochs * (train + val), gmacs_per_image=round(gmacs, 3),
        seconds=round(work / rate + 5.0, 1),
        basis=f"{hp.epochs} epochs × ({train} training + {val} validation images) at "
              f"{hp.image_size}px, {gmacs:.2f} GMACs per image, {what}, plus start-up; "
              "an order of magnitude, not a promise")


@routes.get("/v1/hyperparameters")
async def hyperparameters_schema(request: web.Request) -> web.Response:
    return web.json_response(hyperparameter_schema())


def hyperparameter_schema() -> dict[str, Any]:
    return Hyperparameters.model_json_schema()


@routes.get("/v1/weights/offline")
async def offline_weights(request: web.Request) -> web.Response:
    """The zoo entries whose pretrained weights are in the store's mirror (``zoo/weights/``):
    what a ``pretrained: true`` task can use without any network."""
    try:
        keys = await asyncio.to_thread(request.app[STORE].list, "zoo/weights/")
    except StoreError as exc:
        raise ApiError(503, "unavailable", f"object store unavailable: {exc}") from exc
    mirrored = {k.rsplit("/", 1)[-1].removesuffix(".safetensors") for k in keys
                if k.endswith(".safetensors")}
    items = [e.id for e in list_entries() if e.weights_id in mirrored]
    return web.json_response({"items": items, "total": len(items)})


VALIDATE_OPERATIONS = [
    Op("post", "/v1/tasks/validate", "validateTask",
       "Dry run of enrichment (publishes nothing): the resolved TrainingSpec with an "
       "estimate of images processed and training time, or every rejection reason",
       "tasks", {200: ValidateResponse}, (400, *AUTHED, 413, 415, 422, 503), body=TaskRequest),
    Op("get", "/v1/hyperparameters", "hyperparameterSchema",
       "JSON Schema of the hyperparameters (bounds and defaults) for manual tuning", "tasks",
       {200: {"type": "object"}}, AUTHED),
    Op("get", "/v1/weights/offline", "offlineWeights",
       "Zoo entries whose pretrained weights are in the store's offline mirror", "zoo",
       {200: {"type": "object", "properties": {
           "items": {"type": "array", "items": {"type": "string"}},
           "total": {"type": "integer"}}}}, (*AUTHED, 503)),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in VALIDATE_OPERATIONS if (op.method, op.path) not in known)


register_operations()
