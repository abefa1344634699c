"""deploy/k8s: the kustomize base and its overlays render, every object validates
against the Kubernetes API schemas (kubernetes-validate, strict) or, for KEDA's
ScaledJob, against the fields KEDA documents (keda_schema.py), and the manifests
agree with the code they deploy (settings names, pools, consumers, modules)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from infra.bus.topology import DISPATCH_STREAM, RUNNER_PREFIX
from infra.settings import Settings
from radtrain.servers.nats_auth import MAIN_ACCOUNT
from tests.unit.deploy.keda_schema import scaledjob_errors
from tests.unit.deploy.kustomize import kubectl_render, render

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
TREES = ("base", "overlays/dev", "overlays/prod")
K8S_VERSION = "1.36.0"
"""A Kubernetes release kubernetes-validate ships schemas for (strict: no unknown field)."""
SECRETS = {"radtrain-nats": {"services.nk", "secrets-seal.key"},
           "radtrain-s3": {"access-key-id", "secret-access-key"}}

Obj = dict[str, Any]


@functools.cache
def _rendered(tree: str) -> tuple[Obj, ...]:
    return tuple(render(K8S / tree))


def rendered(tree: str) -> list[Obj]:
    return copy.deepcopy(list(_rendered(tree)))


def key(obj: Obj) -> tuple[str, str, str | None, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def pod_spec(obj: Obj) -> Obj:
    if obj["kind"] == "ScaledJob":
        return obj["spec"]["jobTargetRef"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "ScaledJob")]


def settings_data(objects: list[Obj]) -> dict[str, str]:
    (cm,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] ==
             "radtrain-settings"]
    return dict(cm["data"])


def validate(obj: Obj) -> None:
    if obj["kind"] == "ScaledJob":
        assert scaledjob_errors(obj) == []
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": obj["metadata"]["name"]},
               "spec": obj["spec"]["jobTargetRef"]}
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("tree", TREES)
def test_every_object_validates(tree: str) -> None:
    objects = rendered(tree)
    assert len({key(o) for o in objects}) == len(objects), "duplicate objects"
    for obj in objects:
        validate(obj)


def test_the_validators_catch_mistakes() -> None:
    (gateway,) = [o for o in by_kind(rendered("base"), "Deployment")
                  if o["metadata"]["name"] == "radtrain-gateway"]
    gateway["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(gateway)
    job = by_kind(rendered("base"), "ScaledJob")[0]
    job["spec"]["maxReplicas"] = 3
    job["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1
    del job["spec"]["triggers"][0]["metadata"]["consumer"]
    errors = scaledjob_errors(job)
    assert any("maxReplicas: not a documented field" in e for e in errors)
    assert any("lagThreshold: KEDA metadata values are strings" in e for e in errors)
    assert any("consumer: missing" in e for e in errors)


@pytest.mark.parametrize("tree", TREES)
def test_kubectl_renders_the_same_objects(tree: str) -> None:
    """The pure-Python render (tests/unit/deploy/kustomize.py) is what kubectl makes."""
    objects, why = kubectl_render(K8S / tree)
    if objects is None:
        pytest.skip(why)
    theirs = {key(o): o for o in objects}
    assert {key(o): o for o in rendered(tree)} == theirs


@pytest.mark.parametrize("tree", TREES)
def test_settings_are_names_the_processes_read(tree: str, monkeypatch: pytest.MonkeyPatch,
                                               ) -> None:
    """``extra="ignore"`` would let a misspelt variable pass silently: every RADTRAIN_
    name must be a Settings field, and the values must parse."""
    objects = rendered(tree)
    env = settings_data(objects)
    for obj in workloads(objects):
        for container in pod_spec(obj)["containers"]:
            env |= {e["name"]: e.get("value", "x") for e in container.get("env", [])}
    fields = {f"RADTRAIN_{name.upper()}" for name in Settings.model_fields}
    assert {n for n in env if n.startswith("RADTRAIN_")} - fields == set()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.store_backend == "s3" and settings.nats_nkey_seed is not None


@pytest.mark.parametrize("tree", TREES)
def test_one_scaled_job_per_pool(tree: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered(tree)
    monkeypatch.setenv("RADTRAIN_RUNNER_POOLS", settings_data(objects)["RADTRAIN_RUNNER_POOLS"])
    pools = {p.name: p for p in Settings().runner_pools}
    jobs = by_kind(objects, "ScaledJob")
    assert sorted(j["metadata"]["labels"]["radtrain.io/pool"] for j in jobs) == sorted(pools)
    for job in jobs:
        pool = pools[job["metadata"]["labels"]["radtrain.io/pool"]]
        (trigger,) = job["spec"]["triggers"]
        meta = trigger["metadata"]
        assert (meta["stream"], meta["consumer"], meta["account"]) == (
            DISPATCH_STREAM, f"{RUNNER_PREFIX}{pool.name}", MAIN_ACCOUNT)
        assert job["spec"]["minReplicaCount"] == 0  # scale to zero
        (runner,) = pod_spec(job)["containers"]
        assert runner["command"] == ["python", "-m", "runner"] and "--once" in runner["args"]
        env = {e["name"]: e.get("value") for e in runner["env"]}
        assert env["RADTRAIN_RUNNER_POOL"] == pool.name
        res = runner["resources"]
        gpus = [res[part].get("nvidia.com/gpu", 0) for part in ("requests", "limits")]
        assert gpus == [pool.gpus, pool.gpus]
        assert env["RADTRAIN_DEVICE"] == ("cuda" if pool.gpus else "cpu")


@pytest.mark.parametrize("tree", TREES)
def test_containers_probes_resources_security(tree: str) -> None:
    objects = rendered(tree)
    data = settings_data(objects)
    health = {"gateway": data["RADTRAIN_GATEWAY_PORT"],
              "handlers": data["RADTRAIN_HANDLERS_HEALTH_PORT"],
              "runner": data["RADTRAIN_RUNNER_HEALTH_PORT"]}
    seed_dir = str(Path(data["RADTRAIN_NATS_NKEY_SEED"]).parent)
    for obj in workloads(objects):
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            module = c["command"][2]
            assert c["command"][:2] == ["python", "-m"]
            assert (ROOT / module / "__main__.py").is_file(), module
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]) or (
                    part == "limits" and "memory" in c["resources"][part])
            ports = {p["name"]: str(p["containerPort"]) for p in c["ports"]}
            for probe in ("livenessProbe", "readinessProbe"):
                port = c[probe]["httpGet"]["port"]
                assert ports[port] == health[module], (module, probe)
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert mounts["nats-identity"] == seed_dir


@pytest.mark.parametrize("tree", TREES)
def test_secrets_are_the_documented_ones(tree: str) -> None:
    used: dict[str, set[str]] = {}
    for obj in workloads(rendered(tree)):
        spec = pod_spec(obj)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                used.setdefault(volume["secret"]["secretName"], set()).update(
                    i["key"] for i in volume["secret"]["items"])
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
    assert used == SECRETS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, keys in SECRETS.items():
        assert f"create secret generic {name}" in readme
        for k in keys:
            assert f"{k}=" in readme, (name, k)


def test_gateway_service_and_autoscaler_point_at_the_deployment() -> None:
    for tree in TREES:
        objects = rendered(tree)
        deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
        for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]
            assert target["kind"] == "Deployment" and target["name"] in deployments
            assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        for selector_owner in by_kind(objects, "Service") + by_kind(
                objects, "PodDisruptionBudget"):
            spec = selector_owner["spec"]
            selector = spec["selector"].get("matchLabels", spec["selector"])
            matched = [d for d in deployments.values() if selector.items() <=
                       d["spec"]["template"]["metadata"]["labels"].items()]
            assert len(matched) == 1, selector_owner["metadata"]["name"]


def test_overlays() -> None:
    dev, prod = rendered("overlays/dev"), rendered("overlays/prod")
    assert {o["metadata"]["namespace"] for o in dev} == {"radtrain-dev"}
    assert {o["metadata"]["namespace"] for o in prod} == {"radtrain"}
    assert [j["metadata"]["name"] for j in by_kind(dev, "ScaledJob")] == ["radtrain-runner-cpu"]
    assert len(by_kind(prod, "PodDisruptionBudget")) == 2
    assert settings_data(prod)["RADTRAIN_STREAM_REPLICAS"] == "3"
    images = {c["image"] for o in workloads(prod) for c in pod_spec(o)["containers"]}
    assert all(not i.endswith((":latest", ":dev")) and ":" in i for i in images)
    assert json.loads(settings_data(dev)["RADTRAIN_RUNNER_POOLS"])[0]["name"] == "cpu"
