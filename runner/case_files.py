"""A case's files as local paths for the decoders (runner/data.py, runner/decode_pool.py).

The local store's own files are read where they lie: copying each image first (and
fsyncing the copy, as the store's atomic writes do) cost more than decoding it. Any
other store's files are downloaded into a temporary directory, a couple of chunks of
cases ahead of the decoders, by threads (I/O). A missing or invalid key is that case's
``CaseReadError``; an unreachable store is a ``TransientError`` that stops the build.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from imaging.reader import CaseReadError
from infra.errors import TransientError
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from runner.decode_pool import CaseJob
from schemas.dataset import Case

Locate = Callable[[Case, int], CaseJob]


def label_of(case: Case) -> str:
    return f"{case.case_id} ({case.images[len(case.images) // 2]})"


def fetch(store: ObjectStore, key: str, local: Path, label: str, what: str) -> Path:
    try:
        return store.get_file(key, local)
    except ObjectNotFound as exc:
        raise CaseReadError(label, f"{what} not found in the store") from exc
    except InvalidKey as exc:
        raise CaseReadError(label, f"invalid {what} key ({exc})") from exc
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", f"reading {key}: {exc}") from exc


def in_place(store: ObjectStore, key: str, label: str, what: str) -> Path:
    """The local store's own file for ``key``: read where it lies, never copied."""
    try:
        path = Path(url2pathname(urlsplit(store.uri(key)).path))
    except InvalidKey as exc:
        raise CaseReadError(label, f"invalid {what} key ({exc})") from exc
    if not path.is_file():
        raise CaseReadError(label, f"{what} not found in the store")
    return path


def locate(case: Case, index: int, *, dataset_id: str, store: ObjectStore, tmp: Path,
           plan: dict[str, list[str]] | None = None, copy: bool = True) -> CaseJob:
    """The middle image of the case's stack (the 2-D networks see one slice), and its mask;
    with 2.5D input (``plan``, runner/slices.py) its previous and next slice too. Files
    of a local store are used in place (``copy`` False); others are downloaded to ``tmp``."""
    label = label_of(case)
    keys = (plan or {}).get(case.case_id) or [case.images[len(case.images) // 2]]
    if copy:
        def get(key: str, name: str, what: str) -> Path:
            return fetch(store, f"datasets/{dataset_id}/{key}", tmp / name, label, what)
    else:
        def get(key: str, name: str, what: str) -> Path:
            return in_place(store, f"datasets/{dataset_id}/{key}", label, what)
    images = tuple(get(key, f"{case.case_id}.{i}.img", "image") for i, key in enumerate(keys))
    mask = get(case.mask, f"{case.case_id}.mask", "mask") if case.mask is not None else None
    return CaseJob(index, label, images, mask, owned=copy)


def located(chunks: list[range], cases: list[Case], find: Locate,
            io: ThreadPoolExecutor | None, errors: dict[int, str]) -> Iterator[list[CaseJob]]:
    """Each chunk's jobs, its files downloaded (``io``) a couple of chunks ahead or
    located at once; a case whose file is missing is an error, not a job."""
    def start(chunk: range) -> list[Future[CaseJob]]:
        if io is not None:
            return [io.submit(find, cases[i], i) for i in chunk]
        return [_now(find, cases[i], i) for i in chunk]

    ahead = deque(start(c) for c in chunks[:2])
    for k in range(len(chunks)):
        futures = ahead.popleft()
        if k + 2 < len(chunks):
            ahead.append(start(chunks[k + 2]))
        jobs = []
        for i, fut in zip(chunks[k], futures, strict=True):
            try:
                jobs.append(fut.result())
            except CaseReadError as exc:
                errors[i] = exc.message
        yield jobs


def _now(find: Locate, case: Case, index: int) -> Future[CaseJob]:
    done: Future[CaseJob] = Future()
    try:
        done.set_result(find(case, index))
    except CaseReadError as exc:
        done.set_exception(exc)
    return done
