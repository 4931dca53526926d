"""The values passed between the data-stage modules: where a record came from, and the record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["chat", "instruction", "completion", "preference"]
FORMATS: tuple[Format, ...] = ("chat", "instruction", "completion", "preference")

# Normalised shapes: chat and instruction -> {"messages": [...]}, completion ->
# {"prompt", "completion"}, preference -> {"prompt", "chosen", "rejected"} (trl's own shapes).
Shape = Literal["messages", "prompt-completion", "preference"]
SHAPES: dict[Format, Shape] = {
    "chat": "messages",
    "instruction": "messages",
    "completion": "prompt-completion",
    "preference": "preference",
}


@dataclass(frozen=True, order=True)
class Location:
    """A record's origin: the source's display name (a URI, never a secret) and its 1-based line
    (the row number for sources without lines, such as hf:// datasets)."""

    source: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class RawRow:
    """One parsed JSON value as read from a source, or the reason it could not be parsed."""

    loc: Location
    value: Any = None
    error: str | None = None


@dataclass
class Record:
    """A valid record in its normalised shape, with the origin used in every report line;
    ``general`` marks records of the general (mixing) data, ``tokens`` their training length,
    ``synthetic`` those the teacher wrote."""

    loc: Location
    data: dict[str, Any]
    general: bool = False
    tokens: int | None = None
    synthetic: bool = False
    """Written by the teacher (``dataset.augment``); ``"synthetic": true`` in the split files."""


@dataclass(frozen=True)
class Problem:
    """A validation problem of one record: errors drop the record, warnings keep it."""

    loc: Location
    code: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "location": str(self.loc),
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }
