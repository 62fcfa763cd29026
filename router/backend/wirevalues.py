"""PostgreSQL values as the wire protocol carries them (PROTOCOL.md section 4), shared by the
two ways the router reads results: its pipelined connections (pgtypes.py) and pooled asyncpg
connections (pgcodecs.py), so a value looks the same whichever carried it.

Values leave here ready for the wire (often as a msgpack.ExtType built straight from
PostgreSQL's binary form). A value the wire can carry but Python cannot (a year past 9999,
time 24:00:00) fails its request with a ResultValueError that names the column and type:
sent, the client could not decode it.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from protocol.errors import EncodeError
from protocol.values import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, ExtCode, ext_default
from protocol.valuetypes import Infinity, Interval, Json, Point
from router.backend.errors import ResultValueError

__all__ = [
    "OWN_FORM",
    "PYTHON_RANGE",
    "Columns",
    "ResultValueError",
    "column_type",
    "date_days",
    "date_value",
    "interval_triple",
    "interval_value",
    "json_text",
    "json_value",
    "name_unencodable",
    "point_bytes",
    "point_value",
    "time_micros",
    "time_value",
    "timestamp_micros",
    "timestamp_value",
    "timestamptz_micros",
    "timetz_pair",
    "timetz_value",
    "types_of",
]

_I64 = struct.Struct("!q")
_I32 = struct.Struct("!i")
_QI = struct.Struct("!qi")
_DD = struct.Struct("!dd")

# PostgreSQL counts from 2000-01-01, the wire from 1970-01-01.
_PG_EPOCH_MICROS = 946_684_800_000_000
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_NAIVE = dt.datetime(2000, 1, 1)
_PG_EPOCH_UTC = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PG_EPOCH_ORDINAL = dt.date(2000, 1, 1).toordinal()
_MICROS_PER_DAY = 86_400_000_000
_LAST_NAIVE = dt.datetime(dt.MAXYEAR, 12, 31, 23, 59, 59, 999999)
# Python's range (years 1-9999), as PostgreSQL-epoch microseconds and days.
_MIN_MICROS = (dt.datetime(dt.MINYEAR, 1, 1) - _PG_EPOCH_NAIVE) // dt.timedelta(microseconds=1)
_MAX_MICROS = (_LAST_NAIVE - _PG_EPOCH_NAIVE) // dt.timedelta(microseconds=1)
_MIN_DAYS = dt.date(dt.MINYEAR, 1, 1).toordinal() - _PG_EPOCH_ORDINAL
_MAX_DAYS = dt.date(dt.MAXYEAR, 12, 31).toordinal() - _PG_EPOCH_ORDINAL
# The same, for the compiled row decoder (pgrows.py): values outside are this module's to judge.
PYTHON_RANGE = (_MIN_MICROS, _MAX_MICROS, _MIN_DAYS, _MAX_DAYS)
_TIMEDELTA_MAX_DAYS = 999_999_999

_ExtType = msgpack.ExtType
_new_tuple = tuple.__new__  # msgpack.ExtType without its argument checks (ours are valid)
_EXT_TIMESTAMPTZ = int(ExtCode.TIMESTAMPTZ)
_EXT_TIMESTAMP = int(ExtCode.TIMESTAMP)
_EXT_DATE = int(ExtCode.DATE)
_EXT_TIME = int(ExtCode.TIME)
_EXT_TIMETZ = int(ExtCode.TIMETZ)
_EXT_JSON = int(ExtCode.JSON)
_EXT_POINT = int(ExtCode.POINT)
_INFINITE_TIMESTAMP = {
    _EXT_TIMESTAMPTZ: (_I64.pack(INT64_MAX), _I64.pack(INT64_MIN)),
    _EXT_TIMESTAMP: (_I64.pack(INT64_MAX), _I64.pack(INT64_MIN)),
}
_INFINITE_DATE = (_I32.pack(INT32_MAX), _I32.pack(INT32_MIN))


class Columns(list[str]):
    """A result's column names, and, as `types`, the wire names of their types (see
    `column_type`): one object, so the types travel wherever the names already do."""

    __slots__ = ("types",)

    def __init__(self, names: list[str], types: list[str]) -> None:
        super().__init__(names)
        self.types = types


# ---- results: PostgreSQL's binary forms -> wire values -------------------------------------


def timestamp_value(micros: int, ext_code: int) -> Any:
    """A timestamp(tz) as PostgreSQL-epoch microseconds -> its ext type; +-infinity as the
    extreme int64."""
    if micros == INT64_MAX:
        return _new_tuple(_ExtType, (ext_code, _INFINITE_TIMESTAMP[ext_code][0]))
    if micros == INT64_MIN:
        return _new_tuple(_ExtType, (ext_code, _INFINITE_TIMESTAMP[ext_code][1]))
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        name = "timestamptz" if ext_code == _EXT_TIMESTAMPTZ else "timestamp"
        raise ResultValueError(name, "out of Python's range (years 1-9999)")
    return _new_tuple(_ExtType, (ext_code, _I64.pack(micros + _PG_EPOCH_MICROS)))


def date_value(days: int) -> Any:
    """A date as PostgreSQL-epoch days -> ext 4; +-infinity as the extreme int32."""
    if days == INT32_MAX:
        return _new_tuple(_ExtType, (_EXT_DATE, _INFINITE_DATE[0]))
    if days == INT32_MIN:
        return _new_tuple(_ExtType, (_EXT_DATE, _INFINITE_DATE[1]))
    if not _MIN_DAYS <= days <= _MAX_DAYS:
        raise ResultValueError("date", "out of Python's range (years 1-9999)")
    return _new_tuple(_ExtType, (_EXT_DATE, _I32.pack(days + _PG_EPOCH_DAYS)))


def time_value(micros: int) -> Any:
    if not 0 <= micros < _MICROS_PER_DAY:  # PostgreSQL allows 24:00:00; Python does not
        raise ResultValueError("time", "24:00:00 is past Python's last time of day")
    return _new_tuple(_ExtType, (_EXT_TIME, _I64.pack(micros)))


def timetz_value(micros: int, seconds_west: int) -> Any:
    """PostgreSQL keeps the zone as seconds west of UTC; the wire, as Python, east."""
    if not 0 <= micros < _MICROS_PER_DAY:
        raise ResultValueError("timetz", "24:00:00 is past Python's last time of day")
    if not -86_400 < seconds_west < 86_400:
        raise ResultValueError("timetz", "a UTC offset of a day or more")
    return _new_tuple(_ExtType, (_EXT_TIMETZ, _QI.pack(micros, -seconds_west)))


def interval_value(months: int, days: int, micros: int) -> Any:
    """An interval without months as a timedelta (ext 8), else exactly, as Interval (ext 14):
    a month is no fixed number of days."""
    if months == 0 and abs(days) + abs(micros) // _MICROS_PER_DAY + 1 < _TIMEDELTA_MAX_DAYS:
        return dt.timedelta(days=days, microseconds=micros)
    return Interval(months, days, micros)


def json_value(text: str | bytes | bytearray) -> Any:
    """json/jsonb text -> ext 9, the text as PostgreSQL gave it (json keeps its spacing)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    return _new_tuple(_ExtType, (_EXT_JSON, data))


def point_value(data: bytes) -> Any:
    """PostgreSQL's binary point (two float8, big-endian) is the wire's payload as it is."""
    return _new_tuple(_ExtType, (_EXT_POINT, bytes(data)))


# ---- parameters: Python values -> PostgreSQL's forms (as asyncpg judged them) ---------------


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _infinity(value: Infinity, type_name: str) -> bool:
    if value.type != type_name:
        raise TypeError(f"{value!r} is not a {type_name}")
    return value.negative


def timestamptz_micros(value: Any) -> int:
    """PostgreSQL-epoch microseconds of a timestamptz parameter. A naive datetime (or a date)
    is taken in the router's local time zone, as asyncpg takes it."""
    if isinstance(value, Infinity):
        return INT64_MIN if _infinity(value, "timestamptz") else INT64_MAX
    if type(value) is dt.date:
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime.date or datetime.datetime instance, "
                        f"got {type(value).__name__!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.astimezone(dt.UTC)
    return _micros(value - _PG_EPOCH_UTC)


def timestamp_micros(value: Any) -> int:
    if isinstance(value, Infinity):
        return INT64_MIN if _infinity(value, "timestamp") else INT64_MAX
    if type(value) is dt.date:
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime.date or datetime.datetime instance, "
                        f"got {type(value).__name__!r}")
    if value.tzinfo is not None:
        raise TypeError("can't subtract offset-naive and offset-aware datetimes")
    return _micros(value - _PG_EPOCH_NAIVE)


