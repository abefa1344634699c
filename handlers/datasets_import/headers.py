"""Reading an import's image headers: in worker processes when there are many.

pydicom parses in pure Python and holds the GIL, so threads do not read
headers any faster; processes do, one per core. Only the header read
(``read_header``: the size, truncation and per-image budget checks) runs in a
worker; the decode that proves compressed data intact (``needs_decode``) stays
in the importing process, under its decode budget, so the process-wide memory
cap (imaging/budget.py) keeps meaning what it says. Each worker gets the
importing process's per-image limit, so a header refused in-process is
refused in a worker too.

Workers come from a ``forkserver`` (never ``fork``: the importing process
runs an event loop and other threads) that has imported this module once;
each import starts and stops its own small pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from handlers.datasets_import.base import Candidate, ImportOptions, rel
from handlers.datasets_import.validate import headers_of, needs_decode
from imaging.budget import DecodeBudget, default_budget, set_default_budget
from imaging.reader import CaseReadError, ImageHeader, read_header, read_image

__all__ = ["read_all", "worker_count"]

log = logging.getLogger(__name__)

Headers = list[ImageHeader] | CaseReadError
_Failure = tuple[str, str, str]
"""(source, reason, kind) of a CaseReadError: its constructor does not survive pickling."""
_CHUNK_IMAGES = 64
"""Images sent to a worker at once: large enough to amortise the round trip, small
enough that progress moves and both workers finish together."""


def worker_count(opts: ImportOptions, images: int) -> int:
    """Header processes for ``images`` images: 1 (in-process) below ``header_pool_min``.

    ``header_workers`` 0 means one per idle core: a worker on a core that other
    processes keep busy only adds its start-up and the pickling to the import.
    The importing process counts as idle: it waits while its workers read.
    """
    if images < opts.header_pool_min:
        return 1
    wanted = opts.header_workers or _idle_cores()
    return max(1, min(wanted, -(-images // _CHUNK_IMAGES)))  # no more workers than chunks


def _idle_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        busy = round(max(0.0, os.getloadavg()[0] - 1.0))  # less this process itself
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, (cores or 1) - busy)


def read_all(cands: list[Candidate], opts: ImportOptions, root: Path,
             step: Callable[[], None]) -> list[Headers]:
    """``headers_of`` for every candidate, in order; ``step()`` after each case."""
    workers = worker_count(opts, sum(len(c.images) for c in cands))
    if workers <= 1:
        out: list[Headers] = []
        for cand in cands:
            out.append(headers_of(cand, opts, root))
            step()
        return out
    results: list[Headers] = []
    try:
        _pooled(cands, opts, root, workers, results, step)
    except BrokenProcessPool as exc:
        # A worker died (killed, out of memory, or a main module that starts an
        # import unguarded by ``if __name__ == "__main__"``): finish in-process.
        log.warning("header workers failed (%s); reading the remaining %d cases in-process",
                    exc, len(cands) - len(results))
    for cand in cands[len(results):]:
        results.append(headers_of(cand, opts, root))
        step()
    return results


def _pooled(cands: list[Candidate], opts: ImportOptions, root: Path, workers: int,
            results: list[Headers], step: Callable[[], None]) -> None:
    """Append each case's headers to ``results`` in order, as the workers deliver them."""
    budget = default_budget()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    chunks = list(_chunks(cands, root))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(budget.request_bytes, budget.process_bytes,
                                       budget.wait_s)) as pool:
        done = pool.map(_read_chunk, [jobs for _, jobs in chunks],
                        [opts.max_image_bytes] * len(chunks))
        for (members, _), read in zip(chunks, done, strict=True):
            for cand, found in zip(members, read, strict=True):
                results.append(_finish(cand, found, opts, root))
                step()


def _chunks(cands: list[Candidate], root: Path
            ) -> Iterator[tuple[list[Candidate], list[list[tuple[str, str]]]]]:
    """Whole cases, about ``_CHUNK_IMAGES`` images a chunk: (cases, their (path, source)s)."""
    members: list[Candidate] = []
    jobs: list[list[tuple[str, str]]] = []
    size = 0
    for cand in cands:
        members.append(cand)
        jobs.append([(str(p), rel(root, p)) for p in cand.images])
        size += len(cand.images)
        if size >= _CHUNK_IMAGES:
            yield members, jobs
            members, jobs, size = [], [], 0
    if members:
        yield members, jobs


def _finish(cand: Candidate, found: list[ImageHeader | _Failure], opts: ImportOptions,
            root: Path) -> Headers:
    """A worker's headers of one case, decoded here where only a decode proves them;
    the first failure in image order is the case's, as in ``headers_of``."""
    out: list[ImageHeader] = []
    for path, item in zip(cand.images, found, strict=False):
        if isinstance(item, tuple):
            return CaseReadError(*item)
        if needs_decode(item, opts):
            try:
                read_image(path, max_bytes=opts.max_image_bytes, source=rel(root, path))
            except CaseReadError as exc:
                return exc
        out.append(item)
    return out


def _init_worker(request_bytes: int, process_bytes: int, wait_s: float) -> None:
    set_default_budget(DecodeBudget(request_bytes, process_bytes, wait_s))


def _read_chunk(jobs: list[list[tuple[str, str]]], max_bytes: int
                ) -> list[list[ImageHeader | _Failure]]:
    """In a worker: each case's headers, up to and including its first failure."""
    out: list[list[ImageHeader | _Failure]] = []
    for images in jobs:
        found: list[ImageHeader | _Failure] = []
        for path, source in images:
            try:
                found.append(read_header(Path(path), max_bytes=max_bytes, source=source))
            except CaseReadError as exc:
                found.append((exc.source, exc.reason, exc.kind))
                break
        out.append(found)
    return out
