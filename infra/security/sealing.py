"""Sealed KV records: the secret buckets trust only what the services wrote.

NATS permissions keep the on-call identity from *reading* the buckets that
hold API keys, inbound event secrets and webhook subscriptions, but they
cannot stop a client of the same account from *writing* into them: the server
checks neither the reply subject of a publish nor a push consumer's deliver
subject against permissions, so a crafted publish or consumer can land any
bytes under ``$KV.apikeys.<id>``. A forged API-key record would be a key for
any tenant. So the services seal each record they write with an HMAC-SHA256
under a key only they hold (``RADTRAIN_SECRETS_SEAL_KEY``, a file), bound to
the bucket and the record's key; a record that does not verify reads as
absent (and is logged), so a forgery is at worst a denial of service.

Written by hand on ``hmac``/``hashlib`` because the whole need is one MAC
over bytes; a crypto library would add a dependency for two calls.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from infra.bus.connection import uses_local_identity
from infra.settings import Settings

PREFIX = b"sealed:v1:"
KEY_BYTES = 32
LOCAL_KEY_FILE = "secrets-seal.key"
"""Where ``radtrain up`` keeps the embedded stack's key (``<data_dir>/nats/``, 0600)."""


class SealError(ValueError):
    """The record is not sealed with our key: forged, corrupted or written before sealing."""


class Sealer:
    """Seals and opens the records of one bucket."""

    def __init__(self, key: bytes, bucket: str) -> None:
        if len(key) < 16:
            raise ValueError("the seal key must have at least 16 bytes")
        self._key = key
        self._bucket = bucket.encode()

    def _mac(self, record_key: str, data: bytes) -> bytes:
        msg = self._bucket + b"\0" + record_key.encode() + b"\0" + data
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest().encode()

    def seal(self, record_key: str, data: bytes) -> bytes:
        return PREFIX + self._mac(record_key, data) + b":" + data

    def open(self, record_key: str, sealed: bytes) -> bytes:
        """The record's bytes; :class:`SealError` unless our key sealed them for this key."""
        if not sealed.startswith(PREFIX):
            raise SealError("record is not sealed")
        mac, sep, data = sealed[len(PREFIX):].partition(b":")
        if not sep or not hmac.compare_digest(mac, self._mac(record_key, data)):
            raise SealError("record seal does not verify")
        return data


def local_key_path(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "nats" / LOCAL_KEY_FILE


def load_seal_key(settings: Settings) -> bytes | None:
    """The key from ``secrets_seal_key``; else, for a process that runs as the local
    stack's services identity (a CLI command in the stack's folder), the stack's key file;
    ``None``: records are written and read unsealed (a deployment without a key)."""
    path = settings.secrets_seal_key or local_key_path(settings)
    if settings.secrets_seal_key is None and not (
            uses_local_identity(settings) and path.is_file()):
        return None
    try:
        raw = path.read_text(encoding="ascii").strip()
        return bytes.fromhex(raw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"RADTRAIN_SECRETS_SEAL_KEY: cannot read a hex key from {path}: "
                         f"{exc}") from None


def ensure_local_key(settings: Settings) -> Path:
    """Create the embedded stack's key once (0600); reuse it afterwards."""
    path = local_key_path(settings)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(secrets.token_hex(KEY_BYTES) + "\n", encoding="ascii")
    return path
