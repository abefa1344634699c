"""A memory budget for decoding untrusted images, checked from the header before decoding.

A compressed DICOM of a few megabytes may declare 23,170 x 23,170 pixels: its
native pixel data just passes a 512 MiB size check, yet decoding, rescaling
(float), windowing and resizing it hold several times that at once. So the
readers estimate the peak of *every* intermediate array from the header
(:func:`decode_estimate`) and take a reservation of that many bytes before
they decode anything:

* one image whose estimate is over the per-request limit is refused
  (:class:`OverBudget`, which the readers turn into a ``too_large`` CaseReadError);
* the reservations in flight in one process never add up past the per-process
  limit: a decode waits for room, at most ``wait_s``, then :class:`DecodeBusy`
  (the gateway answers 503 with Retry-After).

The estimate is an upper bound of what the code in imaging/ allocates: a
decoder's working buffer and the native array, one float32 copy in physical
units (the rescale is done in float32, in place), the finiteness mask, and the
display path of one frame (windowing, clipping, quantising, Pillow's copy).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

MIB = 1 << 20
RENDER_BYTES_PER_VALUE = 16
"""Display path per value of one frame: float32 window (input copy, result, clip),
the uint8 quantisation temporaries and Pillow's copy; rounded up."""
DEFLATE_HEADER_BYTES = 4 * MIB
"""How much of a deflated dataset is inflated to read its header (never the pixels)."""
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
               0x7FE00009: "DoubleFloatPixelData"}


class OverBudget(ValueError):
    """Decoding this image would need more memory than one request may use."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"decoding would need about {_mib(needed)} MiB of memory, over the "
                         f"{_mib(limit)} MiB limit for one image")
        self.needed, self.limit = needed, limit


class DecodeBusy(RuntimeError):
    """The process's decoding budget stayed full for ``wait_s``: retry later."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"image decoding is at capacity; waited {wait_s:g}s")
        self.wait_s = wait_s


def _mib(n: int) -> int:
    return -(-n // MIB)


def decode_estimate(rows: int, cols: int, *, frames: int = 1, samples: int = 1,
                    bits: int = 8, file_bytes: int = 0, float_bytes: int = 4) -> int:
    """Upper bound of the bytes alive at once while one image is decoded and rendered."""
    values = rows * cols * frames * samples
    native = values * max(8, bits) // 8
    decoder = 2 * native  # the decoder's output buffer (RLE segments, inflated data, YBR->RGB)
    physical = values * float_bytes  # float32 in physical units (HU)
    finite = values  # the np.isfinite mask
    render = rows * cols * samples * RENDER_BYTES_PER_VALUE
    return file_bytes + decoder + native + physical + finite + render


class DecodeBudget:
    """Per-request and per-process limits on decoding memory (thread-safe)."""

    def __init__(self, request_bytes: int = 1 << 30, process_bytes: int = 2 << 30,
                 wait_s: float = 10.0) -> None:
        self.request_bytes = min(request_bytes, process_bytes)
        self.process_bytes = process_bytes
        self.wait_s = wait_s
        self._used = 0
        self._cond = threading.Condition()
        self._local = threading.local()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._used

    def check(self, needed: int) -> None:
        if needed > self.request_bytes:
            raise OverBudget(needed, self.request_bytes)

    @contextmanager
    def reserve(self, needed: int) -> Iterator[None]:
        """Hold ``needed`` bytes of the process budget while decoding; inside
        :meth:`scope`, held until the scope ends instead."""
        self.check(needed)
        self._acquire(needed)
        held = getattr(self._local, "held", None)
        if held is not None:
            held.append(needed)
            yield
            return
        try:
            yield
        finally:
            self._release(needed)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Keep this thread's reservations until the scope ends: a preview reserves
        once, when it decodes, for the windowing and resizing that follow too."""
        if getattr(self._local, "held", None) is not None:  # already in one
            yield
            return
        held: list[int] = []
        self._local.held = held
        try:
            yield
        finally:
            self._local.held = None
            self._release(sum(held))

    def _acquire(self, needed: int) -> None:
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self._used + needed > self.process_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBusy(self.wait_s)
                self._cond.wait(left)
            self._used += needed

    def _release(self, amount: int) -> None:
        if amount:
            with self._cond:
                self._used -= amount
                self._cond.notify_all()


@dataclass
class _Default:
    budget: DecodeBudget


_DEFAULT = _Default(DecodeBudget())


def default_budget() -> DecodeBudget:
    """The process's budget for readers not given one (handlers, runner, CLI)."""
    return _DEFAULT.budget


def set_default_budget(budget: DecodeBudget) -> None:
    """Called once by a process's start-up with the values of its settings."""
    _DEFAULT.budget = budget


# --- deflated DICOM: the header without inflating the pixels ----------------------


def is_deflated(path: Path) -> bool:
    """Whether the file's meta names the deflated transfer syntax (pydicom would
    inflate the whole dataset, pixels included, just to read its header)."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return False
    return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def deflated_header(path: Path) -> tuple[pydicom.Dataset, str | None]:
    """The elements before the pixel data of a deflated DICOM, inflating at most
    :data:`DEFLATE_HEADER_BYTES`, and the keyword of the pixel element it stopped at
    (``None``: the dataset has no pixel data, or a header too long to trust)."""
    with open(path, "rb") as fh:
        read_preamble(fh, True)
        meta = pydicom.filereader._read_file_meta_info(fh)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        head = inflater.decompress(fh.read(DEFLATE_HEADER_BYTES), DEFLATE_HEADER_BYTES)
    seen: list[int] = []

    def at_pixels(tag: object, vr: object, length: object) -> bool:
        if int(tag) in _PIXEL_TAGS:  # type: ignore[call-overload]
            seen.append(int(tag))  # type: ignore[call-overload]
            return True
        return False

    ds = read_dataset(cast(BinaryIO, DicomBytesIO(head)), is_implicit_VR=False,
                      is_little_endian=True, stop_when=at_pixels)
    ds.file_meta = meta
    return ds, _PIXEL_TAGS[seen[0]] if seen else None
