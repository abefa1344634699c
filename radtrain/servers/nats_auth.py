"""NATS identities and what each may do (DESIGN.md §10).

Security model: static users with subject permissions, in two accounts.

- Account ``RADTRAIN`` (JetStream: every stream and KV bucket):
  - ``services``: everything (gateway, handlers, runner, ``infra apply``, ``keys``).
  - ``oncall``: everything except the secret KV buckets (``apikeys``, ``tenants``,
    ``webhooks``): every JetStream API subject naming their streams, their
    ``$KV.`` subjects, creating/updating/restoring streams (a new stream sourcing
    a secret bucket would copy it), and the services' reply subjects
    ``_INBOX.>`` (answers to the services' KV reads travel there). On-call tools
    connect with ``inbox_prefix="_INBOX_oncall"``.
- Account ``UPSTREAM``, one user per upstream system, bound to one tenant:
  publish only ``inbound.<tenant>.task.requested``, subscribe only its own reply
  subjects ``_INBOX_<user>.>`` (the client connects with that ``inbox_prefix``).
  ``RADTRAIN`` exports ``inbound.*.task.requested`` as a service that
  ``UPSTREAM`` imports: the message reaches the ``INBOUND`` stream and the
  JetStream ack comes back. Why a second account: within one account the
  server sends the ack to whatever reply subject the publisher names, so a user
  allowed to publish only on its inbound subject could still have acks written
  to ``$KV.apikeys.<id>`` or ``tasks.…``; across a service import the reply is
  remapped and the ack can only land in ``UPSTREAM``, where nothing listens.

Local identities are NKeys: the seed stays in a 0600 file, the server only
knows the public key. :class:`NatsAuthDir` keeps them in ``<data_dir>/nats/``
(``services.nk``, ``oncall.nk``, ``upstream/<user>.nk``, the registry
``users.json``) and renders ``auth.conf``, which ``nats-server.conf`` includes:
re-render it and reload the server (:func:`reload_nats`) and a new upstream
user works without a restart.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import nkeys

from infra.bus.topology import INBOUND_SUBJECTS, KV_APIKEYS, KV_TENANTS, KV_WEBHOOKS
from radtrain.servers.nats import AUTH_FILE, NATS_LOG, NATS_PID, ServerStartError
from schemas.common import is_identifier

__all__ = [
    "AUTH_FILE",
    "SECRET_BUCKETS",
    "IssuedUpstream",
    "NatsAuthDir",
    "NatsUser",
    "Permissions",
    "adopt_global_account_data",
    "new_user_seed",
    "permissions_for",
    "public_key_of",
    "reload_nats",
    "render_accounts",
    "render_user",
    "secret_subjects",
    "upstream_inbox_prefix",
    "upstream_subject",
]

Role = Literal["services", "oncall", "upstream"]
SECRET_BUCKETS = (KV_APIKEYS, KV_TENANTS, KV_WEBHOOKS)
ROUTE_USER = "route"
ROUTE_SECRET = "route.secret"
"""Password of the cluster routes (radtrain/servers/nats_cluster.py), beside the seeds."""
MAIN_ACCOUNT = "RADTRAIN"
UPSTREAM_ACCOUNT = "UPSTREAM"
STREAM_ADMIN = ("$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>",
                "$JS.API.STREAM.RESTORE.>")
"""Denied to on-call: a stream that mirrors or sources a secret bucket would copy it."""


def upstream_subject(tenant: str) -> str:
    """The one subject an upstream user of ``tenant`` may publish on."""
    return INBOUND_SUBJECTS.replace("*", tenant, 1)


def upstream_inbox_prefix(user: str) -> str:
    """Reply subjects of an upstream user: ``_INBOX_<user>`` (its ``inbox_prefix``)."""
    return f"_INBOX_{user}"


def secret_subjects() -> list[str]:
    """Every subject through which a secret bucket can be read, written or administered.

    The stream name sits at token 5 (``STREAM.INFO``, ``DIRECT.GET``,
    ``CONSUMER.CREATE`` ...) or token 6 (``STREAM.MSG.GET``,
    ``CONSUMER.DURABLE.CREATE``, ``CONSUMER.MSG.NEXT`` ...), alone or followed
    by more tokens; ``$JS.<kind>.KV_x.>`` covers acks and flow control.
    """
    out: list[str] = []
    for bucket in SECRET_BUCKETS:
        stream = f"KV_{bucket}"
        out += [f"$JS.API.*.*.{stream}", f"$JS.API.*.*.{stream}.>",
                f"$JS.API.*.*.*.{stream}", f"$JS.API.*.*.*.{stream}.>",
                f"$JS.*.{stream}.>", f"$KV.{bucket}.>"]
    return out


@dataclass(frozen=True)
class Permissions:
    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class NatsUser:
    """One entry of the registry and of the server's users list."""

    name: str
    role: Role
    tenant: str | None = None
    nkey: str | None = None
    """Public NKey (``U...``); the seed never leaves its file."""
    password: str | None = None
    """For user+password identities (plaintext or a bcrypt hash); tests use them."""
    created_at: str = ""

    def __post_init__(self) -> None:
        if not is_identifier(self.name):
            raise ValueError(f"NATS user name {self.name!r} must be an identifier")
        if (self.nkey is None) == (self.password is None):
            raise ValueError(f"NATS user {self.name!r} needs exactly one of nkey, password")
        if self.role == "upstream" and (self.tenant is None or not is_identifier(self.tenant)):
            raise ValueError(f"upstream user {self.name!r} needs a valid tenant")
        if self.role == "upstream" and self.name in ("services", "oncall"):
            raise ValueError(f"{self.name!r} is the name of a local identity")


