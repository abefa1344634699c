"""The object store's contract (DESIGN.md §5): errors, key rules, and the interface.

Every implementation (local directory, S3) honours the same two promises:
writes are atomic (temporary key, then rename or copy; or one S3 PutObject,
itself atomic) and return the sha256 of what was written. Key validation
lives here so no user-supplied path reaches a file system or a bucket unchecked.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

CHUNK_SIZE = 1024 * 1024
MAX_KEY_BYTES = 1024
_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
"""One search per key: checked for every object an import writes."""


class StoreError(Exception):
    """Base of every store failure, so callers can catch one thing."""


class ObjectNotFound(StoreError):
    """The key does not exist; retrying will not help."""


class StoreUnavailable(StoreError):
    """The backend could not be reached or kept failing within the retry budget."""


class InvalidKey(StoreError, ValueError):
    """A key that could escape the store root or that S3 and a filesystem disagree on."""


SizedKeys = list[tuple[str, int]]
"""(key, size in bytes) of each object, sorted by key."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str
    uri: str


def validate_key(key: str) -> str:
    """Reject keys that behave differently on a filesystem and on S3, or escape the root.

    Returns the key unchanged so it can be used inline.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid object key {key!r}: empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid object key {key[:64]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL_RE.search(key):
        raise InvalidKey(f"invalid object key {key!r}: control character")
    if "\\" in key:
        raise InvalidKey(f"invalid object key {key!r}: backslash")
    if key.startswith("/"):
        raise InvalidKey(f"invalid object key {key!r}: absolute")
    for seg in key.split("/"):
        if seg == "":
            raise InvalidKey(f"invalid object key {key!r}: empty path segment")
        if seg in (".", ".."):
            raise InvalidKey(f"invalid object key {key!r}: {seg!r} segment")
    if _TEMP_RE.search(key):
        raise InvalidKey(f"invalid object key {key!r}: reserved temporary-key suffix")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix may end in '/' or in a partial segment; otherwise it obeys key rules."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def temp_key_for(key: str) -> str:
    """Temporary sibling name; its suffix is reserved so listings can hide it."""
    return f"{key}.tmp-{uuid.uuid4().hex}"


def is_temp_key(key: str) -> bool:
    return _TEMP_RE.search(key) is not None


@runtime_checkable
class ObjectStore(Protocol):
    """What every backend offers; keys are '/'-separated and checked by ``validate_key``."""

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  *, sha256: str | None = None) -> ObjectInfo:
        """Store ``data``; ``sha256``, the caller's digest of these very bytes, is then
        not computed again (an importer hashes each image once, for its key)."""
        ...

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_file(self, key: str, path: Path) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def list_sizes(self, prefix: str) -> SizedKeys: ...

    def delete(self, key: str) -> None: ...

    def presign(self, key: str, expires_s: int = 3600) -> str: ...

    def uri(self, key: str) -> str: ...

    def key_from_uri(self, uri: str) -> str: ...


def copy_hashing(src: IO[bytes], dst: IO[bytes]) -> tuple[int, str]:
    """Copy a stream while hashing it, so large files are read exactly once."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@runtime_checkable
class DeferredSync(Protocol):
    """A store whose writes may skip their own flush to disk, made durable together by
    one ``sync`` (the local store: an import's thousands of small objects)."""

    def unsynced(self) -> ObjectStore: ...

    def sync(self) -> None: ...
