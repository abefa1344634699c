"""Hyperparameter search (issue 18): ``tuning.mode == "search"``.

- ``plan``: the enrich handler's part (pure): the space (given or derived), its bounds per
  flow and network, the objective, the baseline trial;
- ``study``: Optuna, rebuilt from the KV record before each decision (TPE ask, pruning,
  importances);
- ``core``: the search as a pure state machine ``(record, event, now) -> Decision``;
- ``results``: the parent's metrics.json (trials table) and plots;
- ``handler``: the ``search`` consumer's glue (KV ``searches``, admission, store, publish).
"""
