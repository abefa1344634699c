"""The fields KEDA documents for a ScaledJob and for the ``nats-jetstream`` scaler:
kubernetes-validate ships no KEDA schemas, so the kit's ScaledJobs are checked here.

Sources:
- ScaledJob: https://keda.sh/docs/2.16/reference/scaledjob-spec/ and its Go type
  (kedacore/keda apis/keda/v1alpha1/scaledjob_types.go: ScaledJobSpec,
  ScalingStrategy, Rollout; a trigger is a ScaleTriggers).
- nats-jetstream: https://keda.sh/docs/2.16/scalers/nats-jetstream/ (parameter
  list: natsServerMonitoringEndpoint, account, stream, consumer, lagThreshold,
  activationLagThreshold, useHttps; metadata values are strings).

``jobTargetRef`` is a batch/v1 JobSpec: the tests validate it with
kubernetes-validate as the spec of a Job.
"""

from __future__ import annotations

from typing import Any

SCALEDJOB_API = "keda.sh/v1alpha1"
SPEC_FIELDS: dict[str, type | tuple[type, ...]] = {
    "jobTargetRef": dict, "pollingInterval": int, "successfulJobsHistoryLimit": int,
    "failedJobsHistoryLimit": int, "rolloutStrategy": str, "rollout": dict,
    "envSourceContainerName": str, "minReplicaCount": int, "maxReplicaCount": int,
    "scalingStrategy": dict, "triggers": list,
}
SPEC_REQUIRED = ("jobTargetRef", "triggers")
SCALING_STRATEGY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "strategy": str, "customScalingQueueLengthDeduction": int,
    "customScalingRunningJobPercentage": str, "pendingPodConditions": list,
    "multipleScalersCalculation": str,
}
SCALING_STRATEGIES = ("default", "custom", "accurate", "eager")
MULTIPLE_SCALERS = ("max", "min", "avg", "sum")
ROLLOUT_FIELDS = {"strategy": ("default", "gradual"),
                  "propagationPolicy": ("foreground", "background")}
TRIGGER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "type": str, "name": str, "metadata": dict, "authenticationRef": dict,
    "metricType": str, "useCachedMetrics": bool,
}
NATS_JETSTREAM_METADATA = ("natsServerMonitoringEndpoint", "account", "stream", "consumer",
                           "lagThreshold", "activationLagThreshold", "useHttps")
NATS_JETSTREAM_REQUIRED = ("natsServerMonitoringEndpoint", "stream", "consumer",
                           "lagThreshold")
"""``natsServerMonitoringEndpoint`` may instead come from a TriggerAuthentication; the
kit sets it inline, so it is required here. ``account`` defaults to ``$G``, which a
server with accounts (ours: RADTRAIN) does not use, so the tests require it too."""


def _fields(where: str, obj: dict[str, Any],
            allowed: dict[str, type | tuple[type, ...]]) -> list[str]:
    errors = [f"{where}.{key}: not a documented field" for key in obj if key not in allowed]
    errors += [f"{where}.{key}: expected {allowed[key]}, got {type(value).__name__}"
               for key, value in obj.items()
               if key in allowed and (not isinstance(value, allowed[key])
                                      or (isinstance(value, bool) and allowed[key] is int))]
    return errors


def _nats_jetstream(where: str, metadata: dict[str, Any]) -> list[str]:
    errors = [f"{where}.{key}: not a nats-jetstream parameter"
              for key in metadata if key not in NATS_JETSTREAM_METADATA]
    errors += [f"{where}.{key}: missing" for key in NATS_JETSTREAM_REQUIRED
               if key not in metadata]
    errors += [f"{where}.{key}: KEDA metadata values are strings"
               for key, value in metadata.items() if not isinstance(value, str)]
    for key in ("lagThreshold", "activationLagThreshold"):
        value = metadata.get(key)
        if isinstance(value, str) and not value.isdigit():
            errors.append(f"{where}.{key}: {value!r} is not a whole number")
    if metadata.get("useHttps", "false") not in ("true", "false"):
        errors.append(f"{where}.useHttps: true or false")
    return errors


def scaledjob_errors(obj: dict[str, Any]) -> list[str]:
    """Every way ``obj`` departs from the documented ScaledJob (empty: none)."""
    errors: list[str] = []
    if obj.get("apiVersion") != SCALEDJOB_API or obj.get("kind") != "ScaledJob":
        errors.append(f"not a {SCALEDJOB_API} ScaledJob")
    if not obj.get("metadata", {}).get("name"):
        errors.append("metadata.name: missing")
    spec = obj.get("spec", {})
    errors += _fields("spec", spec, SPEC_FIELDS)
    errors += [f"spec.{key}: missing" for key in SPEC_REQUIRED if key not in spec]
    if "template" not in spec.get("jobTargetRef", {}):
        errors.append("spec.jobTargetRef.template: missing")
    strategy = spec.get("scalingStrategy", {})
    errors += _fields("spec.scalingStrategy", strategy, SCALING_STRATEGY_FIELDS)
    if strategy.get("strategy", "default") not in SCALING_STRATEGIES:
        errors.append(f"spec.scalingStrategy.strategy: one of {SCALING_STRATEGIES}")
    if strategy.get("multipleScalersCalculation", "max") not in MULTIPLE_SCALERS:
        errors.append(f"spec.scalingStrategy.multipleScalersCalculation: {MULTIPLE_SCALERS}")
    for key, value in spec.get("rollout", {}).items():
        if value not in ROLLOUT_FIELDS.get(key, ()):
            errors.append(f"spec.rollout.{key}: {value!r} is not documented")
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append("spec.minReplicaCount exceeds maxReplicaCount")
    for i, trigger in enumerate(spec.get("triggers", [])):
        where = f"spec.triggers[{i}]"
        errors += _fields(where, trigger, TRIGGER_FIELDS)
        if trigger.get("type") == "nats-jetstream":
            errors += _nats_jetstream(f"{where}.metadata", trigger.get("metadata", {}))
        else:
            errors.append(f"{where}.type: the kit uses nats-jetstream only")
    return errors
