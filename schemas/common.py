"""Small shared types: identifiers, error details, strict base model."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""Task, dataset, tenant and zoo ids: safe as NATS subject tokens and store keys."""

_ID_RE = re.compile(ID_PATTERN)


def is_identifier(value: str) -> bool:
    return bool(_ID_RE.match(value))


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