def date_days(value: Any) -> int:
    if isinstance(value, Infinity):
        return INT32_MIN if _infinity(value, "date") else INT32_MAX
    if not isinstance(value, dt.date):
        raise TypeError(f"expected a datetime.date instance, got {type(value).__name__!r}")
    return value.toordinal() - _PG_EPOCH_ORDINAL


def time_micros(value: Any) -> int:
    if not isinstance(value, dt.time):
        raise TypeError(f"expected a datetime.time instance, got {type(value).__name__!r}")
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def timetz_pair(value: Any) -> tuple[int, int]:
    """(microseconds, seconds west of UTC) of an aware time."""
    offset = value.utcoffset() if isinstance(value, dt.time) else None
    if offset is None:
        raise TypeError("expected a datetime.time with a UTC offset")
    return time_micros(value), -(offset.days * 86_400 + offset.seconds)


def interval_triple(value: Any) -> tuple[int, int, int]:
    """(months, days, microseconds) of a timedelta or an Interval."""
    if isinstance(value, Interval):
        return value.months, value.days, value.microseconds
    if isinstance(value, dt.timedelta):
        return 0, value.days, value.seconds * 1_000_000 + value.microseconds
    raise TypeError(f"expected a datetime.timedelta or protocol.Interval, "
                    f"got {type(value).__name__!r}")


def json_text(value: Any) -> str:
    """The text of a json/jsonb parameter: a protocol.Json (ext 9), or a str taken to be JSON
    text already (what asyncpg took, and what clients sent before ext 9 parameters)."""
    if isinstance(value, Json):
        return value.dumps()
    if isinstance(value, str):
        return value
    raise TypeError(f"expected str or protocol.Json, got {type(value).__name__}")


def point_bytes(value: Any) -> bytes:
    if isinstance(value, Point):
        return _DD.pack(value.x, value.y)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _DD.pack(*value)
    raise TypeError(f"expected protocol.Point or (x, y), got {type(value).__name__}")


# ---- column types --------------------------------------------------------------------------

# Types whose values cross the wire in a form of their own (native or an ext type), by
# PostgreSQL's name; the values of every other type are that type's text output, and the
# column's type says so with a "text:" prefix (PROTOCOL.md section 4).
OWN_FORM = frozenset(
    {
        "bool", "int2", "int4", "int8", "oid", "xid", "xid8", "cid", "float4", "float8",
        "numeric", "text", "varchar", "bpchar", "name", "bytea", "char", "uuid", "date", "time",
        "timetz", "timestamp", "timestamptz", "interval", "json", "jsonb", "inet", "cidr",
        "point", "pg_lsn", "void", "record", "int2vector", "oidvector",
    }
)
_OWN_FORM_KINDS = frozenset({"range", "multirange", "composite"})


def column_type(name: str, kind: str = "scalar") -> str:
    """The wire name of a column's type: PostgreSQL's name (`[]` after an array's), with
    "text:" before it when its values are the type's text output."""
    if kind in _OWN_FORM_KINDS:
        return name
    base = name[:-2] if kind == "array" and name.endswith("[]") else name
    return name if base in OWN_FORM else f"text:{name}"


def types_of(columns: Sequence[str]) -> list[str] | None:
    """The wire types of a result's columns; None when they are not known (a stored reply
    replayed for an idempotency key keeps only the names)."""
    return getattr(columns, "types", None)


def name_unencodable(exc: EncodeError, columns: Sequence[str],
                     rows: Sequence[Sequence[Any]]) -> EncodeError | None:
    """The same failure, naming the first column whose value the wire cannot carry (the
    encoder only knows a value failed); None when no single value is to blame (a reply over
    the frame limit)."""
    types = types_of(columns) or []
    for row in rows:
        for index, value in enumerate(row):
            try:
                msgpack.packb(value, default=ext_default, use_bin_type=True)
            except (TypeError, ValueError, OverflowError) as why:
                name = columns[index] if index < len(columns) else f"#{index + 1}"
                kind = f" ({types[index]})" if index < len(types) else ""
                return EncodeError(f"cannot send column {name!r}{kind}: {why}")
    return None
