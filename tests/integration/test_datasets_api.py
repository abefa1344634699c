"""Dataset routes against a real nats-server (and SeaweedFS S3 for one import).

Imports are jobs: the gateway answers 202, the handlers' import consumer (run
here by tests/support/import_worker.py) does the work, GET follows it.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from gateway.openapi import document
from gateway.previews import load_manifest
from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.bus.topology import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import ObjectStore, open_store
from radtrain.servers.seaweedfs import S3Endpoint
from tests.support.dataset_utils import classification_folder, ct, write_csv, write_json, write_png
from tests.support.import_worker import import_worker
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration


async def _import(settings: Settings, root: Path, **opts: Any) -> str:
    nc, js = await connect(settings, "test-ds")
    try:
        report = await import_dataset(open_store(settings), await DatasetRepo.open(js), root,
                                      ImportOptions(**opts))
    finally:
        await nc.close()
    assert report.registered, report.problems
    return report.dataset_id


def _boxes_source(root: Path) -> Path:
    for name in ("a", "b"):
        write_png(root / "images" / f"{name}.png", np.full((40, 60), 90, np.uint8))
    write_json(root / "coco.json", {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "nodule"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20]}]})
    return root


def _masks_source(root: Path) -> Path:
    ct(root / "images" / "m1.dcm", size=32, hu=40.0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 1
    write_png(root / "masks" / "m1.png", mask)
    return root


def _dx_source(root: Path) -> Path:
    rows = []
    for i in range(3):
        ct(root / f"x{i}.dcm", size=24, modality="DX", patient=f"p{i}")
        rows.append([f"x{i}.dcm", 1, int(i > 0)])
    write_csv(root / "labels.csv", ["image", "effusion", "nodule"], rows)
    return root


@pytest.fixture(scope="module")
async def world(nats_server: str, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Any]:
    """Two fresh tenants; A owns three datasets (labels, boxes, masks), B one."""
    tmp = tmp_path_factory.mktemp("datasets-api")
    settings = Settings(nats_url=nats_server, store_dir=tmp / "store", rate_limit_per_s=1000,
                        rate_limit_burst=1000, api_key_cache_s=0,
                        import_progress_interval_s=0.25)
    await apply_streams(settings)
    a, b = f"dsa{uuid.uuid4().hex[:8]}", f"dsb{uuid.uuid4().hex[:8]}"
    ids = {
        "cls": await _import(settings, classification_folder(tmp / "cls"), name="head CT",
                             format="folder-csv", tenant=a),
        "boxes": await _import(settings, _boxes_source(tmp / "boxes"), name="nodules",
                               format="coco", tenant=a),
        "masks": await _import(settings, _masks_source(tmp / "masks"), name="liver",
                               format="masks", tenant=a),
        "dx": await _import(settings, _dx_source(tmp / "dx"), name="chest", format="folder-csv",
                            tenant=b),
    }
    keys = {a: await issue_key(settings, a), b: await issue_key(settings, b)}
    return {"settings": settings, "a": a, "b": b, "ids": ids, "keys": keys, "tmp": tmp}


@pytest.fixture
async def client(world: dict[str, Any]) -> AsyncIterator[TestClient]:
    async with gateway_client(world["settings"], world["keys"][world["a"]]) as c:
        yield c


async def _ids(client: TestClient, query: str = "", headers: dict[str, str] | None = None
               ) -> set[str]:
    resp = await client.get(f"/v1/datasets{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    assert page["total"] == len(page["items"])
    return {item["id"] for item in page["items"]}


async def test_listing_filters_by_task_type_annotation_and_modality(
        client: TestClient, world: dict[str, Any]) -> None:
    ids = world["ids"]
    assert await _ids(client) == {ids["cls"], ids["boxes"], ids["masks"]}
    assert await _ids(client, "?task_type=classification") == {ids["cls"]}
    assert await _ids(client, "?task_type=detection") == {ids["boxes"]}
    assert await _ids(client, "?task_type=segmentation") == {ids["masks"]}
    assert await _ids(client, "?annotation_type=masks&modality=CT") == {ids["masks"]}
    assert await _ids(client, "?modality=CT") == {ids["cls"], ids["masks"]}
    assert await _ids(client, "?task_type=detection&annotation_type=masks") == set()
    for bad in ("?task_type=regression", "?modality=PET", "?limit=x"):
        resp = await client.get(f"/v1/datasets{bad}")
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_query"


async def test_every_route_is_scoped_to_the_callers_tenant(
        client: TestClient, world: dict[str, Any]) -> None:
    ids, b_key = world["ids"], bearer(world["keys"][world["b"]])
    assert await _ids(client, headers=b_key) == {ids["dx"]}
    assert await _ids(client, "?task_type=classification", headers=b_key) == {ids["dx"]}
    for path in (f"/v1/datasets/{ids['dx']}", f"/v1/datasets/{ids['dx']}/cases",
                 f"/v1/datasets/{ids['dx']}/cases/x0/preview.png"):
        assert (await client.get(path)).status == 404  # A asks for B's
        assert (await client.get(path, headers=b_key)).status == 200
    assert (await client.get(f"/v1/datasets/{ids['cls']}", headers=b_key)).status == 404
    assert (await client.get("/v1/datasets", headers={"Authorization": ""})).status == 401


async def test_show_gives_summary_and_statistics(client: TestClient,
                                                 world: dict[str, Any]) -> None:
    body = await (await client.get(f"/v1/datasets/{world['ids']['cls']}")).json()
    assert body["annotation_type"] == "single_label" and body["num_cases"] == 6
    stats = body["stats"]
    assert stats["class_counts"] == {"finding": 3, "normal": 3}
    assert stats["positive_rate"] == {"finding": 0.5, "normal": 0.5}
    assert stats["image_sizes"]["common"] == {"16x16": 6}
    assert stats["patients"] == 3 and stats["splits"]["unassigned"] == 6
    boxes = await (await client.get(f"/v1/datasets/{world['ids']['boxes']}")).json()
    assert boxes["stats"]["box_counts"] == {"nodule": 1}


async def test_cases_page(client: TestClient, world: dict[str, Any]) -> None:
    base = f"/v1/datasets/{world['ids']['cls']}/cases"
    page = await (await client.get(f"{base}?limit=4&offset=4")).json()
    assert page["total"] == 6 and [c["case_id"] for c in page["items"]] == ["c4", "c5"]
    assert page["items"][0]["images"][0].startswith("cases/c4/")
    finding = await (await client.get(f"{base}?label=finding")).json()
    assert finding["total"] == 3
    assert (await client.get(f"{base}?split=holdout")).status == 400
    assert (await client.get("/v1/datasets/nope/cases")).status == 404


async def test_preview_renders_caches_and_honours_etag(client: TestClient,
                                                       world: dict[str, Any]) -> None:
    ds = world["ids"]["masks"]
    url = f"/v1/datasets/{ds}/cases/m1/preview.png?window=brain&size=64"
    first = await client.get(url)
    assert first.status == 200 and first.content_type == "image/png"
    assert first.headers["X-Preview-Cache"] == "miss"
    png = await first.read()
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert arr.shape == (64, 64, 3)
    assert arr[40, 40].tolist() == [128, 128, 128]  # 40 HU in the brain window, no mask
    assert arr[24, 24, 0] > arr[24, 24, 1]  # tinted by the mask
    store = open_store(world["settings"])
    assert len(store.list(f"datasets/{ds}/previews/m1/")) == 1
    second = await client.get(url)
    assert second.headers["X-Preview-Cache"] == "hit" and await second.read() == png
    etag = second.headers["ETag"]
    assert (await client.get(url, headers={"If-None-Match": etag})).status == 304
    bone = await client.get(f"/v1/datasets/{ds}/cases/m1/preview.png?window=bone&size=64")
    assert bone.headers["ETag"] != etag and await bone.read() != png
    for bad in ("window=kidney", "size=8", "size=5000", "size=big"):
        resp = await client.get(f"/v1/datasets/{ds}/cases/m1/preview.png?{bad}")
        assert resp.status == 400, bad
    assert (await client.get(f"/v1/datasets/{ds}/cases/zz/preview.png")).status == 404
    boxes = await client.get(f"/v1/datasets/{world['ids']['boxes']}/cases/a/preview.png")
    assert boxes.status == 200


async def test_unreadable_case_image_is_a_clear_422(client: TestClient,
                                                    world: dict[str, Any]) -> None:
    ds = world["ids"]["cls"]
    store = open_store(world["settings"])
    key = next(k for k in store.list(f"datasets/{ds}/cases/c5/") if k.endswith(".dcm"))
    store.put_bytes(key, b"garbage" * 10)
    resp = await client.get(f"/v1/datasets/{ds}/cases/c5/preview.png")
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "case_unreadable"
    assert "c5" in body["error"]["message"]


def _upload(store: ObjectStore, root: Path, prefix: str) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        store.put_file(f"{prefix}/{path.relative_to(root).as_posix()}", path)


async def _finished(client: TestClient, location: str, timeout_s: float = 120.0,
                    headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every status seen while polling ``location`` until the import has finished."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        resp = await client.get(location, headers=headers)
        assert resp.status == 200, await resp.text()
        seen.append(await resp.json())
        if seen[-1]["state"] in ("completed", "failed"):
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"import not finished after {timeout_s}s: {seen[-1]}")


async def _submit(client: TestClient, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> str:
    resp = await client.post("/v1/datasets/imports", json=body, headers=headers)
    out = await resp.json()
    assert resp.status == 202, out
    assert out["state"] == "queued"
    assert resp.headers["Location"] == f"/v1/datasets/imports/{out['import_id']}"
    return str(resp.headers["Location"])


@pytest.fixture
async def worker(world: dict[str, Any]) -> AsyncIterator[None]:
    """The handlers process's import consumer (same subscriber loop and handler)."""
    async with import_worker(world["settings"]):
        yield


