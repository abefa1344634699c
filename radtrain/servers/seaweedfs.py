"""Local SeaweedFS S3 server (``weed mini``) for the tests and the benchmarks.

Split from ``radtrain.servers.nats`` (which re-exports it): the process wrapper,
port and binary helpers live there.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radtrain.servers.nats import (
    LOOPBACK,
    ManagedProcess,
    ServerStartError,
    _start_with_port_retry,
    seaweedfs_binary,
)

# --- SeaweedFS ------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """Where a local S3 answers and the credentials it was started with."""

    url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def settings_overrides(self) -> dict[str, Any]:
        """Keyword arguments for ``Settings`` that point the S3 store here."""
        return {
            "store_backend": "s3",
            "s3_endpoint_url": self.url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }


_WEED_SERVICES = ("master", "volume", "filer", "s3", "admin")
# SeaweedFS's own rule for gRPC ports; its admin worker assumes it whatever
# -admin.port.grpc says, so every pair keeps it.
_GRPC_OFFSET = 10_000


def _free_port_pairs(n: int, offset: int = _GRPC_OFFSET) -> list[tuple[int, int]]:
    """``n`` pairs (p, p + offset), all free; sockets are held until all are found."""
    held: list[socket.socket] = []
    pairs: list[tuple[int, int]] = []
    try:
        for _ in range(200):
            if len(pairs) == n:
                return pairs
            base = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            base.bind((LOOPBACK, 0))
            port = base.getsockname()[1]
            other = _bind_loopback(port + offset) if port + offset <= 65535 else None
            if other is None:
                base.close()
                continue
            held += [base, other]
            pairs.append((port, port + offset))
        raise ServerStartError(f"could not find {n} free port pairs {offset} apart")
    finally:
        for s in held:
            s.close()


def _bind_loopback(port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, port))
    except OSError:
        s.close()
        return None
    return s


def _weed_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for service, (http, grpc) in zip(
        _WEED_SERVICES, _free_port_pairs(len(_WEED_SERVICES)), strict=True
    ):
        ports[f"{service}.port"] = http
        ports[f"{service}.port.grpc"] = grpc
    return ports


def _weed_socket_cleanup(ports: dict[str, int]) -> Callable[[], None]:
    """Remove the gRPC unix sockets weed leaves in the temp dir when it is killed.

    Its volume server sometimes hangs in graceful shutdown (httpdown waiting on
    a connection), so a SIGKILL after a short wait is part of normal operation.
    """
    tmp = Path(tempfile.gettempdir())
    paths = [
        tmp / f"seaweedfs-{svc}-grpc-{ports[svc + '.port.grpc']}.sock" for svc in _WEED_SERVICES
    ]

    def cleanup() -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    return cleanup


def _write_s3_identities(path: Path, access_key: str, secret_key: str) -> None:
    """With an identity configured SeaweedFS checks signatures; without one it
    accepts anything, which would hide credential bugs."""
    config = {
        "identities": [
            {
                "name": "radtrain",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(config, fh)


def _weed_argv(binary: Path, data_dir: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    argv = [
        str(binary), "mini", f"-dir={data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
    ]  # fmt: skip
    argv += [f"-{flag}={port}" for flag, port in ports.items()]
    # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and are left behind;
    # keep them in the data dir when its path fits a socket address (108 bytes).
    if len(str(data_dir)) < 90:
        argv += [f"-s3.localSocket={data_dir / 's3.sock'}",
                 f"-filer.localSocket={data_dir / 'filer.sock'}"]  # fmt: skip
    return argv


def _s3_ready(endpoint: S3Endpoint) -> Callable[[ManagedProcess], bool]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key_id,
        aws_secret_access_key=endpoint.secret_access_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2,
                      s3={"addressing_style": "path"}),
    )  # fmt: skip

    def check(proc: ManagedProcess) -> bool:
        try:
            client.list_buckets()
            return True
        except ClientError as exc:
            code = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in (401, 403):
                raise ServerStartError(f"SeaweedFS S3 refused our credentials: {exc}") from exc
            return False  # 5xx while its filer is still starting
        except BotoCoreError:
            return False

    return check


def start_seaweedfs(
    data_dir: Path,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    timeout_s: float = 60.0,
) -> tuple[ManagedProcess, S3Endpoint]:
    """Run ``weed mini`` (master, volume, filer, S3) on free loopback ports.

    Credentials are generated unless given, and SeaweedFS is told to require
    them; the returned ``S3Endpoint`` carries them. Stopped with SIGINT, and
    SIGKILL 5 s later if it hangs (its data dir is disposable).
    """
    binary = seaweedfs_binary()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "RT" + secrets.token_hex(9).upper()
    secret_key = secret_key or secrets.token_urlsafe(30)
    s3_config = data_dir / "s3-identities.json"
    _write_s3_identities(s3_config, access_key, secret_key)
    endpoints: list[S3Endpoint] = []

    def start() -> ManagedProcess:
        ports = _weed_ports()
        endpoint = S3Endpoint(f"http://{LOOPBACK}:{ports['s3.port']}", access_key, secret_key)
        endpoints[:] = [endpoint]
        return ManagedProcess(
            "seaweedfs",
            _weed_argv(binary, data_dir, ports, s3_config),
            log_path=data_dir / "weed.log",
            ready_check=_s3_ready(endpoint),
            stop_signal=signal.SIGINT,
            stop_timeout_s=5.0,
            cleanup=_weed_socket_cleanup(ports),
            cwd=data_dir,
        )

    proc = _start_with_port_retry(start, auto_ports=True, timeout_s=timeout_s)
    return proc, endpoints[0]
