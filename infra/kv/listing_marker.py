"""The marker of an id in the lists of infra/kv/listing.py: where it is listed, which
state it is in or entering, and where a retry searches for positions already taken."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel


class Marker(BaseModel):
    tenant: str
    all: int = 0
    """Position in the tenant's list of all (0: being taken)."""
    state: str | None = None
    sp: int = 0
    """Position in the list of ``state`` (0: not listed in a state yet)."""
    order: tuple[int, int] = (0, 0)
    """(generation, state rank) of ``state``: an older state never replaces a newer one."""
    pending: str | None = None
    """The state being entered: a retry looks for the position already taken."""
    pending_order: tuple[int, int] = (0, 0)
    base: int | None = None
    """The count of the list being entered (``pending``'s; all's while ``all`` is 0 and no
    state is named), read before a position was taken: every position taken for it is
    above, so a retry searches from there however far the list has grown (``None``: a
    marker written before this field; the last ``LOOKBACK`` positions are searched)."""
    all_base: int | None = None
    """The count of the list of all when the marker was created: where a retry searches
    for the position in it (``None``: a marker written before this field; ``base``)."""
    counted: tuple[bool, bool] = (False, False)
    """Whether the writer that recorded ``state`` counted entering it and leaving the
    previous state (infra/kv/counting.py): a writer that lost the race to record the
    same step takes back what both counted."""


def all_base(marker: Marker) -> int | None:
    """Where a retry searches for the position in the list of all."""
    return marker.base if marker.all_base is None else marker.all_base


class Counted(NamedTuple):
    """A counter change of a step: confirmed once the step is recorded."""
    key: str
    token: str
    delta: int
    counted: bool
