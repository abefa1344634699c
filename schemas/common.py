"""Small shared types: identifiers, error details, strict base model."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""Task, dataset and tenant ids: one NATS subject token (no dots) and a safe store key."""

ZooId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
"""Zoo entry ids may carry a weights tag after a dot (``resnet50.a1_in1k``)."""

_ID_RE = re.compile(ID_PATTERN)
_ZOO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_identifier(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))  # not match: "$" also matches before a final "\n"


def is_zoo_id(value: str) -> bool:
    """The shape of :data:`ZooId` (a search space's network choices)."""
    return bool(_ZOO_RE.match(value))


class Strict(BaseModel):
    """Base of every contract: unknown fields are errors, models are immutable.

    Forbidding extras is what turns a typo in a request ("epoch" for "epochs")
    into a 422 naming the field instead of a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(Strict):
    field: str
    code: str
    message: str
