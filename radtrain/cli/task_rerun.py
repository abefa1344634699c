"""``radtrain tasks rerun``: the ``POST /v1/tasks`` body that repeats a finished task.

Built from the task's ``spec.json`` (the resolved TrainingSpec): the same flow,
dataset, network (general), preset (specialized) or base task (retrain), and
every resolved hyperparameter as manual tuning, the general flow's windows and
slice context, and the evaluation settings, so the rerun trains and reports the
same recipe even if today's automatic choices differ. (A preset is named by id:
a rerun after the preset's version changed trains the new version; its spec
records ``preset_ref``.) Its name and description say
which task it reruns (the lineage a reader of the task list sees).
"""

from __future__ import annotations

from typing import Any

from schemas.spec import TrainingSpec
from schemas.tasks import ManualTuningParams, TaskRequest

NAME_MAX = 200
DESCRIPTION_MAX = 4000


def rerun_request(spec_doc: dict[str, Any], task_id: str, name: str | None = None
                  ) -> dict[str, Any]:
    """The request body; raises ``ValueError`` (pydantic's) if the spec cannot be read."""
    spec = TrainingSpec.model_validate(spec_doc)
    note = f"rerun of task {task_id}"
    body: dict[str, Any] = {
        "name": (name or f"{spec.name} ({note})")[:NAME_MAX],
        "description": (f"{note}. {spec.description}" if spec.description else note
                        )[:DESCRIPTION_MAX],
        "flow": spec.flow,
        "dataset_id": spec.dataset.dataset_id,
    }
    if spec.flow == "general":
        body["task_type"] = spec.task_type
        body["model"] = {"mode": "manual", "network": spec.model.entry_id,
                         "pretrained": spec.model.pretrained}
    elif spec.flow == "specialized":
        body["preset"] = spec.preset
    elif spec.lineage is not None:  # retrain: the same base task
        body["base_task_id"] = spec.lineage.base_task_id
    hyper = spec.hyperparameters.model_dump(mode="json")
    body["tuning"] = {"mode": "manual", "hyperparameters": {
        k: v for k, v in hyper.items() if k in ManualTuningParams.model_fields}}
    if spec.resources.gpus > 1:
        body["resources"] = {"gpus": spec.resources.gpus}
    evaluation = spec.evaluation.model_dump(mode="json", exclude_none=True)
    if evaluation:  # a requested operating point or resample count
        body["evaluation"] = evaluation
    if spec.flow == "general" and spec.preprocessing.windows:  # the windows it trained with
        body["preprocessing"] = {
            "windows": [{"name": w.name, "center": w.center, "width": w.width}
                        for w in spec.preprocessing.windows],
            "slices": spec.preprocessing.slices}
    TaskRequest.model_validate(body)  # the API's own check, before anything is sent
    return body
