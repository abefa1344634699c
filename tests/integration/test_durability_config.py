"""Durability (DESIGN.md §4): every NATS config radtrain writes fsyncs before acking."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from infra.settings import Settings
from radtrain.servers.nats import nats_server_binary, write_nats_config

pytestmark = pytest.mark.integration

CLUSTER_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "cluster.conf"
SYNC_ALWAYS = re.compile(r"^\s*sync_interval:\s*always\s*$", re.MULTILINE)


def _jetstream_block(text: str) -> str:
    return text[text.index("jetstream {"):text.index("}", text.index("jetstream {"))]


def test_embedded_config_syncs_always_by_default(tmp_path: Path) -> None:
    assert Settings().nats_sync_always is True
    conf = write_nats_config(tmp_path, 4222, sync_always=True).read_text()
    assert SYNC_ALWAYS.search(_jetstream_block(conf))
    relaxed = write_nats_config(tmp_path / "b", 4222, sync_always=False).read_text()
    assert not SYNC_ALWAYS.search(relaxed)  # only when a user accepts the risk


def test_cluster_config_syncs_always_and_is_valid() -> None:
    text = CLUSTER_CONF.read_text()
    assert SYNC_ALWAYS.search(_jetstream_block(text))
    assert text.count("nats-route://") == 3
    env = {**os.environ, "NATS_SERVER_NAME": "nats-0"}
    done = subprocess.run([str(nats_server_binary()), "-t", "-c", str(CLUSTER_CONF)],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr
