"""The test session's NATS server runs with authentication (DESIGN.md §10).

``services`` and ``oncall`` are user+password identities (their URLs carry the
credentials, so ``Settings(nats_url=nats_server)`` just works); upstream users
are NKeys issued on demand by :meth:`NatsUsers.add_upstream`, which re-renders
the auth file and reloads the server (no restart).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from radtrain.servers.nats import ManagedProcess, start_nats
from radtrain.servers.nats_auth import NatsAuthDir, NatsUser


@dataclass(frozen=True)
class UpstreamCreds:
    """What an upstream system is given: where, who, and the one subject it may use."""

    url: str
    """Server URL without credentials."""
    user: str
    seed_file: Path | None
    password: str | None
    inbox_prefix: str
    subject: str
    tenant: str

    def connect_kwargs(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"inbox_prefix": self.inbox_prefix}
        if self.seed_file is not None:
            opts["nkeys_seed"] = str(self.seed_file)
        else:
            opts.update(user=self.user, password=self.password)
        return opts

    async def connect(self, **kwargs: Any) -> Client:
        """Connected as this user (no reconnects: a refusal must surface at once)."""
        opts = {"allow_reconnect": False, "max_reconnect_attempts": 0, "connect_timeout": 5.0,
                **self.connect_kwargs(), **kwargs}
        return await nats.connect(self.url, **opts)


def _with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


class NatsUsers:
    """The session server: its URLs per identity, and upstream users on demand."""

    def __init__(self, dir: Path, proc: ManagedProcess, url: str, passwords: dict[str, str]
                 ) -> None:
        self.dir = dir
        self.proc = proc
        self.url = url
        """Without credentials: an unauthenticated client is refused."""
        self._passwords = passwords
        self._auth = NatsAuthDir(dir)

    @property
    def services_url(self) -> str:
        return _with_credentials(self.url, "services", self._passwords["services"])

    @property
    def oncall_url(self) -> str:
        """Connect with ``inbox_prefix="_INBOX_oncall"``, as
        ``connect_options(settings, identity="oncall")`` does."""
        return _with_credentials(self.url, "oncall", self._passwords["oncall"])

    @property
    def oncall_password(self) -> str:
        return self._passwords["oncall"]

    def add_upstream(self, tenant: str, name: str | None = None) -> UpstreamCreds:
        """A new NKey user bound to ``tenant``; the server reloads before this returns."""
        issued = self._auth.issue_upstream(tenant, name)
        if not self._auth.apply():
            raise RuntimeError(f"nats-server in {self.dir} did not reload")
        return UpstreamCreds(url=self.url, user=issued.user, seed_file=issued.seed_file,
                             password=None, inbox_prefix=issued.inbox_prefix,
                             subject=issued.subject, tenant=tenant)

    def stop(self) -> None:
        self.proc.stop()


def start_authenticated_nats(dir: Path, **kwargs: Any) -> NatsUsers:
    """nats-server with services + oncall password users (``kwargs`` go to start_nats)."""
    auth = NatsAuthDir(dir)
    passwords = {role: secrets.token_urlsafe(18) for role in ("services", "oncall")}
    for role in ("services", "oncall"):
        auth.put_user(NatsUser(name=role, role=role, password=passwords[role]))  # type: ignore[arg-type]
    auth.render()
    proc, url = start_nats(auth.dir, auth_file=auth.auth_file, **kwargs)
    return NatsUsers(auth.dir, proc, url, passwords)
