"""Issue 16: two runners share one shard set through a real S3 (SeaweedFS): the first
builds it, the second finds the index and decodes nothing; both stay within the budget."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from radtrain.servers.seaweedfs import S3Endpoint
from runner.shards import ShardedArray, prepare_sharded
from tests.integration.test_store_contract import make_s3
from tests.unit.runner.test_shards import BUDGET, FakeBuild, N, make_manifest, make_spec, pixels

pytestmark = [pytest.mark.integration]


def test_a_second_runner_reuses_the_set_from_s3(s3_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = f"shards-{uuid.uuid4().hex[:12]}"
    make_s3(s3_server, bucket).ensure_bucket()
    spec, manifest = make_spec(), make_manifest()
    first, second = FakeBuild(), FakeBuild()
    a = prepare_sharded(spec, manifest, make_s3(s3_server, bucket), tmp_path / "a", BUDGET,
                        build=first)
    b = prepare_sharded(spec, manifest, make_s3(s3_server, bucket), tmp_path / "b", BUDGET,
                        build=second)
    assert not a.cache_hit and len(first.decoded) == N
    assert b.cache_hit and second.decoded == []
    assert isinstance(b.x, ShardedArray) and b.shards is not None
    order = np.random.default_rng(1).permutation(N)
    assert (b.x[order] == np.stack([pixels(f"c{i:03d}") for i in order])).all()
    assert b.shards.cache.downloads >= len(b.shards.index["shards"])  # all came from S3
    assert b.shards.cache.peak <= BUDGET and b.shards.cache.used() <= BUDGET