async def test_import_from_the_store(client: TestClient, world: dict[str, Any],
                                     worker: None) -> None:
    settings, a = world["settings"], world["a"]
    store = open_store(settings)
    _upload(store, classification_folder(world["tmp"] / "up"), f"imports/{a}/batch1")
    body = {"name": "uploaded", "format": "folder-csv", "source": "batch1",
            "dataset_id": f"up-{a}"}
    final = (await _finished(client, await _submit(client, body)))[-1]
    assert final["state"] == "completed", final
    report = final["report"]
    assert report["registered"] and report["num_cases"] == 6 and not report["problems"]
    assert final["dataset_id"] == f"up-{a}" and final["summary"]["num_cases"] == 6
    assert f"up-{a}" in await _ids(client, "?task_type=classification")
    again = (await _finished(client, await _submit(client, body)))[-1]
    assert again["state"] == "failed" and again["error"]["code"] == "dataset_exists"
    # B cannot import A's upload: its source is looked up in B's own area
    b_key = bearer(world["keys"][world["b"]])
    location = await _submit(client, {**body, "dataset_id": None}, headers=b_key)
    failed = (await _finished(client, location, headers=b_key))[-1]
    assert failed["state"] == "failed" and failed["error"]["code"] == "missing_source"
    for source in ("../other/batch1", "/abs", "a/../../b"):
        resp = await client.post("/v1/datasets/imports", json={**body, "source": source})
        assert resp.status == 422, source
    listed = await (await client.get("/v1/datasets/imports?limit=1")).json()
    assert listed["total"] >= 2 and len(listed["items"]) == 1
    assert listed["items"][0]["report"] is None


