"""The local-directory store: the embedded default, one file per key, atomic renames."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import quote_from_bytes, unquote, urlsplit

from infra.store.interface import (
    CHUNK_SIZE,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    SizedKeys,
    StoreError,
    copy_hashing,
    is_temp_key,
    temp_key_for,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """``syncfs`` is not in the os module (Linux-only); the C library has it. Loaded on
    the first ``sync``, not at import."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def write_atomically(path: Path, writer: Callable[[IO[bytes]], T], fsync: bool = True) -> T:
    """Run ``writer(fileobj)`` on a temp file beside ``path`` and rename it into place.

    Beside, not in /tmp, so os.replace stays a same-filesystem atomic rename.
    ``fsync=False``: the caller makes it durable later (:meth:`LocalStore.sync`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_key_for(path.name))
    try:
        with open(tmp, "wb") as fh:
            result = writer(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def write_bytes_atomically(path: str, data: bytes, fsync: bool = True) -> None:
    """``write_atomically`` for bytes already in memory, on the os level.

    An import writes thousands of small objects: this path spends the few syscalls
    an atomic, durable write needs (create, write, fsync, close, rename) and no
    more. The parent directory is created only when the create says it is missing
    (no mkdir per object), and no file object or ``Path`` is built.
    """
    tmp = f"{path}.tmp-{os.urandom(16).hex()}"  # what temp_key_for makes, without a UUID
    try:
        fd = os.open(tmp, _CREATE, 0o666)
    except FileNotFoundError:
        _make_parent(path)
        fd = os.open(tmp, _CREATE, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _make_parent(path: str) -> None:
    """The directory ``path`` goes in: one mkdir when only it is missing (a new case of
    an import), ``makedirs`` (a stat per level first) otherwise."""
    parent = os.path.dirname(path)
    try:
        os.mkdir(parent)
    except FileExistsError:
        pass  # made meanwhile (another writer); a file there fails the create after
    except FileNotFoundError:
        os.makedirs(parent, exist_ok=True)


class LocalStore:
    """A directory on disk; the embedded default and the reference for the contract."""

    def __init__(self, root: Path) -> None:
        self._fsync = True
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_str = str(self.root).rstrip("/")  # "" for the file-system root
        self._root_uri = self.root.as_uri().rstrip("/")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def unsynced(self) -> LocalStore:
        """This store, its writes not flushed to disk one by one: :meth:`sync` makes them
        durable together. One fsync per object cost an import of small images twice
        its header reads (bench_import); one ``syncfs`` costs one journal commit. The
        caller records nothing that names the objects (a manifest) before ``sync``."""
        view = copy.copy(self)
        view._fsync = False
        return view

    def sync(self) -> None:
        """Everything written to the store's file system so far is on disk (``syncfs``;
        ``sync`` where the C library lacks it)."""
        fd = os.open(self._root_str or "/", os.O_RDONLY)
        try:
            syncfs = getattr(_libc(), "syncfs", None)
            if syncfs is None or syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _fspath(self, key: str) -> str:
        """``_path`` as a string, joined as text: a valid key has no empty, ``.`` or
        ``..`` segment and no backslash, so this is the path ``_path`` builds."""
        return f"{self._root_str}/{validate_key(key)}"

    def _info(self, key: str, size: int, sha256: str) -> ObjectInfo:
        return ObjectInfo(key=key, size=size, sha256=sha256, uri=self.uri(key))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  *, sha256: str | None = None) -> ObjectInfo:
        path = self._fspath(key)
        with _os_errors(key, reading=False):
            write_bytes_atomically(path, data, self._fsync)
        return self._info(key, len(data), sha256 or hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        dest = self._path(key)
        with open(path, "rb") as src, _os_errors(key, reading=False):
            size, digest = write_atomically(dest, lambda fh: copy_hashing(src, fh), self._fsync)
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

    def list_sizes(self, prefix: str) -> SizedKeys:
        """``list`` with each object's size in bytes (a file gone meanwhile is left out)."""
        out = []
        for key in self.list(prefix):
            try:
                out.append((key, self._path(key).stat().st_size))
            except OSError:
                continue
        return out

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
        """``Path.as_uri`` of the object's path, from the root's URI: percent-encoding
        goes byte by byte, so the root's part and the key's part encode apart."""
        return f"{self._root_uri}/{quote_from_bytes(os.fsencode(validate_key(key)))}"

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
