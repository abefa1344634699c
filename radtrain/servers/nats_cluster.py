"""A JetStream cluster of nats-server nodes on loopback (DESIGN.md §4, §11).

Each node has its own folder (``<root>/n1`` ...: config, pid file, log and
JetStream store), a server name, a client port, a route port and a monitoring
port. Every node includes the same ``auth.conf`` (the accounts and users of
radtrain/servers/nats_auth.py), and the routes authenticate with one route
user whose password only the nodes know. ``sync_interval: always`` unless the
caller relaxes it. A node can be signalled (kill -9, SIGSTOP/SIGCONT) and
started again on the same ports and store, which is what the fault tests do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radtrain.servers.nats import (
    LOOPBACK,
    NATS_LOG,
    ManagedProcess,
    ServerStartError,
    _nats_ready,
    free_ports,
    nats_server_binary,
    write_nats_config,
)

__all__ = ["CLUSTER_NAME", "NatsCluster", "NatsNode", "cluster_block", "start_nats_cluster",
           "write_cluster_configs"]

CLUSTER_NAME = "radtrain"
ROUTE_PORT_OFFSET = 2000  # 4222 -> 6222, the NATS convention
HTTP_PORT_OFFSET = 4000  # 4222 -> 8222


@dataclass
class NatsNode:
    """One server of the cluster; ``proc`` is None while it is not started."""

    name: str
    dir: Path
    client_port: int
    route_port: int
    http_port: int
    config: Path
    proc: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.client_port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerStartError(f"nats node {self.name} is not started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()

    def start(self) -> None:
        """Launch (again) from its config; :meth:`wait_ready` waits for clients to connect."""
        if self.running():
            return
        if self.proc is not None:
            self.proc.stop(0)  # closes the old log handle; the process is gone already
        self.proc = ManagedProcess(
            f"nats-{self.name}", [nats_server_binary(), "-c", self.config],
            log_path=self.dir / NATS_LOG, ready_check=_nats_ready(self.client_port))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            raise ServerStartError(f"nats node {self.name} is not started")
        self.proc.wait_ready(timeout_s)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGKILL, SIGSTOP, SIGCONT ...); a SIGKILLed node can be started again."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if sig == signal.SIGKILL and self.proc is not None:
            self.proc.wait(10)

    def monitor(self, path: str, timeout_s: float = 2.0) -> tuple[int, Any]:
        """GET ``path`` on the node's monitoring port: (HTTP status, decoded JSON)."""
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def healthy(self) -> bool:
        """``/healthz``: the node serves clients and its JetStream is current with the cluster."""
        try:
            return self.monitor("/healthz")[0] == 200
        except (OSError, ValueError):
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot exit
            self.proc.stop(timeout_s)


@dataclass
class NatsCluster:
    nodes: list[NatsNode]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (``settings.nats_url``)."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no nats node {name!r} (have {[n.name for n in self.nodes]})")

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Every running node answers ``/healthz`` (a JetStream meta leader is elected)."""
        deadline = time.monotonic() + timeout_s
        while True:
            sick = [n.name for n in self.nodes if n.running() and not n.healthy()]
            if not sick:
                return
            if time.monotonic() > deadline:
                node = self.node(sick[0])
                tail = node.proc.log_tail(3000) if node.proc is not None else ""
                raise ServerStartError(f"nats nodes {sick} not healthy after {timeout_s:g}s:\n"
                                       f"{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster_block(name: str, route_port: int, peer_route_ports: list[int],
                  route_user: str, route_password: str) -> list[str]:
    """The ``cluster`` block of one node: its route listener, the route authorization
    and the routes to every node (a route to itself is ignored by the server)."""
    def route(port: int) -> str:
        return json.dumps(f"nats-route://{route_user}:{route_password}@{LOOPBACK}:{port}")

    return ["cluster {", f"  name: {json.dumps(name)}", f"  listen: {LOOPBACK}:{route_port}",
            "  authorization {", f"    user: {json.dumps(route_user)}",
            f"    password: {json.dumps(route_password)}", "    timeout: 2", "  }",
            "  routes: [", *(f"    {route(p)}" for p in peer_route_ports), "  ]", "}"]


def _ports(size: int, base: int) -> list[tuple[int, int, int]]:
    """(client, route, http) per node: ``base``, ``base+2000``, ``base+4000`` upwards, or free
    ports where ``base`` is 0."""
    if base:
        return [(base + i, base + ROUTE_PORT_OFFSET + i, base + HTTP_PORT_OFFSET + i)
                for i in range(size)]
    picked = free_ports(3 * size)
    return [(picked[3 * i], picked[3 * i + 1], picked[3 * i + 2]) for i in range(size)]


def write_cluster_configs(root: Path, ports: list[tuple[int, int, int]], *, auth_file: Path,
                          route_credentials: tuple[str, str], sync_always: bool = True
                          ) -> list[NatsNode]:
    """One folder and config per (client, route, http) ports: ``<root>/n1`` ... (not started)."""
    root = Path(root).resolve()
    user, password = route_credentials
    nodes: list[NatsNode] = []
    for i, (client, route, http) in enumerate(ports, start=1):
        name = f"n{i}"
        node_dir = root / name
        extra = cluster_block(CLUSTER_NAME, route, [p[1] for p in ports], user, password)
        config = write_nats_config(node_dir, client, sync_always, http, auth_file=auth_file,
                                   server_name=name, extra=extra)
        nodes.append(NatsNode(name, node_dir, client, route, http, config))
    return nodes


def start_nats_cluster(
    root: Path,
    *,
    auth_file: Path,
    route_credentials: tuple[str, str],
    size: int = 3,
    base_port: int = 0,
    sync_always: bool = True,
    timeout_s: float = 60.0,
) -> NatsCluster:
    """Start ``size`` nodes under ``root`` (``n1`` ...) and wait until every one is healthy.

    ``base_port`` 0 picks free ports. On failure every node started is stopped.
    """
    nodes = write_cluster_configs(root, _ports(size, base_port), auth_file=auth_file,
                                  route_credentials=route_credentials, sync_always=sync_always)
    cluster = NatsCluster(nodes)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout_s)
        cluster.wait_healthy(timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