async def test_failed_import_reports_every_problem_and_registers_nothing(
        client: TestClient, world: dict[str, Any], worker: None) -> None:
    a = world["a"]
    root = classification_folder(world["tmp"] / "bad", n=4)
    (root / "images" / "c2.dcm").write_bytes(b"\x00" * 10)
    _upload(open_store(world["settings"]), root, f"imports/{a}/bad")
    body = {"name": "bad", "format": "folder-csv", "source": "bad", "dataset_id": f"bad-{a}"}
    out = (await _finished(client, await _submit(client, body)))[-1]
    assert out["state"] == "failed" and out["error"]["code"] == "dataset_invalid"
    assert out["report"]["registered"] is False
    assert [(p["code"], p["case_id"]) for p in out["report"]["problems"]] == [("not_image", "c2")]
    assert (await client.get(f"/v1/datasets/bad-{a}")).status == 404
    out = (await _finished(client, await _submit(client, {**body, "skip_bad": True})))[-1]
    assert out["state"] == "completed" and out["report"]["num_cases"] == 3
    assert [s["case_id"] for s in out["report"]["skipped"]] == ["c2"]


def _png_classification(root: Path, n: int, bad: str) -> Path:
    """n tiny PNG cases (two classes) and a labels CSV; case ``bad`` is not an image."""
    rows = []
    for i in range(n):
        path = root / "images" / f"p{i:05d}.png"
        if f"p{i:05d}" == bad:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a png at all")
        else:
            write_png(path, np.full((8, 8), 40 + (i % 2) * 100, np.uint8))
        rows.append([f"images/p{i:05d}.png", "finding" if i % 2 else "normal", f"p{i:05d}"])
    write_csv(root / "labels.csv", ["image", "label", "case_id"], rows)
    return root


