"""How every process connects to NATS: credentials and TLS from the settings.

One function, :func:`connect_options`, turns the ``nats_*`` settings into the
keyword arguments of ``nats.connect``; the services (``infra.bus.topology.connect``),
the CLI (``radtrain.cli.nats_session``) and the tests all use it, so a setting
means the same everywhere (DESIGN.md §10).

Credentials, first match wins:

1. ``nats_creds``: a ``.creds`` file (JWT + NKey seed, operator mode);
2. ``nats_nkey_seed``: a file holding an NKey user seed (``SU...``);
3. ``nats_user`` + ``nats_password``;
4. ``user:password@`` in ``nats_url`` (nats-py reads it from the URL);
5. otherwise the local stack's seed file ``<data_dir>/nats/<identity>.nk``
   (written by ``radtrain up``), when it exists.

TLS: ``nats_tls_ca`` (the CA that signed the server's certificate) and, for
mutual TLS, ``nats_tls_cert`` + ``nats_tls_key``. nats-py upgrades to TLS when
the server requires it; the server must then be configured to require it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from infra.settings import Settings

__all__ = [
    "DEFAULT_INBOX_PREFIX",
    "Identity",
    "NatsConfigError",
    "connect_options",
    "inbox_prefix_for",
    "local_seed_path",
    "mask_url",
]

Identity = Literal["services", "oncall"]
DEFAULT_INBOX_PREFIX = "_INBOX"
"""The services' inbox prefix (nats-py's default); other identities must not read it."""


class NatsConfigError(ValueError):
    """A NATS credential or TLS setting is inconsistent, or names an unreadable file."""


def inbox_prefix_for(identity: str) -> str:
    """Each non-services identity has its own reply subjects: ``_INBOX_<identity>``.

    The server lets the on-call identity subscribe to everything except the
    services' ``_INBOX.>``, where answers carrying secret KV values travel.
    """
    return DEFAULT_INBOX_PREFIX if identity == "services" else f"_INBOX_{identity}"


def local_seed_path(settings: Settings, identity: str) -> Path:
    """Seed file of a local-stack identity: ``<data_dir>/nats/<identity>.nk``."""
    return settings.data_dir / "nats" / f"{identity}.nk"


def mask_url(url: str) -> str:
    """``nats://user:secret@host:4222`` -> ``nats://user:***@host:4222`` (for logs and
    output; a token ``nats://tok@host`` -> ``nats://***@host``)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    # A user name alone is a token (nats-py sends it as auth_token): a secret too.
    cred = f"{parts.username or ''}:***" if parts.password is not None else "***"
    return urlunsplit((parts.scheme, f"{cred}@{host}", parts.path, parts.query, parts.fragment))


def _url_has_credentials(url: str) -> bool:
    return any("@" in urlsplit(u.strip()).netloc for u in url.split(","))


def _readable(path: Path, setting: str) -> str:
    """The path as nats-py wants it, after checking it can be read (error names the setting)."""
    env = f"RADTRAIN_{setting.upper()}"
    if not path.is_file():
        raise NatsConfigError(f"setting {setting} ({env}): {path} is not a file")
    if not os.access(path, os.R_OK):
        raise NatsConfigError(f"setting {setting} ({env}): {path} is not readable")
    return str(path)


def _credentials(settings: Settings, identity: str) -> dict[str, Any]:
    if settings.nats_creds is not None and settings.nats_nkey_seed is not None:
        raise NatsConfigError("set only one of nats_creds and nats_nkey_seed")
    if (settings.nats_user is None) != (settings.nats_password is None):
        raise NatsConfigError("nats_user and nats_password must be set together")
    if settings.nats_creds is not None:
        return {"user_credentials": _readable(settings.nats_creds, "nats_creds")}
    if settings.nats_nkey_seed is not None:
        return {"nkeys_seed": _readable(settings.nats_nkey_seed, "nats_nkey_seed")}
    if settings.nats_user is not None and settings.nats_password is not None:
        return {"user": settings.nats_user, "password": settings.nats_password.get_secret_value()}
    if _url_has_credentials(settings.nats_url):
        return {}
    seed = local_seed_path(settings, identity)
    if seed.exists():
        return {"nkeys_seed": _readable(seed, "nats_identity")}
    return {}


def uses_local_identity(settings: Settings, identity: str = "services") -> bool:
    """True when no credential is configured and the local stack's seed file of
    ``identity`` would be used: this process runs as that local-stack identity."""
    explicit = (settings.nats_creds, settings.nats_nkey_seed, settings.nats_user)
    return (all(x is None for x in explicit) and not _url_has_credentials(settings.nats_url)
            and local_seed_path(settings, identity).exists())


def _tls(settings: Settings) -> ssl.SSLContext | None:
    ca, cert, key = settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key
    if ca is None and cert is None and key is None:
        return None
    if key is not None and cert is None:
        raise NatsConfigError("nats_tls_key is set but nats_tls_cert is not")
    try:
        ctx = ssl.create_default_context(
            cafile=_readable(ca, "nats_tls_ca") if ca is not None else None)
    except ssl.SSLError as exc:
        raise NatsConfigError(f"setting nats_tls_ca: {ca} is not a CA bundle: {exc}") from exc
    if cert is not None:
        certfile = _readable(cert, "nats_tls_cert")
        keyfile = _readable(key, "nats_tls_key") if key is not None else None
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            raise NatsConfigError(
                f"settings nats_tls_cert/nats_tls_key: cannot load {cert}: {exc}") from exc
    return ctx


def connect_options(settings: Settings, *, identity: Identity | None = None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (servers, credentials, TLS, inbox prefix).

    ``identity`` picks the local-stack seed file when no credential is set
    (default ``settings.nats_identity``) and the inbox prefix the server allows
    that identity. Raises :class:`NatsConfigError` naming the bad setting.
    """
    who = identity or settings.nats_identity
    opts: dict[str, Any] = {"servers": [u.strip() for u in settings.nats_url.split(",")]}
    opts.update(_credentials(settings, who))
    tls = _tls(settings)
    if tls is not None:
        # TLS before the server's INFO: otherwise a man in the middle answering "no TLS"
        # would receive CONNECT (the password, or a signature of its nonce) in clear.
        opts.update(tls=tls, tls_handshake_first=True)
    prefix = inbox_prefix_for(who)
    if prefix != DEFAULT_INBOX_PREFIX:
        opts["inbox_prefix"] = prefix
    return opts
