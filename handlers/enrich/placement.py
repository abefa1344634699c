"""Placement: which runner pool runs a task, decided from its ``resources`` (pure).

The catalog is configuration (setting ``runner_pools``, schemas/pools.py). Rules:

- ``pool`` named: that pool only (``resources.pool`` / ``unknown_pool`` when the
  catalog has none of that name); it must still satisfy what follows.
- ``gpu_memory_gb``: a GPU pool whose GPUs have at least that much.
- ``gpus`` absent: any pool, one process (one GPU of a GPU pool, one CPU
  process); the first pool of the catalog that fits is taken, so the catalog's
  order is the operator's preference. This is what a request without
  ``resources`` gets, and on the embedded stack (one CPU pool) it runs as before.
- ``gpus: 0``: a CPU pool.
- ``gpus: N >= 1``: a GPU pool with at least N GPUs per runner, or a CPU pool that
  takes GPU requests as processes (``gpus_as_processes``, N <= ``cpu_processes``).
  GPU pools come first, then the smallest that fits (fewest GPUs, least memory),
  then catalog order, so small tasks leave the big pools free.

A request that no pool satisfies is rejected with one error on the field concerned
(``resources.gpus``, ``resources.gpu_memory_gb`` or ``resources.pool``) that names
the pools there are, instead of waiting for a runner that never comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from handlers.enrich.contracts import err
from schemas.common import ErrorDetail
from schemas.pools import RunnerPool
from schemas.spec import Placement
from schemas.tasks import Resources

NO_POOL = "no_pool"
UNKNOWN_POOL = "unknown_pool"


@dataclass(frozen=True)
class Placed:
    pool: RunnerPool
    resources: Placement


def fits_memory(pool: RunnerPool, res: Resources) -> bool:
    if res.gpu_memory_gb is None:
        return True
    return not pool.is_cpu and pool.gpu_memory_gb >= res.gpu_memory_gb


def fits_gpus(pool: RunnerPool, res: Resources) -> bool:
    if res.gpus is None:
        return True
    if res.gpus == 0:
        return pool.is_cpu
    if pool.is_cpu:
        return pool.gpus_as_processes and res.gpus <= pool.cpu_processes
    return pool.gpus >= res.gpus


def processes(pool: RunnerPool, res: Resources) -> int:
    """``Placement.gpus``: what the runner trains with (0 or 1: one process)."""
    if res.gpus is not None:
        return res.gpus
    return 1 if not pool.is_cpu or res.gpu_memory_gb is not None else 0


def _rank(pool: RunnerPool, order: int) -> tuple[int, int, float, int]:
    return (1 if pool.is_cpu else 0, pool.gpus, pool.gpu_memory_gb, order)


def place(res: Resources, pools: Sequence[RunnerPool]) -> Placed | ErrorDetail:
    """The pool and the resources it runs the task with, or the reason none can."""
    catalog = list(pools)
    if res.pool is not None:
        catalog = [p for p in pools if p.name == res.pool]
        if not catalog:
            return err("resources.pool", UNKNOWN_POOL,
                       f"no runner pool named {res.pool!r}; pools: {_names(pools)}")
    fitting = [(i, p) for i, p in enumerate(catalog) if fits_gpus(p, res) and fits_memory(p, res)]
    if not fitting:
        return _why_not(res, catalog, pools)
    if res.gpus is None:
        pool = fitting[0][1]
    else:
        pool = min(fitting, key=lambda ip: _rank(ip[1], ip[0]))[1]
    return Placed(pool, Placement(gpus=processes(pool, res), gpu_memory_gb=res.gpu_memory_gb))


def _names(pools: Sequence[RunnerPool]) -> str:
    return "; ".join(p.describe() for p in pools) or "none configured (setting runner_pools)"


def _asked(res: Resources) -> str:
    parts = [f"gpus: {res.gpus}"] if res.gpus is not None else []
    if res.gpu_memory_gb is not None:
        parts.append(f"gpu_memory_gb: {res.gpu_memory_gb:g}")
    if res.pool is not None:
        parts.append(f"pool: {res.pool}")
    return ", ".join(parts) or "any pool"


def _why_not(res: Resources, catalog: Sequence[RunnerPool],
             pools: Sequence[RunnerPool]) -> ErrorDetail:
    """One error on the field that rules every candidate out."""
    by_gpus = [p for p in catalog if fits_gpus(p, res)]
    field = "resources.gpu_memory_gb" if by_gpus else "resources.gpus"
    where = f"pool {res.pool!r}" if res.pool is not None else "no runner pool"
    can = "cannot" if res.pool is not None else "can"
    return err(field, NO_POOL, f"{where} {can} run this task ({_asked(res)}); pools: "
                               f"{_names(pools)}")
