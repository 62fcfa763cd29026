"""How pooled asyncpg connections read and write the values whose asyncpg defaults are not
the wire's (PROTOCOL.md section 4): codecs installed on every connection a pool opens.

asyncpg's own choices lose information or give objects the wire has no form for: an interval
with months becomes days (one month = 30), 'infinity' becomes datetime.max (naive even for a
timestamptz), json becomes a plain str, a bit string or a polygon an asyncpg object. With these
codecs a pooled connection gives the same wire values as a pipelined one (wirevalues.py), and
types without a form of their own come as their text output. Every codec is for a built-in
type, so installing them costs no round trip; they apply inside arrays, ranges and records too.

The router's own queries on pooled connections read only integers, text and bytea, which these
codecs leave alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from protocol.valuetypes import Range
from router.backend.wirevalues import (
    _EXT_TIMESTAMP,
    _EXT_TIMESTAMPTZ,
    Columns,
    ResultValueError,
    column_type,
    date_days,
    date_value,
    interval_triple,
    interval_value,
    json_text,
    json_value,
    point_bytes,
    point_value,
    time_micros,
    time_value,
    timestamp_micros,
    timestamp_value,
    timestamptz_micros,
    timetz_pair,
    timetz_value,
)

__all__ = ["columns_of", "install_codecs", "name_failed_column", "wire_params"]


def _text_param(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected its text form (a str), got {type(value).__name__}")
    return value


def _identity(value: Any) -> Any:
    return value


# (type, format, encoder, decoder); tuple-format codecs see PostgreSQL's own numbers.
_CODECS: list[tuple[str, str, Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("json", "text", json_text, json_value),
    ("jsonb", "text", json_text, json_value),
    ("timestamptz", "tuple", lambda v: (timestamptz_micros(v),),
     lambda t: timestamp_value(t[0], _EXT_TIMESTAMPTZ)),
    ("timestamp", "tuple", lambda v: (timestamp_micros(v),),
     lambda t: timestamp_value(t[0], _EXT_TIMESTAMP)),
    ("date", "tuple", lambda v: (date_days(v),), lambda t: date_value(t[0])),
    ("time", "tuple", lambda v: (time_micros(v),), lambda t: time_value(t[0])),
    ("timetz", "tuple", timetz_pair, lambda t: timetz_value(t[0], t[1])),
    ("interval", "tuple", interval_triple, lambda t: interval_value(*t)),
    ("point", "binary", point_bytes, point_value),
] + [
    # No form of their own on the wire (asyncpg would give tuples or its own objects): their
    # text output, and parameters as text.
    (name, "text", _text_param, _identity)
    for name in ("bit", "varbit", "box", "line", "lseg", "path", "polygon", "circle", "tid",
                 "txid_snapshot", "pg_snapshot")
]


async def install_codecs(conn: asyncpg.Connection) -> None:
    for name, fmt, encoder, decoder in _CODECS:
        await conn.set_type_codec(name, schema="pg_catalog", encoder=encoder, decoder=decoder,
                                  format=fmt)


def columns_of(attributes: Sequence[Any]) -> Columns:
    """A prepared statement's columns (asyncpg attributes), with their wire types."""
    return Columns([a.name for a in attributes],
                   [column_type(a.type.name, a.type.kind) for a in attributes])


def name_failed_column(exc: ResultValueError, columns: Columns) -> None:
    """Name the column a value failed in, when its type says which (the codec cannot)."""
    if exc.column is not None:
        return
    hits = [name for name, wire in zip(columns, columns.types, strict=True)
            if wire.removeprefix("text:").removesuffix("[]") == exc.type_name]
    if len(hits) == 1:
        exc.column = hits[0]


def _to_driver(value: Any) -> Any:
    if isinstance(value, Range):
        if value.is_empty:
            return asyncpg.Range(empty=True)
        return asyncpg.Range(wire_param(value.lower), wire_param(value.upper),
                             lower_inc=value.lower_inc, upper_inc=value.upper_inc)
    if isinstance(value, list):
        return [_to_driver(item) for item in value]
    return value


def wire_param(value: Any) -> Any:
    return _to_driver(value) if isinstance(value, (Range, list)) else value


def wire_params(params: Sequence[Any]) -> Sequence[Any]:
    """Parameters as asyncpg takes them: the protocol's ranges become asyncpg's (the other
    wire values are taken by the codecs above, or by asyncpg itself)."""
    for value in params:
        if isinstance(value, (Range, list)):
            return [wire_param(v) for v in params]
    return params
