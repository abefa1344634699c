"""One contract for every ObjectStore: the local directory and S3 (real SeaweedFS).

Each test runs against both backends; S3 tests share one fresh bucket per module
and keep apart through a per-test key namespace.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from infra.store import (
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    StoreUnavailable,
    open_store,
    temp_key_for,
)
from infra.store.s3 import S3Store
from radtrain.servers.nats import free_port
from radtrain.servers.seaweedfs import S3Endpoint

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BAD_KEYS = ["../x", "/abs", "a//b", "a/./b", "", "a\\b", "a/"]


def make_s3(endpoint: S3Endpoint, bucket: str, **kwargs: Any) -> S3Store:
    return S3Store(
        bucket,
        endpoint_url=endpoint.url,
        region=endpoint.region,
        access_key=endpoint.access_key_id,
        secret_key=endpoint.secret_access_key,
        **kwargs,
    )


@pytest.fixture(scope="module")
def s3_bucket(s3_server: S3Endpoint) -> str:
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    make_s3(s3_server, bucket).ensure_bucket()
    return bucket


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint: S3Endpoint = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    # 5 MiB parts (S3's minimum) so the ~6 MiB file below goes through multipart.
    return make_s3(
        endpoint,
        bucket,
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
        retry_budget_s=10,
    )


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own, since S3 tests share a bucket."""
    return f"t-{uuid.uuid4().hex[:10]}/"


def plant_temp_object(store: ObjectStore, key: str) -> str:
    """Leave a temp object behind, as a crashed upload would."""
    tmp = temp_key_for(key)
    if isinstance(store, LocalStore):
        path = store.root / tmp
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(Bucket=store.bucket, Key=tmp, Body=b"half")
    return tmp


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{}", os.urandom(70_000)], ids=["empty", "tiny", "70k"])
def test_put_get_round_trip_reports_size_sha256_and_uri(
    store: ObjectStore, ns: str, data: bytes
) -> None:
    key = f"{ns}runs/t1/metrics.json"
    info = store.put_bytes(key, data, content_type="application/json")
    assert info.key == key
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.uri == store.uri(key)
    assert store.get_bytes(key) == data


def test_put_file_get_file_streams_a_multipart_sized_file(
    store: ObjectStore, ns: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * MIB + 123))
    key = f"{ns}runs/t1/checkpoints/last.pt"
    parts: list[int] = []
    seen_half_written: list[bool] = []
    if isinstance(store, S3Store):

        def on_part(params: dict[str, Any], **_: Any) -> None:
            parts.append(params["PartNumber"])
            seen_half_written.append(store.exists(key))

        store.client.meta.events.register("before-parameter-build.s3.UploadPart", on_part)

    info = store.put_file(key, src, content_type="application/octet-stream")

    assert info.size == src.stat().st_size
    assert info.sha256 == sha256_file(src)
    if isinstance(store, S3Store):
        assert sorted(parts) == [1, 2], "expected a two-part multipart upload"
        assert seen_half_written == [False, False], "key visible before upload finished"
    dest = tmp_path / "out" / "nested" / "last.pt"
    assert store.get_file(key, dest) == dest
    assert sha256_file(dest) == info.sha256
    assert sorted(p.name for p in dest.parent.iterdir()) == ["last.pt"], "temp file left behind"


def test_put_file_with_missing_source_fails_without_creating_the_key(
    store: ObjectStore, ns: str, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(f"{ns}x", tmp_path / "nope.bin")
    assert not store.exists(f"{ns}x")
    assert store.list(ns) == []


def test_overwriting_a_key_replaces_it(store: ObjectStore, ns: str, tmp_path: Path) -> None:
    key = f"{ns}model_card.md"
    store.put_bytes(key, b"version one, longer than the next")
    info = store.put_bytes(key, b"v2")
    assert store.get_bytes(key) == b"v2"
    assert info.sha256 == hashlib.sha256(b"v2").hexdigest()
    src = tmp_path / "v3"
    src.write_bytes(b"v3 from a file")
    store.put_file(key, src)
    assert store.get_bytes(key) == b"v3 from a file"
    assert store.list(ns) == [key]


# --- exists / list / delete ---------------------------------------------------------


def test_exists(store: ObjectStore, ns: str) -> None:
    assert not store.exists(f"{ns}a/b")
    store.put_bytes(f"{ns}a/b", b"x")
    assert store.exists(f"{ns}a/b")
    assert not store.exists(f"{ns}a"), "a 'directory' is not an object"
    assert not store.exists(f"{ns}a/b/c")


def test_list_is_sorted_recursive_prefix_based_and_hides_temp_keys(
    store: ObjectStore, ns: str
) -> None:
    keys = [f"{ns}ab/3", f"{ns}a/b/2", f"{ns}c", f"{ns}a/1"]
    for key in keys:
        store.put_bytes(key, key.encode())
    plant_temp_object(store, f"{ns}a/1")
    plant_temp_object(store, f"{ns}a/new")

    assert store.list(ns) == sorted(keys)
    assert store.list(f"{ns}a/") == [f"{ns}a/1", f"{ns}a/b/2"]
    assert store.list(f"{ns}a") == [f"{ns}a/1", f"{ns}a/b/2", f"{ns}ab/3"]
    assert store.list(f"{ns}a/b/2") == [f"{ns}a/b/2"]
    assert store.list(f"{ns}zzz/") == []
    assert store.list(f"{ns}zz") == []


def test_list_rejects_escaping_prefixes(store: ObjectStore) -> None:
    for prefix in ["../", "/", "a//", "a/../"]:
        with pytest.raises(InvalidKey):
            store.list(prefix)


def test_delete_is_idempotent(store: ObjectStore, ns: str) -> None:
    key = f"{ns}plots/loss.png"
    store.put_bytes(key, b"png")
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)
    store.delete(f"{ns}never/existed")
    store.delete(f"{ns}plots")  # a "directory": nothing to do either
    with pytest.raises(ObjectNotFound):
        store.get_bytes(key)


