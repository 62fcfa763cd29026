"""The Python classes for values that have no exact native Python type: JSON documents,
intervals with months, points, ranges, PostgreSQL's infinite timestamps and dates, and the
document store's ObjectId. Their wire forms are in values.py (PROTOCOL.md section 4)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Infinity", "Interval", "Json", "ObjectId", "Point", "Range"]

_UNPARSED = object()


class Json:
    """A json/jsonb value. Wrapped so a JSON array is never confused with a PostgreSQL array
    (plain lists) and a JSON object never with a msgpack map.

    One read off the wire keeps its text, and is parsed only when `value` is first read: the
    router passes a parameter's text to PostgreSQL as it came (a json column keeps its
    spacing and key order), and a client parses what it looks at."""

    __slots__ = ("_text", "_value")

    def __init__(self, value: Any) -> None:
        self._value = value
        self._text: str | None = None

    @classmethod
    def from_text(cls, text: str) -> Json:
        """The JSON document in `text` (parsed when its value is first read)."""
        doc = cls(_UNPARSED)
        doc._text = text
        return doc

    @property
    def value(self) -> Any:
        if self._value is _UNPARSED:
            assert self._text is not None
            self._value = json.loads(self._text)
        return self._value

    def dumps(self) -> str:
        """The JSON text: as received when it came off the wire, else compact."""
        if self._text is None:
            self._text = json.dumps(self.value, separators=(",", ":"), ensure_ascii=False)
        return self._text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Json):
            return NotImplemented
        return bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]  # like the dict or list it usually holds

    def __repr__(self) -> str:
        return f"Json({self.value!r})"


@dataclass(frozen=True, slots=True)
class ObjectId:
    """A document-store ObjectId (12 bytes); str() gives the usual 24-digit hex form."""

    binary: bytes

    def __post_init__(self) -> None:
        if len(self.binary) != 12:
            raise ValueError("an ObjectId is exactly 12 bytes")

    @classmethod
    def from_hex(cls, text: str) -> ObjectId:
        return cls(bytes.fromhex(text))

    def __str__(self) -> str:
        return self.binary.hex()


@dataclass(frozen=True, slots=True)
class Interval:
    """A PostgreSQL interval as PostgreSQL keeps it: months, days and microseconds, each
    counted apart (a month is not a fixed number of days). Intervals without months travel
    as `datetime.timedelta`; this class carries the others exactly."""

    months: int
    days: int = 0
    microseconds: int = 0


@dataclass(frozen=True, slots=True)
class Point:
    """A PostgreSQL point."""

    x: float
    y: float


RangeBounds = Literal["[)", "[]", "(]", "()", "empty"]
_BOUNDS = frozenset({"[)", "[]", "(]", "()", "empty"})


@dataclass(frozen=True, slots=True)
class Range:
    """A PostgreSQL range (int4range, tstzrange, ...). A bound of None is unbounded on that
    side, and its bracket is then exclusive, as PostgreSQL normalises it. `bounds` is
    "empty" for the empty range (both bounds None)."""

    lower: Any = None
    upper: Any = None
    bounds: RangeBounds = "[)"

    def __post_init__(self) -> None:
        if self.bounds not in _BOUNDS:
            raise ValueError(f"range bounds must be one of {sorted(_BOUNDS)}, not {self.bounds!r}")
        if self.bounds == "empty" and (self.lower is not None or self.upper is not None):
            raise ValueError("an empty range has no bounds")

    @classmethod
    def empty(cls) -> Range:
        return cls(None, None, "empty")

    @property
    def is_empty(self) -> bool:
        return self.bounds == "empty"

    @property
    def lower_inc(self) -> bool:
        return self.bounds[0] == "[" and self.lower is not None

    @property
    def upper_inc(self) -> bool:
        return self.bounds[-1] == "]" and self.upper is not None


InfiniteType = Literal["timestamptz", "timestamp", "date"]
_INFINITE_TYPES = frozenset({"timestamptz", "timestamp", "date"})


@dataclass(frozen=True, slots=True)
class Infinity:
    """PostgreSQL's 'infinity' (or, `negative`, '-infinity') of a timestamptz, timestamp or
    date: later (earlier) than every other value of that type. Python's datetime has no such
    value, and its largest one is an ordinary instant, not infinity."""

    type: InfiniteType
    negative: bool = False

    def __post_init__(self) -> None:
        if self.type not in _INFINITE_TYPES:
            raise ValueError(f"no infinity of type {self.type!r}")

    def __repr__(self) -> str:
        sign = "-" if self.negative else ""
        return f"'{sign}infinity'::{self.type}"