async def test_a_2000_case_import_is_accepted_at_once_and_followed_to_its_report(
        client: TestClient, world: dict[str, Any], worker: None) -> None:
    a, b = world["a"], world["b"]
    store = open_store(world["settings"])
    root = _png_classification(world["tmp"] / "big", 2000, bad="p00777")
    await asyncio.to_thread(_upload, store, root, f"imports/{a}/big")
    body = {"name": "big", "format": "folder-csv", "source": "big", "skip_bad": True}
    headers = {"Idempotency-Key": f"big-{a}"}
    started = time.monotonic()
    resp = await client.post("/v1/datasets/imports", json=body, headers=headers)
    accepted_s = time.monotonic() - started
    out = await resp.json()
    assert resp.status == 202 and accepted_s < 1.0, (resp.status, accepted_s, out)
    location = resp.headers["Location"]
    # a retry with the same key is the same import (and the same job message id)
    again = await client.post("/v1/datasets/imports", json=body, headers=headers)
    assert again.status == 202 and (await again.json())["import_id"] == out["import_id"]
    # another tenant sees nothing
    other = await client.get(location, headers=bearer(world["keys"][b]))
    assert other.status == 404
    seen = await _finished(client, location)
    total_s = time.monotonic() - started
    print(f"\n2,000-case import: 202 in {accepted_s * 1000:.0f} ms, finished in {total_s:.1f} s")
    running = [s for s in seen if s["state"] == "running"]
    assert running and any(0 < s["progress"]["done"] for s in running), seen[:3]
    assert all(s["progress"]["done"] <= s["progress"]["total"] for s in running)
    final = seen[-1]
    assert final["state"] == "completed", final["error"]
    assert final["started_at"] and final["finished_at"]
    assert final["progress"]["files"] == 2001 and final["progress"]["uploaded"] == 1999
    report = final["report"]
    assert report["registered"] and report["num_cases"] == 1999
    assert [(p["case_id"], p["code"]) for p in report["problems"]] == [("p00777", "not_image")]
    assert final["summary"]["num_cases"] == 1999 and final["dataset_id"] == report["dataset_id"]
    assert (await client.get(f"/v1/datasets/{final['dataset_id']}")).status == 200


async def test_the_old_synchronous_route_redirects(client: TestClient) -> None:
    resp = await client.post("/v1/datasets/import", json={}, allow_redirects=False)
    assert resp.status == 308 and resp.headers["Location"] == "/v1/datasets/imports"


async def test_a_task_keeps_its_snapshot_when_the_dataset_changes(
        client: TestClient, world: dict[str, Any]) -> None:
    settings, a = world["settings"], world["a"]
    store = open_store(settings)
    src = classification_folder(world["tmp"] / "v1", n=4)
    ds = await _import(settings, src, name="v", format="folder-csv", tenant=a,
                       dataset_id=f"ver-{a}")
    nc, js = await connect(settings, "test-ds")
    repo = await DatasetRepo.open(js)
    v1 = await repo.get(ds)
    ct(src / "images" / "c0.dcm", hu=500.0)  # the same case, new pixels
    await import_dataset(store, repo, src, ImportOptions(name="v", format="folder-csv",
                                                        tenant=a, dataset_id=ds, replace=True))
    v2 = await repo.get(ds)
    await nc.close()
    assert v1 is not None and v2 is not None and v1.manifest_sha256 != v2.manifest_sha256
    old = load_manifest(store, v1)  # still there, still the same bytes
    new = load_manifest(store, v2)
    assert old.cases[0].images != new.cases[0].images
    assert store.exists(f"datasets/{ds}/{old.cases[0].images[0]}")


async def test_import_and_preview_through_s3(s3_server: S3Endpoint, world: dict[str, Any]
                                             ) -> None:
    settings = Settings.model_validate({
        **world["settings"].model_dump(), **s3_server.settings_overrides(),
        "s3_bucket": f"ds{uuid.uuid4().hex[:10]}"})
    store = open_store(settings)  # creates the bucket
    a = world["a"]
    _upload(store, _masks_source(world["tmp"] / "s3src"), f"imports/{a}/seg")
    async with gateway_client(settings, world["keys"][a]) as c, import_worker(settings):
        location = await _submit(c, {
            "name": "s3 seg", "format": "masks", "source": "seg", "dataset_id": f"s3-{a}"})
        final = (await _finished(c, location))[-1]
        assert final["state"] == "completed", final
        png = await c.get(f"/v1/datasets/s3-{a}/cases/m1/preview.png?size=32")
        assert png.status == 200 and (await png.read()).startswith(b"\x89PNG")
    assert store.list(f"datasets/s3-{a}/previews/")


def test_openapi_documents_the_dataset_routes() -> None:
    paths = document()["paths"]
    assert {"/v1/datasets", "/v1/datasets/{dataset_id}", "/v1/datasets/{dataset_id}/cases",
            "/v1/datasets/{dataset_id}/cases/{case_id}/preview.png",
            "/v1/datasets/imports", "/v1/datasets/imports/{import_id}"} <= set(paths)
