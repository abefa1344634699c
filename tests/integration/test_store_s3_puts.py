"""S3 writes on a real SeaweedFS: one request for what fits one PutObject (issue 16 item 2).

A single PutObject is atomic on S3, so a write whose sha256 is known before
sending (bytes in memory, or a file under the multipart threshold read once)
needs no temporary key and copy; a larger file still streams to a temporary
key and is copied into place, leaving no temporary object behind.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from infra.store.s3 import S3Store
from radtrain.servers.seaweedfs import S3Endpoint

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def store(s3_server: S3Endpoint) -> S3Store:
    s3 = S3Store(f"puts-{uuid.uuid4().hex[:12]}", endpoint_url=s3_server.url,
                 region=s3_server.region, access_key=s3_server.access_key_id,
                 secret_key=s3_server.secret_access_key, retry_budget_s=10,
                 multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.ensure_bucket()
    return s3


def count_requests(store: S3Store) -> Counter[str]:
    """Operation name -> HTTP requests sent, from botocore's own events."""
    sent: Counter[str] = Counter()

    def before_send(request: Any, **kwargs: Any) -> None:
        sent[request.context.get("operation_name", "?")] += 1  # type: ignore[union-attr]

    def before_call(model: Any, context: Any, **kwargs: Any) -> None:
        context["operation_name"] = model.name

    store.client.meta.events.register("before-call.s3", before_call)
    store.client.meta.events.register("before-send.s3", before_send)
    return sent


def test_bytes_and_small_files_are_one_put_with_their_sha256(store: S3Store,
                                                             tmp_path: Path) -> None:
    sent = count_requests(store)
    info = store.put_bytes("a/b.json", b"{}", content_type="application/json")
    src = tmp_path / "img.dcm"
    src.write_bytes(os.urandom(100_000))
    finfo = store.put_file("a/img.dcm", src, "application/dicom")
    assert dict(sent) == {"PutObject": 2}
    head = store.client.head_object(Bucket=store.bucket, Key="a/img.dcm")
    assert head["Metadata"]["sha256"] == finfo.sha256 == hashlib.sha256(src.read_bytes()
                                                                        ).hexdigest()
    assert head["ContentType"] == "application/dicom"
    assert info.sha256 == hashlib.sha256(b"{}").hexdigest()
    assert store.get_bytes("a/img.dcm") == src.read_bytes()


def test_a_given_digest_is_recorded_without_hashing_again(store: S3Store) -> None:
    digest = hashlib.sha256(b"pixels").hexdigest()
    assert store.put_bytes("k", b"pixels", sha256=digest).sha256 == digest
    assert store.client.head_object(Bucket=store.bucket, Key="k")["Metadata"]["sha256"] == digest


def test_a_large_file_still_goes_through_a_temporary_key(store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * MIB))  # over the 5 MiB threshold: multipart
    sent = count_requests(store)
    info = store.put_file("big.bin", src)
    assert sent["CopyObject"] == 1 and sent["PutObject"] == 0
    assert info.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    listed = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["big.bin"], "temporary object left behind"
