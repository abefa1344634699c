"""A page of a numbered list (infra/kv/listing.py) and the cursor that continues it."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

__all__ = ["Cursor", "ListPage"]


@dataclass(frozen=True)
class Cursor:
    """Where a page continues: below position ``below`` of the list of ``state``."""

    state: str | None
    below: int

    def encode(self) -> str:
        raw = f"v1:{self.state or '-'}:{self.below}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raises ``ValueError`` on a token this module did not write."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            version, state, below = raw.split(":")
            cursor = cls(None if state == "-" else state, int(below))
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not a cursor: {token!r}") from exc
        if version != "v1" or cursor.below < 1:
            raise ValueError(f"not a cursor: {token!r}")
        return cursor


@dataclass(frozen=True)
class ListPage:
    ids: list[str]
    total: int
    next: Cursor | None
