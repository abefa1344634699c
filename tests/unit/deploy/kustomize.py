"""A pure-Python render of the kustomize features deploy/k8s uses, so the manifests
are tested on any machine; where ``kubectl`` is installed the tests check that it
renders the same objects (tests/unit/deploy/test_manifests.py).

Supported, and nothing more (the kit keeps to it): ``resources`` (files and
kustomization directories), ``patches`` (strategic merge from ``path`` or inline,
``$patch: delete``; JSON 6902 with a ``target``), ``namespace``, ``labels`` (pairs
on ``metadata.labels``, without selectors or templates) and ``images`` (every
``containers``/``initContainers`` list, as kustomize walks custom resources too).
Anything else in a kustomization is an error, so the kit cannot drift past it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
KNOWN_FIELDS = frozenset({"apiVersion", "kind", "resources", "patches", "namespace",
                          "labels", "images"})


class UnsupportedKustomization(ValueError):
    pass


def load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def render(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` prints (order aside)."""
    k = load_docs(directory / "kustomization.yaml")[0]
    unknown = set(k) - KNOWN_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        objects += render(target) if target.is_dir() else load_docs(target)
    for patch in k.get("patches", []):
        objects = _apply_patch(directory, objects, patch)
    if "namespace" in k:
        for obj in objects:
            obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    for label in k.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise UnsupportedKustomization(f"{directory}: labels on selectors/templates")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for obj in objects:
            _set_images(obj, image)
    return objects


def _matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"kind": obj["kind"], "name": obj["metadata"]["name"], "group": group,
              "version": version}
    return all(wanted.get(key) == value for key, value in target.items())


def _apply_patch(directory: Path, objects: list[Obj], patch: Obj) -> list[Obj]:
    docs = (load_docs(directory / patch["path"]) if "path" in patch
            else list(yaml.safe_load_all(patch["patch"])))
    target = patch.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):  # JSON 6902
        if target is None:
            raise UnsupportedKustomization("a JSON 6902 patch needs a target")
        hits = [o for o in objects if _matches(o, target)]
        if not hits:
            raise UnsupportedKustomization(f"no object matches {target}")
        for obj in hits:
            for op in docs[0]:
                _json6902(obj, op)
        return objects
    for doc in docs:  # strategic merge: each document names its object
        key = {"kind": doc["kind"], "name": doc["metadata"]["name"]}
        hits = [o for o in objects if _matches(o, key) and (target is None or
                                                             _matches(o, target))]
        if len(hits) != 1:
            raise UnsupportedKustomization(f"patch {key} matches {len(hits)} objects")
        if doc.get("$patch") == "delete":
            objects = [o for o in objects if o is not hits[0]]
        else:
            _merge(hits[0], doc)
    return objects


def _merge(base: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list) and _named(value):
            # as kustomize orders a list merged by name: the patch's items first (merged
            # with the original ones), then the original items the patch does not name
            by_name = {item["name"]: item for item in base[key] if isinstance(item, dict)}
            merged = []
            for item in value:
                original = by_name.pop(item["name"], None)
                if original is not None:
                    _merge(original, item)
                merged.append(original if original is not None else copy.deepcopy(item))
            base[key] = merged + [i for i in base[key] if not isinstance(i, dict)
                                  or i.get("name") in by_name]
        else:
            base[key] = copy.deepcopy(value)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _json6902(obj: Obj, op: Obj) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in
                      op["path"].lstrip("/").split("/")]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] in ("replace", "add") and isinstance(node, dict):
        if op["op"] == "replace" and last not in node:
            raise UnsupportedKustomization(f"replace of a missing {op['path']}")
        node[last] = copy.deepcopy(op["value"])
    elif op["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise UnsupportedKustomization(f"JSON patch op {op}")


def split_image(image: str) -> tuple[str, str | None]:
    """``repo/name:tag`` -> (``repo/name``, ``tag``); digests are not used in the kit."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, None
    return name, tag


def _set_images(node: Any, image: Obj) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                name, tag = split_image(container.get("image", ""))
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    new_name = image.get("newName", name)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
        _set_images(value, image)


def kubectl_render(directory: Path) -> tuple[list[Obj] | None, str]:
    """``kubectl kustomize directory`` parsed, or None and why it cannot be used here."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None, "kubectl not installed: the pure-Python render alone is checked"
    version = json.loads(subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
        timeout=60).stdout or "{}").get("kustomizeVersion", "v0")
    if tuple(int(n) for n in re.findall(r"\d+", version)[:2]) < (5, 0):
        return None, f"kubectl's kustomize {version} is older than the v5 the kit is written for"
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [o for o in yaml.safe_load_all(out) if o], ""