def test_missing_key_raises_object_not_found(store: ObjectStore, ns: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="nope"):
        store.get_bytes(f"{ns}nope")
    dest = tmp_path / "dl" / "nope.bin"
    with pytest.raises(ObjectNotFound):
        store.get_file(f"{ns}nope", dest)
    assert not dest.exists()
    store.put_bytes(f"{ns}dir/file", b"x")
    with pytest.raises(ObjectNotFound):
        store.get_bytes(f"{ns}dir")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_rejected_by_every_method(
    store: ObjectStore, key: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, src),
        lambda: store.get_bytes(key),
        lambda: store.get_file(key, tmp_path / "dst"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.presign(key),
        lambda: store.uri(key),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            call()


# --- addressing ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.onnx", "with space/é 肩.png", "odd%20name+x?.bin"])
def test_uri_and_key_from_uri_round_trip(store: ObjectStore, ns: str, name: str) -> None:
    key = f"{ns}{name}"
    uri = store.uri(key)
    assert uri.startswith("file:///" if isinstance(store, LocalStore) else "s3://")
    assert store.key_from_uri(uri) == key


def test_key_from_uri_rejects_foreign_uris(store: ObjectStore, tmp_path: Path) -> None:
    other = LocalStore(tmp_path / "other").uri("x")
    foreign = [
        other,
        "s3://some-other-bucket/x",
        "http://example.com/x",
        "file:///etc/passwd",
        "x",
        "",
    ]
    if isinstance(store, S3Store):
        foreign.append(f"s3://{store.bucket}/../x")
    if isinstance(store, LocalStore):
        foreign.append(store.root.as_uri() + "/../x")
    for uri in foreign:
        with pytest.raises(InvalidKey):
            store.key_from_uri(uri)


@pytest.mark.parametrize("name", ["model.safetensors", "dir/x y é.bin"])
def test_presigned_url_downloads_the_object(store: ObjectStore, ns: str, name: str) -> None:
    key = f"{ns}{name}"
    data = os.urandom(10_000)
    store.put_bytes(key, data)
    url = store.presign(key, expires_s=60)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == data


# --- S3 specifics -------------------------------------------------------------------


def test_s3_records_sha256_and_content_type_on_the_object(
    s3_server: S3Endpoint, s3_bucket: str, ns: str
) -> None:
    store = make_s3(s3_server, s3_bucket)
    info = store.put_bytes(f"{ns}metrics.json", b"{}", content_type="application/json")
    head = store.client.head_object(Bucket=s3_bucket, Key=f"{ns}metrics.json")
    assert head["Metadata"]["sha256"] == info.sha256
    assert head["ContentType"] == "application/json"
    assert store.client.list_objects_v2(Bucket=s3_bucket, Prefix=ns)["KeyCount"] == 1


def test_s3_missing_key_is_not_retried(s3_server: S3Endpoint, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket, retry_budget_s=30)
    started = time.monotonic()
    with pytest.raises(ObjectNotFound):
        store.get_bytes("definitely/missing")
    assert time.monotonic() - started < 2


def test_open_store_builds_the_configured_backend(s3_server: S3Endpoint, tmp_path: Path) -> None:
    local = open_store(Settings(store_dir=tmp_path / "store"))
    assert isinstance(local, LocalStore) and isinstance(local, ObjectStore)
    bucket = f"open-{uuid.uuid4().hex[:12]}"
    s3 = open_store(Settings(s3_bucket=bucket, **s3_server.settings_overrides()))
    assert isinstance(s3, S3Store) and isinstance(s3, ObjectStore)
    assert s3.put_bytes("k", b"v").uri == f"s3://{bucket}/k"  # bucket was created
    assert s3.get_bytes("k") == b"v"


def test_s3_ensure_bucket_is_idempotent(s3_server: S3Endpoint) -> None:
    store = make_s3(s3_server, f"ensure-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    store.ensure_bucket()
    assert store.list("") == []


def test_s3_unreachable_endpoint_raises_store_unavailable_within_budget() -> None:
    store = S3Store(
        "nobucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        access_key="x",
        secret_key="y",
        retry_budget_s=2,
    )
    for op in (lambda: store.get_bytes("k"), lambda: store.put_bytes("k", b"v")):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            op()
        assert time.monotonic() - started < 6
