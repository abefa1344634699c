"""The loopback cluster's node configs (radtrain/servers/nats_cluster.py): what each node
is told, and that nats-server itself accepts every file."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from radtrain.servers.nats import nats_server_binary
from radtrain.servers.nats_auth import NatsAuthDir
from radtrain.servers.nats_cluster import write_cluster_configs

pytestmark = pytest.mark.integration
PORTS = [(14001, 16001, 18001), (14002, 16002, 18002), (14003, 16003, 18003)]


def _configs(tmp_path: Path, sync_always: bool = True) -> tuple[NatsAuthDir, list[str]]:
    auth = NatsAuthDir(tmp_path / "nats")
    auth.ensure_local_identities()
    auth.render()
    nodes = write_cluster_configs(auth.cluster_dir, PORTS, auth_file=auth.auth_file,
                                  route_credentials=auth.route_credentials(),
                                  sync_always=sync_always)
    assert [n.name for n in nodes] == ["n1", "n2", "n3"]
    assert len({n.dir for n in nodes}) == 3
    return auth, [n.config.read_text() for n in nodes]


def test_every_node_has_its_name_store_routes_and_the_shared_accounts(tmp_path: Path) -> None:
    auth, texts = _configs(tmp_path)
    user, password = auth.route_credentials()
    assert auth.route_credentials() == (user, password)  # made once, then reused
    assert stat.S_IMODE((auth.dir / "route.secret").stat().st_mode) == 0o600
    for i, text in enumerate(texts, start=1):
        assert f'server_name: "n{i}"' in text and f"listen: 127.0.0.1:{PORTS[i - 1][0]}" in text
        assert f'store_dir: "{auth.cluster_dir / f"n{i}"}"' in text
        assert "sync_interval: always" in text and 'name: "radtrain"' in text
        assert f"listen: 127.0.0.1:{PORTS[i - 1][1]}" in text
        assert text.count(f"nats-route://{user}:{password}@127.0.0.1:") == 3
        assert f'password: "{password}"' in text and 'include "../../auth.conf"' in text
    for node in sorted(auth.cluster_dir.iterdir()):
        assert stat.S_IMODE((node / "nats-server.conf").stat().st_mode) == 0o600


def test_relaxed_sync_is_a_choice(tmp_path: Path) -> None:
    _, texts = _configs(tmp_path, sync_always=False)
    assert not any("sync_interval" in t for t in texts)


def test_nats_server_accepts_every_node_config(tmp_path: Path) -> None:
    auth, _ = _configs(tmp_path)
    for node in sorted(auth.cluster_dir.iterdir()):
        done = subprocess.run([str(nats_server_binary()), "-t", "-c",
                               str(node / "nats-server.conf")],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "is valid" in done.stdout + done.stderr, done
