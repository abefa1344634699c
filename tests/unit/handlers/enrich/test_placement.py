"""Placement (handlers/enrich/placement.py): every pool/resources combination, pure."""

from __future__ import annotations

import pytest

from handlers.dispatch import dispatch_msg_id, pool_of
from handlers.enrich import Rejected, enrich
from handlers.enrich.placement import NO_POOL, UNKNOWN_POOL, Placed, place
from schemas.common import ErrorDetail
from schemas.events import TaskReadyEvent
from schemas.pools import DEFAULT_POOLS, RunnerPool
from schemas.tasks import Resources
from tests.support.factories import dataset, request
from tests.unit.handlers.enrich.test_general import FakeWeights

CPU = RunnerPool(name="cpu")
CPU_DDP = RunnerPool(name="cpu-ddp", cpu_processes=4, gpus_as_processes=True)
GPU = RunnerPool(name="gpu", gpus=1, gpu_memory_gb=24)
GPU2 = RunnerPool(name="gpu2", gpus=2, gpu_memory_gb=24)
GPU80 = RunnerPool(name="gpu-80g", gpus=8, gpu_memory_gb=80)
CLUSTER = (CPU, GPU80, GPU2, GPU)
"""Catalog order on purpose: the big pool before the small ones."""


def placed(res: Resources, pools: tuple[RunnerPool, ...]) -> tuple[str, int]:
    got = place(res, pools)
    assert isinstance(got, Placed), got
    return got.pool.name, got.resources.gpus


def refused(res: Resources, pools: tuple[RunnerPool, ...]) -> ErrorDetail:
    got = place(res, pools)
    assert isinstance(got, ErrorDetail), got
    return got


@pytest.mark.parametrize(("res", "want"), [
    (Resources(), ("cpu", 0)),  # no resources: the first pool, one process
    (Resources(gpus=0), ("cpu", 0)),
    (Resources(gpus=1), ("gpu", 1)),  # the smallest GPU pool that fits, not gpu-80g
    (Resources(gpus=2), ("gpu2", 2)),
    (Resources(gpus=3), ("gpu-80g", 3)),
    (Resources(gpus=8), ("gpu-80g", 8)),
    (Resources(gpu_memory_gb=40), ("gpu-80g", 1)),
    (Resources(gpus=2, gpu_memory_gb=24), ("gpu2", 2)),
    (Resources(pool="gpu-80g"), ("gpu-80g", 1)),  # a named pool, one GPU of it
    (Resources(pool="gpu2", gpus=1), ("gpu2", 1)),
])
def test_a_cluster_places_each_request_on_the_smallest_pool_that_fits(
        res: Resources, want: tuple[str, int]) -> None:
    assert placed(res, CLUSTER) == want


@pytest.mark.parametrize(("res", "field"), [
    (Resources(gpus=4), "resources.gpus"),  # 2 GPUs at most, no CPU pool takes gpus
    (Resources(gpu_memory_gb=80), "resources.gpu_memory_gb"),
    (Resources(gpus=2, gpu_memory_gb=40), "resources.gpu_memory_gb"),
    (Resources(pool="cpu", gpus=1), "resources.gpus"),
    (Resources(pool="gpu", gpus=0), "resources.gpus"),
])
def test_what_no_pool_satisfies_is_refused_on_the_field_concerned(
        res: Resources, field: str) -> None:
    small = (CPU, GPU, GPU2)
    error = refused(res, small)
    assert (error.field, error.code) == (field, NO_POOL)
    assert "cpu (CPU, 1 process(es))" in error.message and "gpu2 (2 GPU(s) of 24 GB)" \
        in error.message


def test_an_unknown_pool_is_named() -> None:
    error = refused(Resources(pool="tpu"), CLUSTER)
    assert (error.field, error.code) == ("resources.pool", UNKNOWN_POOL)
    assert "'tpu'" in error.message and "gpu-80g" in error.message


def test_the_default_catalog_takes_what_the_embedded_stack_always_took() -> None:
    """One CPU pool: no resources, gpus 0 and today's explicit gpus 1 all run there; gpus 2
    is two gloo processes (DDP on CPU); 3 is more than the pool allows."""
    assert [placed(r, DEFAULT_POOLS) for r in (Resources(), Resources(gpus=0),
                                                Resources(gpus=1), Resources(gpus=2))] == [
        ("cpu", 0), ("cpu", 0), ("cpu", 1), ("cpu", 2)]
    assert refused(Resources(gpus=3), DEFAULT_POOLS).field == "resources.gpus"
    assert refused(Resources(gpu_memory_gb=16), DEFAULT_POOLS).field == \
        "resources.gpu_memory_gb"


def test_gpu_requests_prefer_gpu_pools_over_cpu_pools_that_take_them() -> None:
    assert placed(Resources(gpus=2), (CPU_DDP, GPU2)) == ("gpu2", 2)
    assert placed(Resources(gpus=4), (CPU_DDP, GPU2)) == ("cpu-ddp", 4)
    assert placed(Resources(), (GPU, CPU_DDP)) == ("gpu", 1)  # catalog order
    assert refused(Resources(gpus=5), (CPU_DDP,)).code == NO_POOL


def test_an_empty_catalog_refuses_everything_saying_so() -> None:
    assert "none configured" in refused(Resources(), ()).message


def test_enrich_writes_the_pool_and_rejects_with_every_other_reason() -> None:
    pools = (CPU, GPU)
    spec = enrich(request(resources={"gpus": 1}), dataset(), FakeWeights(), pools=pools)
    assert spec.pool == "gpu" and spec.resources.gpus == 1
    assert enrich(request(), dataset(), FakeWeights(), pools=pools).pool == "cpu"
    with pytest.raises(Rejected) as exc:
        enrich(request(resources={"gpus": 4}), dataset(tenant="other"), FakeWeights(),
               pools=pools)
    assert {(e.field, e.code) for e in exc.value.errors} == {
        ("resources.gpus", NO_POOL), ("dataset_id", "dataset_not_found")}


def test_the_dispatcher_routes_by_the_spec_and_names_each_generation() -> None:
    spec = enrich(request(resources={"gpus": 1}), dataset(), FakeWeights(), pools=(CPU, GPU))
    ready = TaskReadyEvent(source="t", subject="t1", data=spec)
    assert pool_of(ready, (CPU, GPU)) == "gpu" and pool_of(ready, (CPU,)) is None
    legacy = ready.model_copy(update={"data": spec.model_copy(update={"pool": None})})
    assert pool_of(legacy, (GPU, CPU)) == "gpu"  # before pools: the first of the catalog
    assert dispatch_msg_id(ready) == "t1:dispatch"
    assert dispatch_msg_id(ready.model_copy(update={"taskgeneration": 3})) == "t1:dispatch:g3"
