"""PostgreSQL's wire formats for the pipelined connections (router/backend/pgwire.py): the messages
they build and read, and which parameter and column types they carry, and how, exactly as
asyncpg would.

Columns come back in binary form where that is cheap to decode and as text where text is the
wire's form (json, jsonb: ext 9 with PostgreSQL's text) or exact (numeric, as Decimal). Values
of types that protocol/values.py sends as ext types (uuid, timestamp, timestamptz, date) become
`msgpack.ExtType` straight from PostgreSQL's binary form, as pooled connections give them
(wirevalues.py). A parameter is encoded only when its Python type is one a pooled connection
accepts for that PostgreSQL type; otherwise `Unsupported` is raised before anything is sent,
and the statement runs on a pooled connection, which gives its own result or error. A
statement with a parameter or column of any other type is not carried.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import struct
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgpack

from protocol.values import ExtCode
from protocol.valuetypes import Infinity, Json
from router.backend.errors import Unsupported
from router.backend.wirevalues import (
    Columns,
    column_type,
    date_days,
    date_value,
    json_text,
    json_value,
    timestamp_micros,
    timestamp_value,
    timestamptz_micros,
)

__all__ = [
    "EXECUTE_ALL",
    "EXECUTE_ALL_SYNC",
    "I16",
    "I32",
    "ROW_KINDS",
    "SYNC",
    "U32",
    "Decoder",
    "Encoder",
    "RowKind",
    "Statement",
    "Unsupported",
    "cstr",
    "error_fields",
    "make_statement",
    "message",
    "row_description",
    "statement_timeout_prefix",
]

# Network-order integers, shared with pgwire.py.
I16 = struct.Struct("!h")
I32 = struct.Struct("!i")
U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")
_i32_from = I32.unpack_from

_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)


# ---- values: PostgreSQL binary/text form -> what asyncpg returns (or its ext type) ----------

Decoder = Callable[[bytearray, int, int], Any]


def _width(n: int, width: int) -> None:
    """A binary value of a fixed width is that wide, or it is no value of its type (read
    as one, it would take its neighbours' bytes)."""
    if n != width:
        raise ValueError(f"a binary value of {n} bytes where {width} were expected")


def _text(b: bytearray, p: int, n: int) -> str:
    return b[p : p + n].decode()


def _int2(b: bytearray, p: int, n: int) -> int:
    _width(n, 2)
    return int(I16.unpack_from(b, p)[0])


def _int4(b: bytearray, p: int, n: int) -> int:
    _width(n, 4)
    return int(_i32_from(b, p)[0])


def _int8(b: bytearray, p: int, n: int) -> int:
    _width(n, 8)
    return int(_I64.unpack_from(b, p)[0])


def _oid(b: bytearray, p: int, n: int) -> int:
    _width(n, 4)
    return int(U32.unpack_from(b, p)[0])


def _float4(b: bytearray, p: int, n: int) -> float:
    _width(n, 4)
    return float(_F32.unpack_from(b, p)[0])


def _float8(b: bytearray, p: int, n: int) -> float:
    _width(n, 8)
    return float(_F64.unpack_from(b, p)[0])


def _bool(b: bytearray, p: int, n: int) -> bool:
    _width(n, 1)
    return b[p] != 0


def _bytea(b: bytearray, p: int, n: int) -> bytes:
    return bytes(b[p : p + n])


def _numeric_text(b: bytearray, p: int, n: int) -> Decimal:
    return Decimal(b[p : p + n].decode())


# msgpack.ExtType validates its arguments in Python; these values are ours and valid.
_ExtType = msgpack.ExtType
_new_tuple = tuple.__new__
_EXT_UUID = int(ExtCode.UUID)
_EXT_TIMESTAMPTZ = int(ExtCode.TIMESTAMPTZ)
_EXT_TIMESTAMP = int(ExtCode.TIMESTAMP)
_EXT_DATE = int(ExtCode.DATE)
_EXT_JSON = int(ExtCode.JSON)


def _uuid(b: bytearray, p: int, n: int) -> msgpack.ExtType:
    _width(n, 16)
    return _new_tuple(_ExtType, (_EXT_UUID, bytes(b[p : p + 16])))


def _timestamptz(b: bytearray, p: int, n: int) -> Any:
    _width(n, 8)
    return timestamp_value(_I64.unpack_from(b, p)[0], _EXT_TIMESTAMPTZ)


def _timestamp(b: bytearray, p: int, n: int) -> Any:
    _width(n, 8)
    return timestamp_value(_I64.unpack_from(b, p)[0], _EXT_TIMESTAMP)


def _date(b: bytearray, p: int, n: int) -> Any:
    _width(n, 4)
    return date_value(_i32_from(b, p)[0])


def _json(b: bytearray, p: int, n: int) -> Any:
    return json_value(b[p : p + n])


class RowKind(enum.IntEnum):
    """How the compiled row decoder (router/backend/_rowdecode.c, same numbers) decodes a
    column itself, exactly as its Python decoder here would; PYTHON: by calling it."""

    PYTHON = 0
    BOOL = 1
    BYTES = 2
    TEXT = 3
    INT2 = 4
    INT4 = 5
    INT8 = 6
    UINT4 = 7
    FLOAT4 = 8
    FLOAT8 = 9
    EXT16 = 10  # an ext type of the value's 16 bytes
    EXT_BYTES = 11  # an ext type of the value's bytes
    TIMESTAMP = 12  # in Python's range: an ext type of its 1970-based microseconds
    DATE = 13  # in Python's range: an ext type of its 1970-based days
    DECIMAL = 14  # numeric's text


# Each decoder above as the compiled row decoder does it: (kind, ext code).
ROW_KINDS: dict[Decoder, tuple[RowKind, int]] = {
    _bool: (RowKind.BOOL, 0),
    _bytea: (RowKind.BYTES, 0),
    _text: (RowKind.TEXT, 0),
    _int2: (RowKind.INT2, 0),
    _int4: (RowKind.INT4, 0),
    _int8: (RowKind.INT8, 0),
    _oid: (RowKind.UINT4, 0),
    _float4: (RowKind.FLOAT4, 0),
    _float8: (RowKind.FLOAT8, 0),
    _uuid: (RowKind.EXT16, _EXT_UUID),
    _json: (RowKind.EXT_BYTES, _EXT_JSON),
    _timestamp: (RowKind.TIMESTAMP, _EXT_TIMESTAMP),
    _timestamptz: (RowKind.TIMESTAMP, _EXT_TIMESTAMPTZ),
    _date: (RowKind.DATE, _EXT_DATE),
    _numeric_text: (RowKind.DECIMAL, 0),
}


# type oid -> (result format: 1 binary / 0 text, decoder)
_RESULT: dict[int, tuple[int, Decoder]] = {
    16: (1, _bool),
    17: (1, _bytea),
    19: (1, _text),  # name
    20: (1, _int8),
    21: (1, _int2),
    23: (1, _int4),
    25: (1, _text),
    26: (1, _oid),
    114: (0, _json),  # PostgreSQL's text, as ext 9
    700: (1, _float4),
    701: (1, _float8),
    1042: (1, _text),  # bpchar
    1043: (1, _text),  # varchar
    1082: (1, _date),
    1114: (1, _timestamp),
    1184: (1, _timestamptz),
    1700: (0, _numeric_text),
    2950: (1, _uuid),
    3802: (0, _json),  # jsonb
}
_ENUM_RESULT: tuple[int, Decoder] = (1, _text)  # an enum's binary form is its label


# ---- parameters: Python value -> PostgreSQL binary/text form, or Unsupported -----------------

Encoder = Callable[[Any], bytes]


def _enc_int(lo: int, hi: int, packer: struct.Struct) -> Encoder:
    def enc(v: Any) -> bytes:
        if type(v) is not int or not lo <= v <= hi:
            raise Unsupported
        return packer.pack(v)

    return enc


def _enc_float(packer: struct.Struct) -> Encoder:
    def enc(v: Any) -> bytes:
        if type(v) is not float and type(v) is not int:
            raise Unsupported
        try:
            return packer.pack(v)
        except (struct.error, OverflowError):
            raise Unsupported from None

    return enc


def _enc_text(v: Any) -> bytes:
    if type(v) is not str:
        raise Unsupported
    return v.encode()


def _enc_bool(v: Any) -> bytes:
    if type(v) is not bool:
        raise Unsupported
    return b"\x01" if v else b"\x00"


def _enc_bytea(v: Any) -> bytes:
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise Unsupported
    return bytes(v)


def _enc_numeric(v: Any) -> bytes:
    if type(v) is int:
        return str(v).encode()
    if type(v) is not Decimal:
        raise Unsupported
    if not v.is_finite():
        if v.is_snan() or (v.is_nan() and v.is_signed()):  # no such numeric in PostgreSQL
            raise Unsupported
        return str(v).encode()  # NaN, Infinity, -Infinity: as PostgreSQL spells them
    exponent = v.adjusted()
    if not -16383 <= exponent <= 131071:  # beyond numeric's range: asyncpg's error, not ours
        raise Unsupported
    return str(v).encode()


_UUID_CHARS = frozenset("0123456789abcdefABCDEF-")


def _enc_uuid(v: Any) -> bytes:
    if type(v) is uuid.UUID:
        return v.bytes
    if type(v) is str:
        # asyncpg takes 32-36 characters of hex digits and dashes; uuid.UUID takes braces,
        # "urn:uuid:" and underscores too. Anything else is asyncpg's to refuse.
        if not 32 <= len(v) <= 36 or not _UUID_CHARS.issuperset(v):
            raise Unsupported
        try:
            return uuid.UUID(v).bytes
        except ValueError:
            raise Unsupported from None
    raise Unsupported


def _enc_timestamptz(v: Any) -> bytes:
    if type(v) is dt.datetime and v.tzinfo is not None and v.utcoffset() is not None:
        return _I64.pack(timestamptz_micros(v))
    if type(v) is Infinity and v.type == "timestamptz":
        return _I64.pack(timestamptz_micros(v))
    raise Unsupported  # naive values (taken in local time) and errors: the pooled path's


def _enc_timestamp(v: Any) -> bytes:
    if (type(v) is dt.datetime and v.tzinfo is None) or (
        type(v) is Infinity and v.type == "timestamp"
    ):
        return _I64.pack(timestamp_micros(v))
    raise Unsupported


def _enc_date(v: Any) -> bytes:
    if type(v) is dt.date or (type(v) is Infinity and v.type == "date"):
        return I32.pack(date_days(v))
    raise Unsupported


def _enc_json(v: Any) -> bytes:
    if type(v) is str or type(v) is Json:
        return json_text(v).encode()
    raise Unsupported


# type oid -> (parameter format: 1 binary / 0 text, encoder)
_PARAM: dict[int, tuple[int, Encoder]] = {
    16: (1, _enc_bool),
    17: (1, _enc_bytea),
    19: (1, _enc_text),
    20: (1, _enc_int(_INT64_MIN, _INT64_MAX, _I64)),
    21: (1, _enc_int(-(2**15), 2**15 - 1, I16)),
    23: (1, _enc_int(_INT32_MIN, _INT32_MAX, I32)),
    25: (1, _enc_text),
    26: (1, _enc_int(0, 2**32 - 1, U32)),
    114: (0, _enc_json),
    700: (1, _enc_float(_F32)),
    701: (1, _enc_float(_F64)),
    1042: (1, _enc_text),
    1043: (1, _enc_text),
    1082: (1, _enc_date),
    1114: (1, _enc_timestamp),
    1184: (1, _enc_timestamptz),
    1700: (0, _enc_numeric),
    2950: (1, _enc_uuid),
    3802: (0, _enc_json),
}
_ENUM_PARAM: tuple[int, Encoder] = (1, _enc_text)


def _enc_array(element_oid: int, element: Encoder) -> Encoder:
    """A one-dimensional array of a type carried in binary (`= ANY($1)`, a function's uuid[]
    argument), in PostgreSQL's binary array form. Only a list whose items are each None or
    a value `element` takes: a nested list (asyncpg makes a multi-dimensional array of it)
    and any other value are the pooled path's, as asyncpg decides."""
    head = I32.pack(element_oid)

    def enc(v: Any) -> bytes:
        if type(v) is not list:
            raise Unsupported
        if not v:
            return b"\x00\x00\x00\x00\x00\x00\x00\x00" + head  # no dimensions: empty
        parts = [b"", b"", I32.pack(len(v)), b"\x00\x00\x00\x01"]  # length, lower bound 1
        nulls = False
        for item in v:
            if item is None:
                nulls = True
                parts.append(b"\xff\xff\xff\xff")
            elif type(item) is list:
                raise Unsupported
            else:
                data = element(item)
                parts.append(I32.pack(len(data)))
                parts.append(data)
        parts[0] = b"\x00\x00\x00\x01" + (b"\x00\x00\x00\x01" if nulls else b"\x00" * 4)
        parts[1] = head
        return b"".join(parts)

    return enc


# array type oid -> its element's type oid, for the element types carried in binary
_ARRAY_OF = {1000: 16, 1001: 17, 1005: 21, 1007: 23, 1016: 20, 1009: 25, 1014: 1042,
             1015: 1043, 1021: 700, 1022: 701, 1115: 1114, 1182: 1082, 1185: 1184, 2951: 2950}
_PARAM.update({array: (1, _enc_array(element, _PARAM[element][1]))
               for array, element in _ARRAY_OF.items()})


# ---- messages ------------------------------------------------------------------------------

SYNC = b"S\x00\x00\x00\x04"
EXECUTE_ALL = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"  # the unnamed portal, all rows
EXECUTE_ALL_SYNC = EXECUTE_ALL + SYNC
_BIND_UNNAMED = b"B\x00\x00\x00\x0c" + b"\x00" * 8  # unnamed portal and statement, no values


@functools.lru_cache(maxsize=256)  # clients use few distinct timeouts
def statement_timeout_prefix(timeout_ms: int) -> bytes:
    """Messages that give the statement sent right after them (with no Sync between) a
    server-side timeout of its own: SET LOCAL, in the implicit transaction the two share,
    which ends at that statement's Sync. PostgreSQL then stops the statement itself, so a
    statement past its timeout_ms does not hold up the pipelined requests behind it; nor
    can the setting outlive it (it is rolled back or committed with the statement)."""
    parse = message(b"P", b"\x00" + cstr(f"SET LOCAL statement_timeout TO {int(timeout_ms)}")
                    + b"\x00\x00")
    return parse + _BIND_UNNAMED + EXECUTE_ALL


def message(kind: bytes, body: bytes) -> bytes:
    return kind + I32.pack(len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def row_description(body: bytes) -> list[tuple[str, int]]:
    count = I16.unpack_from(body, 0)[0]
    pos = 2
    out: list[tuple[str, int]] = []
    for _ in range(count):
        end = body.index(b"\x00", pos)
        name = body[pos:end].decode()
        pos = end + 1
        type_oid = U32.unpack_from(body, pos + 6)[0]  # after table oid (4) and attnum (2)
        out.append((name, type_oid))
        pos += 18
    return out


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


@dataclass(slots=True, eq=False)
class Statement:
    """A statement prepared on one pipelined connection."""

    name: str
    sql: str
    columns: Columns  # names, and their wire types
    supported: bool
    decoders: tuple[Decoder, ...] = ()
    encoders: tuple[Encoder, ...] = ()
    _bind_head: bytes = b""  # after the length: portal, name, parameter formats, count
    _bind_tail: bytes = b""  # result formats

    def bind(self, params: Sequence[Any]) -> bytes:
        """The Bind message for `params`, or Unsupported (then nothing may be sent)."""
        encoders = self.encoders
        if len(params) != len(encoders):
            raise Unsupported
        parts = [self._bind_head]
        for enc, value in zip(encoders, params, strict=True):
            if value is None:
                parts.append(b"\xff\xff\xff\xff")
            else:
                data = enc(value)
                parts.append(I32.pack(len(data)))
                parts.append(data)
        parts.append(self._bind_tail)
        body = b"".join(parts)
        return b"B" + I32.pack(len(body) + 4) + body


# The names of the types the pipeline carries, for the reply's column types.
_TYPE_NAMES = {
    16: "bool", 17: "bytea", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text",
    26: "oid", 114: "json", 700: "float4", 701: "float8", 1042: "bpchar", 1043: "varchar",
    1082: "date", 1114: "timestamp", 1184: "timestamptz", 1700: "numeric", 2950: "uuid",
    3802: "jsonb",
}


def make_statement(
    name: str, sql: str, param_oids: list[int], columns: list[tuple[str, int]],
    enums: Collection[int], enum_names: Mapping[int, str] | None = None,
) -> Statement:
    """`enums`: the oids of enum types (carried as their labels); `enum_names` their names."""
    names = Columns(
        [c[0] for c in columns],
        [column_type(_TYPE_NAMES.get(oid) or (enum_names or {}).get(oid, "enum"))
         for _, oid in columns],
    )
    params: list[tuple[int, Encoder]] = []
    results: list[tuple[int, Decoder]] = []
    for oid in param_oids:
        p = _PARAM.get(oid) or (_ENUM_PARAM if oid in enums else None)
        if p is None:
            return Statement(name, sql, names, False)
        params.append(p)
    for _, oid in columns:
        r = _RESULT.get(oid) or (_ENUM_RESULT if oid in enums else None)
        if r is None:
            return Statement(name, sql, names, False)
        results.append(r)
    if len(params) > 32767 or len(results) > 32767:
        return Statement(name, sql, names, False)
    head = b"\x00" + cstr(name) + I16.pack(len(params))
    head += b"".join(I16.pack(fmt) for fmt, _ in params) + I16.pack(len(params))
    tail = I16.pack(len(results)) + b"".join(I16.pack(fmt) for fmt, _ in results)
    return Statement(
        name, sql, names, True,
        tuple(dec for _, dec in results), tuple(enc for _, enc in params), head, tail,
    )
