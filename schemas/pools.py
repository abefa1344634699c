"""Runner pools: what a pool of runners offers (configuration) and what a live runner
says about itself (its heartbeat in KV ``runners``).

A pool is a class of interchangeable runners (``cpu``, ``gpu``, ``gpu-80g``): the
enrich handler places each task on one pool from its ``resources``
(handlers/enrich/placement.py), the dispatcher routes it to
``dispatch.<pool>.<task_id>``, and every runner of the pool pulls from the one
durable consumer ``runner-<pool>`` (KEDA scales runners on that consumer's lag).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import Identifier, Strict


class RunnerPool(Strict):
    """One entry of the pool catalog (setting ``runner_pools``)."""

    name: Identifier
    """Subject token and consumer suffix: ``dispatch.<name>.*``, ``runner-<name>``."""
    gpus: int = Field(0, ge=0, le=64)
    """GPUs of each runner of the pool; 0: a CPU pool."""
    gpu_memory_gb: float = Field(0.0, ge=0)
    """Memory of each of those GPUs."""
    cpu_processes: int = Field(1, ge=1, le=256)
    """A CPU pool: how many training processes (DDP over gloo) one task may use."""
    gpus_as_processes: bool = False
    """A CPU pool that takes ``resources.gpus: N`` (N <= ``cpu_processes``) as N gloo
    processes, so that requests written for a GPU run on a CPU-only stack (the
    embedded default). A pool catalog with real GPU pools leaves it off on its CPU
    pools, so that a GPU request never lands on CPUs silently."""
    memory_gb: float | None = Field(None, ge=0)
    """Host memory of each runner (information for people; placement ignores it)."""
    description: str = ""

    @property
    def is_cpu(self) -> bool:
        return self.gpus == 0

    def describe(self) -> str:
        """One line for rejection messages: ``gpu (2 GPUs of 80 GB)``."""
        if self.is_cpu:
            extra = f", takes gpus as up to {self.cpu_processes} CPU processes" \
                if self.gpus_as_processes else ""
            return f"{self.name} (CPU, {self.cpu_processes} process(es){extra})"
        return f"{self.name} ({self.gpus} GPU(s) of {self.gpu_memory_gb:g} GB)"


DEFAULT_POOLS: tuple[RunnerPool, ...] = (
    RunnerPool(name="cpu", cpu_processes=2, gpus_as_processes=True,
               description="the embedded stack's runners: CPU, gloo DDP up to 2 processes"),)
"""The catalog when none is configured: one CPU pool that takes every request the
embedded stack took before pools existed (``gpus`` absent, 0, 1 or 2)."""


class RunnerDevice(Strict):
    kind: str
    """``cpu`` or ``cuda``."""
    name: str
    memory_gb: float | None = None


class RunnerHeartbeat(Strict):
    """KV ``runners``: runner id -> this, rewritten every few seconds (the bucket's TTL
    drops a runner that stopped writing)."""

    runner_id: str
    pool: Identifier
    devices: list[RunnerDevice] = Field(default_factory=list)
    memory_gb: float | None = None
    """Host memory."""
    current_task: str | None = None
    current_tenant: str | None = None
    """The tenant of ``current_task``: ``GET /v1/runners`` names the task to it alone."""
    started_at: datetime
    last_seen: datetime
    mode: str = "serve"
    """``serve``, ``once`` (one task, then exit) or ``idle-exit`` (exit when idle)."""


class RunnerView(Strict):
    """``GET /v1/runners``: one live runner as any tenant may see it."""

    runner_id: str
    pool: str
    devices: list[RunnerDevice]
    memory_gb: float | None = None
    busy: bool
    current_task: str | None = None
    """Only when the task is the caller's own."""
    started_at: datetime
    last_seen: datetime
    mode: str = "serve"


class RunnerPage(Strict):
    items: list[RunnerView]
    total: int
    pools: list[RunnerPool] = Field(default_factory=list)
    """The catalog the gateway knows (its own ``runner_pools`` setting)."""
