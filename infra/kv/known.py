"""What a KV writer last read or wrote: guesses that save a read before each write."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic import BaseModel

KNOWN_ENTRIES = 8192
"""Entries (counters, markers, slots) a writer remembers as guesses; each is small."""


class Known:
    """The value and revision this writer last read or wrote for each recent key: a
    guess for the next compare-and-set (a stale guess fails its write and is read
    again). Only a marker's guess is ever taken as an answer, and only for what a
    marker never takes back: its position in the list of all, and a state order
    reached or on its way (orders only grow), so such a guess is never ahead of the
    bucket (nothing deletes the keys of a list)."""

    def __init__(self, size: int = KNOWN_ENTRIES) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def get(self, key: str) -> tuple[Any, int] | None:
        return self._items.get(key)

    def put(self, key: str, value: BaseModel, revision: int) -> None:
        self._items[key] = (value, revision)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        self._items.pop(key, None)


class NextPositions:
    """Per list, the next position this writer may try, so that the concurrent writers
    of one process never race each other for a position (only other processes can).
    Bounded like :class:`Known`; a forgotten list starts again from its counter."""

    def __init__(self, size: int = KNOWN_ENTRIES) -> None:
        self.size = size
        self._next: OrderedDict[str, int] = OrderedDict()

    def reserve(self, lst: str, at_least: int) -> int:
        """A position at or above ``at_least`` that no other caller here is trying."""
        p = max(at_least, self._next.get(lst, 0))
        self._next[lst] = p + 1
        self._next.move_to_end(lst)
        while len(self._next) > self.size:
            self._next.popitem(last=False)
        return p

    def release(self, lst: str, p: int) -> None:
        """A create at ``p`` failed without an answer: offer ``p`` again, so that no gap
        is left in a dense list if it never landed."""
        if lst in self._next:
            self._next[lst] = min(self._next[lst], p)
