"""The enrich handler: ``TaskRequested -> TrainingSpec`` or every reason it cannot be.

- ``contracts``: its inputs beyond the request (weights index, base task) and ``Rejected``;
- ``checks``: the checks all flows share (the flows table, dataset fit, weights, snapshot);
- ``placement``: the runner pool a task runs on, from its ``resources``;
- ``resolver``: the one skeleton (collect every error, then build the spec);
- ``general``, ``specialized``, ``retrain``: one resolver per flow;
- ``handler``: the async glue (KV, store) around the pure :func:`enrich`.

The flows table itself is data in ``handlers/catalog/flows.py`` (the gateway serves it).
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.enrich.contracts import BaseTask, Rejected, WeightsIndex, WeightsRef
from handlers.enrich.general import GeneralResolver
from handlers.enrich.resolver import Resolver
from handlers.enrich.retrain import RetrainResolver
from handlers.enrich.specialized import SpecializedResolver
from schemas.dataset import DatasetSummary
from schemas.pools import DEFAULT_POOLS, RunnerPool
from schemas.spec import TrainingSpec
from schemas.tasks import TaskRequested

__all__ = ["RESOLVERS", "BaseTask", "Rejected", "WeightsIndex", "WeightsRef", "enrich"]

RESOLVERS: dict[str, type[Resolver]] = {
    r.flow: r for r in (GeneralResolver, SpecializedResolver, RetrainResolver)}


def enrich(cmd: TaskRequested, ds: DatasetSummary | None, weights: WeightsIndex,
           base: BaseTask | None = None,
           pools: Sequence[RunnerPool] = DEFAULT_POOLS) -> TrainingSpec:
    """Pure: ``base`` is the retrain flow's base task, loaded by the async glue;
    ``pools`` the runner pool catalog the task is placed on (``placement``)."""
    return RESOLVERS[cmd.flow](cmd, ds, weights, base, pools).resolve()
