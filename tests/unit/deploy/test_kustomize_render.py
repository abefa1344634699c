"""The pure-Python kustomize render on a small tree: each feature the kit uses, with
the result kubectl gives for it (kustomize v5), so the render is checked without kubectl."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.deploy.kustomize import UnsupportedKustomization, kubectl_render, render

BASE = """\
resources: [app.yaml]
labels:
  - pairs: {team: a}
images:
  - {name: app, newName: reg/app, newTag: "1.0"}
"""
APP = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  template:
    spec:
      containers:
        - {name: web, image: app, env: [{name: A, value: "1"}, {name: C, value: "3"}]}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {name: job}
spec:
  maxReplicaCount: 4
  jobTargetRef: {template: {spec: {containers: [{name: r, image: "app:0.9"}]}}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {name: gone}
spec: {}
"""
OVERLAY = """\
namespace: ns
resources: [../base]
images:
  - {name: reg/app, newTag: "2.0"}
patches:
  - path: patch.yaml
  - target: {group: keda.sh, kind: ScaledJob, name: job}
    patch: |-
      - {op: replace, path: /spec/maxReplicaCount, value: 9}
"""
PATCH = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - {name: web, env: [{name: C, value: "33"}, {name: B, value: "2"}]}
---
$patch: delete
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {name: gone}
"""


def tree(tmp_path: Path) -> Path:
    for rel, text in {"base/kustomization.yaml": BASE, "base/app.yaml": APP,
                      "over/kustomization.yaml": OVERLAY, "over/patch.yaml": PATCH}.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_render_applies_every_feature(tmp_path: Path) -> None:
    objects = {o["metadata"]["name"]: o for o in render(tree(tmp_path) / "over")}
    assert sorted(objects) == ["job", "web"]
    web, job = objects["web"], objects["job"]
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"ns"}
    assert web["metadata"]["labels"] == {"team": "a"}
    assert "labels" not in web["spec"]["template"].get("metadata", {})
    (container,) = web["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reg/app:2.0"
    assert container["env"] == [{"name": "C", "value": "33"}, {"name": "B", "value": "2"},
                                {"name": "A", "value": "1"}]  # kubectl's order
    assert web["spec"]["replicas"] == 2
    assert job["spec"]["maxReplicaCount"] == 9
    (runner,) = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    assert runner["image"] == "reg/app:2.0"  # custom resources' containers too


def test_kubectl_agrees(tmp_path: Path) -> None:
    root = tree(tmp_path)
    objects, why = kubectl_render(root / "over")
    if objects is None:
        pytest.skip(why)
    assert {o["metadata"]["name"]: o for o in objects} == {
        o["metadata"]["name"]: o for o in render(root / "over")}


def test_render_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "over" / "kustomization.yaml").write_text(OVERLAY + "namePrefix: x-\n")
    with pytest.raises(UnsupportedKustomization, match="namePrefix"):
        render(root / "over")
    (root / "over" / "kustomization.yaml").write_text(
        OVERLAY.replace("name: job}", "name: nothing}"))
    with pytest.raises(UnsupportedKustomization, match="no object matches"):
        render(root / "over")
