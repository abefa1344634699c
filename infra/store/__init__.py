"""Object store: one small interface, a local-directory and an S3 implementation.

Every artifact (datasets, checkpoints, models, plots) goes through this module
so that the rest of the system never cares where bytes live (DESIGN.md §5).
Two guarantees matter to callers:

* writes are atomic: an object is written under a temporary key and then
  renamed (local) or copied (S3), so a reader sees the whole object or none;
* the sha256 of what was written is returned, so it can be put in events.

The interface is synchronous on purpose (boto3 is); async code calls it through
``asyncio.to_thread``. ``S3Store`` lives in ``infra.store.s3`` so that importing
this module does not pull in boto3; ``from infra.store import S3Store`` still works.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from infra.settings import Settings
    from infra.store.s3 import S3Store

__all__ = [
    "CHUNK_SIZE",
    "InvalidKey",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "StoreUnavailable",
    "is_temp_key",
    "open_store",
    "temp_key_for",
    "validate_key",
]

CHUNK_SIZE = 1024 * 1024
MAX_KEY_BYTES = 1024
T = TypeVar("T")
_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}$")


class StoreError(Exception):
    """Base of every store failure, so callers can catch one thing."""


class ObjectNotFound(StoreError):
    """The key does not exist; retrying will not help."""


class StoreUnavailable(StoreError):
    """The backend could not be reached or kept failing within the retry budget."""


class InvalidKey(StoreError, ValueError):
    """A key that could escape the store root or that S3 and a filesystem disagree on."""


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
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
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

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_file(self, key: str, path: Path) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

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


def write_atomically(path: Path, writer: Callable[[IO[bytes]], T]) -> T:
    """Run ``writer(fileobj)`` on a temp file beside ``path`` and rename it into place.

    Beside, not in /tmp, so os.replace stays a same-filesystem atomic rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_key_for(path.name))
    try:
        with open(tmp, "wb") as fh:
            result = writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


class LocalStore:
    """A directory on disk; the embedded default and the reference for the contract."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _info(self, key: str, size: int, sha256: str) -> ObjectInfo:
        return ObjectInfo(key=key, size=size, sha256=sha256, uri=self.uri(key))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        path = self._path(key)
        with _os_errors(key, reading=False):
            write_atomically(path, lambda fh: fh.write(data))
        return self._info(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        dest = self._path(key)
        with open(path, "rb") as src, _os_errors(key, reading=False):
            size, digest = write_atomically(dest, lambda fh: copy_hashing(src, fh))
        return self._info(key, size, digest)

    def get_bytes(self, key: str) -> bytes:
        with _os_errors(key, reading=True):
            return self._path(key).read_bytes()

    def get_file(self, key: str, path: Path) -> Path:
        with _os_errors(key, reading=True):
            src = open(self._path(key), "rb")  # closed by the with just below
        with src, _os_errors(key, reading=False):
            write_atomically(Path(path), lambda fh: shutil.copyfileobj(src, fh, CHUNK_SIZE))
        return Path(path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by string
        # prefix, which is what S3 does with a prefix that ends mid-segment.
        base_dir = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not base_dir.is_dir():
            return []
        keys = (k for k in self._walk(base_dir) if k.startswith(prefix) and not is_temp_key(k))
        return sorted(keys)

    def _walk(self, base: Path) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                yield (rel / name).as_posix() if rel.parts else name

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors(key, reading=False):
            try:
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                pass  # only "deeper" keys exist under this name: nothing to delete, as on S3

    def presign(self, key: str, expires_s: int = 3600) -> str:
        """A local file needs no signature: the file:// URI is the download link."""
        return self.uri(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidKey(f"{uri!r} is not a file:// URI of {self!r}")
        path = Path(unquote(parts.path))
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            raise InvalidKey(f"{uri!r} is outside {self!r}") from None
        return validate_key(rel.as_posix())


@contextmanager
def _os_errors(key: str, *, reading: bool) -> Iterator[None]:
    """Map filesystem errors to store errors so callers handle both backends alike."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        if reading:
            raise ObjectNotFound(f"object {key!r} not found") from exc
        raise StoreError(f"object {key!r}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"object {key!r}: {exc}") from exc


def open_store(settings: Settings, *, ensure_bucket: bool = True) -> ObjectStore:
    """Build the store the settings ask for; with S3, make sure the bucket exists."""
    if settings.store_backend == "local":
        return LocalStore(settings.store_dir)
    from infra.store.s3 import S3Store

    secret = settings.s3_secret_access_key
    store = S3Store(
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key_id,
        secret_key=secret.get_secret_value() if secret is not None else None,
        retry_budget_s=settings.s3_retry_budget_s,
    )
    if ensure_bucket:
        store.ensure_bucket()
    return store


def __getattr__(name: str) -> Any:
    # Lazy, so that importing infra.store does not import boto3.
    if name == "S3Store":
        from infra.store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
