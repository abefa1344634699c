"""Issue 17 limits on dataset imports, against a real S3 (SeaweedFS) and nats-server:
S3 "folder" marker keys are ignored, and byte caps are checked from the listing before
anything is copied."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from handlers.datasets_import.job import SourceCaps, download_prefix
from infra.errors import PermanentError
from infra.settings import Settings
from infra.store import ObjectStore, open_store
from radtrain.servers.seaweedfs import S3Endpoint
from tests.support.dataset_utils import classification_folder
from tests.support.import_worker import import_worker
from tests.support.tenancy_utils import apply_streams, gateway_client, issue_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def world(nats_server: str, s3_server: S3Endpoint,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("limits-imports")
    settings = Settings.model_validate({
        "nats_url": nats_server, "store_dir": str(tmp / "store"), "rate_limit_per_s": 1000,
        "rate_limit_burst": 1000, "import_progress_interval_s": 0.25,
        **s3_server.settings_overrides(), "s3_bucket": f"lim{uuid.uuid4().hex[:10]}"})
    await apply_streams(settings)
    store = open_store(settings)  # creates the bucket
    tenant = f"imp{uuid.uuid4().hex[:8]}"
    return {"settings": settings, "store": store, "tenant": tenant, "tmp": tmp,
            "key": await issue_key(settings, tenant)}


def _upload(store: ObjectStore, root: Path, prefix: str) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        store.put_file(f"{prefix}/{path.relative_to(root).as_posix()}", path)


def _marker(store: Any, key: str) -> None:
    """What the S3 console's "Create folder" leaves: a zero-byte object named ``.../``."""
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"")


async def _import(world: dict[str, Any], source: str) -> dict[str, Any]:
    async with gateway_client(world["settings"], world["key"]) as c, \
            import_worker(world["settings"]):
        resp = await c.post("/v1/datasets/imports", json={
            "name": "markers", "format": "folder-csv", "source": source})
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = await (await c.get(location)).json()
            if status["state"] in ("completed", "failed"):
                return dict(status)
            await asyncio.sleep(0.1)
    raise AssertionError("import did not finish")


async def test_folder_marker_keys_are_ignored(world: dict[str, Any]) -> None:
    store, tenant = world["store"], world["tenant"]
    prefix = f"imports/{tenant}/marked"
    _upload(store, classification_folder(world["tmp"] / "marked", 4), prefix)
    for marker in (f"{prefix}/", f"{prefix}/images/", f"{prefix}/empty/"):
        _marker(store, marker)
    assert f"{prefix}/images/" in store.list(prefix + "/")
    status = await _import(world, "marked")  # before: a 503-like store error on every retry
    assert status["state"] == "completed", status
    assert status["progress"]["files"] == 5  # 4 images and labels.csv; no markers


class CountingStore:
    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.copied = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_file(self, key: str, path: Path) -> Path:
        self.copied += 1
        return self.inner.get_file(key, path)


def test_byte_caps_refuse_before_anything_is_copied(world: dict[str, Any],
                                                    tmp_path: Path) -> None:
    store, tenant = world["store"], world["tenant"]
    prefix = f"imports/{tenant}/big"
    root = classification_folder(world["tmp"] / "big", 2)
    (root / "images" / "scan.raw").write_bytes(b"\0" * 50_000)
    _upload(store, root, prefix)
    _marker(store, f"{prefix}/images/")
    counting = CountingStore(store)
    sizes = dict(store.list_sizes(prefix + "/"))
    assert sizes[f"{prefix}/images/"] == 0 and sizes[f"{prefix}/images/scan.raw"] == 50_000

    def run(caps: SourceCaps) -> PermanentError:
        with pytest.raises(PermanentError) as info:
            download_prefix(counting, prefix, tmp_path / "dest", lambda d, t: None, caps)
        return info.value

    big = run(SourceCaps(max_objects=100, max_object_bytes=10_000))
    assert big.code == "object_too_large" and "images/scan.raw" in big.message
    assert tenant not in big.message  # relative to the source, not the store's key
    total = run(SourceCaps(max_objects=100, max_object_bytes=100_000, max_total_bytes=50_500))
    assert total.code == "source_too_large"
    many = run(SourceCaps(max_objects=3))
    assert many.code == "too_many_objects" and "4 objects" in many.message  # marker not counted
    assert counting.copied == 0 and not (tmp_path / "dest").exists()
    count = download_prefix(counting, prefix, tmp_path / "dest", lambda d, t: None,
                            SourceCaps(max_objects=4, max_object_bytes=50_000,
                                       max_total_bytes=60_000))
    assert count == 4 and counting.copied == 4  # at the caps exactly: allowed