def permissions_for(user: NatsUser) -> Permissions | None:
    """None: no restriction (services)."""
    if user.role == "services":
        return None
    if user.role == "oncall":
        secret = tuple(secret_subjects())
        return Permissions(publish_allow=(">",), subscribe_allow=(">",),
                           publish_deny=(*secret, *STREAM_ADMIN, "_INBOX.>"),
                           subscribe_deny=(*secret, "_INBOX.>"))
    assert user.tenant is not None
    return Permissions(publish_allow=(upstream_subject(user.tenant),),
                       subscribe_allow=(f"{upstream_inbox_prefix(user.name)}.>",))


def _strings(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _user_block(user: NatsUser) -> list[str]:
    what = f"{user.role} {user.name}" + (f" (tenant {user.tenant})" if user.tenant else "")
    cred = (f"nkey: {json.dumps(user.nkey)}" if user.nkey is not None
            else f"user: {json.dumps(user.name)}, password: {json.dumps(user.password)}")
    perms = permissions_for(user)
    if perms is None:
        return [f"# {what}", f"{{{cred}}}"]
    return [
        f"# {what}",
        f"{{{cred}, permissions: {{",
        f"  publish: {{allow: {_strings(perms.publish_allow)}"
        + (f", deny: {_strings(perms.publish_deny)}" if perms.publish_deny else "") + "}",
        f"  subscribe: {{allow: {_strings(perms.subscribe_allow)}"
        + (f", deny: {_strings(perms.subscribe_deny)}" if perms.subscribe_deny else "") + "}",
        "}}",
    ]


def render_user(user: NatsUser) -> str:
    """One entry of an account's ``users`` list, for a server configured elsewhere."""
    return "\n".join(_user_block(user)) + "\n"


def render_accounts(users: Iterable[NatsUser]) -> str:
    """The server's ``accounts`` block (nats-server config syntax): services and
    on-call in ``RADTRAIN``, upstream users in ``UPSTREAM`` (see the module doc)."""
    users = list(users)
    inbound = json.dumps(INBOUND_SUBJECTS)
    lines = ["# Written by radtrain (radtrain/servers/nats_auth.py); edits are lost.",
             "accounts {", f"  {MAIN_ACCOUNT}: {{", "    jetstream: enabled", "    users: ["]
    for user in users:
        if user.role != "upstream":
            lines += ["      " + line for line in _user_block(user)]
    lines += ["    ]", f"    exports: [{{service: {inbound}}}]", "  }",
              f"  {UPSTREAM_ACCOUNT}: {{", "    users: ["]
    for user in users:
        if user.role == "upstream":
            lines += ["      " + line for line in _user_block(user)]
    lines += ["    ]",
              f"    imports: [{{service: {{account: {MAIN_ACCOUNT}, subject: {inbound}}}}}]",
              "  }", "}"]
    return "\n".join(lines) + "\n"


def adopt_global_account_data(nats_dir: Path) -> bool:
    """Move JetStream data written before accounts existed (``jetstream/$G``) to
    ``jetstream/RADTRAIN``, so a stack started by an older radtrain keeps its streams."""
    old, new = nats_dir / "jetstream" / "$G", nats_dir / "jetstream" / MAIN_ACCOUNT
    if old.is_dir() and not new.exists():
        old.rename(new)
        return True
    return False


# --- NKeys ------------------------------------------------------------------------


def new_user_seed() -> bytes:
    """A fresh NKey user seed (``SU...``)."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key_of(seed: bytes) -> str:
    return str(nkeys.from_seed(bytearray(seed.strip())).public_key.decode())


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, not even briefly)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --- the local folder ------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedUpstream:
    user: str
    tenant: str
    public_key: str
    seed_file: Path
    subject: str
    inbox_prefix: str


class NatsAuthDir:
    """Identities of a local server in one folder (``<data_dir>/nats``)."""

    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir).resolve()

    @property
    def registry_path(self) -> Path:
        return self.dir / "users.json"

    @property
    def auth_file(self) -> Path:
        return self.dir / AUTH_FILE

    def seed_path(self, name: str, role: Role) -> Path:
        folder = self.dir / "upstream" if role == "upstream" else self.dir
        return folder / f"{name}.nk"

    @property
    def cluster_dir(self) -> Path:
        """Node folders of a local cluster (``cluster/n1`` ...), which include ``auth.conf``."""
        return self.dir / "cluster"

    def route_credentials(self) -> tuple[str, str]:
        """User and password the cluster nodes present to each other (made once, 0600)."""
        path = self.dir / ROUTE_SECRET
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24).encode() + b"\n")
        return ROUTE_USER, path.read_text(encoding="utf-8").strip()

    def users(self) -> list[NatsUser]:
        if not self.registry_path.exists():
            return []
        raw = json.loads(self.registry_path.read_text(encoding="utf-8"))
        return [NatsUser(**u) for u in raw.get("users", [])]

    def _save(self, users: list[NatsUser]) -> None:
        body = {"users": [{k: v for k, v in asdict(u).items() if v is not None} for u in users]}
        _write_private(self.registry_path, (json.dumps(body, indent=2) + "\n").encode())

    def put_user(self, user: NatsUser) -> None:
        """Add ``user``, or replace the one with its name."""
        users = [u for u in self.users() if u.name != user.name]
        self._save([*users, user])

    def ensure_local_identities(self) -> None:
        """Create the ``services`` and ``oncall`` NKeys on first use; reuse them after."""
        known = {u.name: u for u in self.users()}
        for role in ("services", "oncall"):
            path = self.seed_path(role, role)
            if not path.exists():
                _write_private(path, new_user_seed() + b"\n")
            public = public_key_of(path.read_bytes())
            current = known.get(role)
            if current is None or current.nkey != public or current.role != role:
                self.put_user(NatsUser(name=role, role=role, nkey=public, created_at=_now()))

    def issue_upstream(self, tenant: str, name: str | None = None) -> IssuedUpstream:
        """A new upstream user bound to ``tenant``; its seed file is written 0600."""
        name = name or f"{tenant}-{secrets.token_hex(3)}"
        if any(u.name == name for u in self.users()):
            raise ValueError(f"NATS user {name!r} exists already")
        seed = new_user_seed()
        user = NatsUser(name=name, role="upstream", tenant=tenant, nkey=public_key_of(seed),
                        created_at=_now())  # validates name and tenant before anything is written
        path = self.seed_path(name, "upstream")
        _write_private(path, seed + b"\n")
        self.put_user(user)
        assert user.nkey is not None
        return IssuedUpstream(user=name, tenant=tenant, public_key=user.nkey, seed_file=path,
                              subject=upstream_subject(tenant),
                              inbox_prefix=upstream_inbox_prefix(name))

    def render(self) -> Path:
        """Write ``auth.conf`` (the ``accounts`` block) from the registry."""
        order = {"services": 0, "oncall": 1, "upstream": 2}
        users = sorted(self.users(), key=lambda u: (order[u.role], u.created_at, u.name))
        _write_private(self.auth_file, render_accounts(users).encode())
        return self.auth_file

    def apply(self, *, timeout_s: float = 10.0) -> bool:
        """Render ``auth.conf`` and reload the server running from this folder.

        True when a running server (or cluster node) applied it; False when none
        runs (it will read the file when it starts).
        """
        self.render()
        applied = reload_nats(self.dir, timeout_s=timeout_s)
        for node in sorted(p for p in self.cluster_dir.glob("*") if p.is_dir()):
            applied = reload_nats(node, timeout_s=timeout_s) or applied
        return applied


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- applying a new auth file --------------------------------------------------------


def _is_nats_server(pid: int) -> bool:
    """Guard against a stale pid file naming another process now (Linux; elsewhere trust it)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True
    try:
        return b"nats-server" in cmdline.read_bytes()
    except OSError:
        return False


def reload_nats(data_dir: Path, *, timeout_s: float = 10.0) -> bool:
    """Make the server running from ``data_dir`` re-read its config (SIGHUP).

    Returns False when none runs (no pid file, or a stale one); raises
    :class:`ServerStartError` when the server rejects the new config. Waits for
    the log line that says the reload was applied.
    """
    data_dir = Path(data_dir).resolve()
    try:
        pid = int((data_dir / NATS_PID).read_text().strip())
    except (OSError, ValueError):
        return False
    if not _is_nats_server(pid):
        return False
    log_path = data_dir / NATS_LOG
    start = log_path.stat().st_size if log_path.exists() else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
            if "Reloaded server configuration" in text:
                return True
            failed = [line for line in text.splitlines() if "Failed to reload" in line]
            if failed:  # other [ERR] lines (a client's failed login) are not about the reload
                raise ServerStartError(f"nats-server (pid {pid}) refused the new config: "
                                       f"{failed[0]}")
        time.sleep(0.05)
    raise ServerStartError(f"nats-server (pid {pid}) did not reload within {timeout_s:g}s")
