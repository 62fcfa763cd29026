"""PostgreSQL's wire formats for the pipelined connections (router/pgwire.py): the messages
they build and read, and which parameter and column types they carry, and how, exactly as
asyncpg would.

Columns come back in binary form where that is cheap to decode and as text where asyncpg
itself returns text (json, jsonb) or text is exact (numeric, as Decimal). Values of types that
protocol/values.py sends as ext types (uuid, timestamp, timestamptz, date) become
`msgpack.ExtType` straight from PostgreSQL's binary form. A parameter is encoded only when its
Python type is one asyncpg accepts for that PostgreSQL type; otherwise `Unsupported` is raised
before anything is sent, and the statement runs on an asyncpg connection, which gives its own
result or error. A statement with a parameter or column of any other type is not carried.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgpack

from protocol.values import ExtCode

__all__ = [
    "EXECUTE_ALL_SYNC",
    "I16",
    "I32",
    "SYNC",
    "U32",
    "Decoder",
    "Encoder",
    "Statement",
    "Unsupported",
    "cstr",
    "error_fields",
    "make_statement",
    "message",
    "row_description",
]

# Network-order integers, shared with pgwire.py.
I16 = struct.Struct("!h")
I32 = struct.Struct("!i")
U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")
_i32_from = I32.unpack_from

# PostgreSQL's epoch (2000-01-01) is this many microseconds / days after the Unix epoch, which
# protocol/values.py uses for its ext types.
_PG_EPOCH_MICROS = 946_684_800_000_000
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_UTC = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PG_EPOCH_NAIVE = dt.datetime(2000, 1, 1)
_PG_EPOCH_ORDINAL = dt.date(2000, 1, 1).toordinal()
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)
# asyncpg's values for PostgreSQL's +-infinity timestamps and dates.
_INF_NAIVE = dt.datetime(dt.MAXYEAR, 12, 31, 23, 59, 59, 999999)
_NEG_INF_NAIVE = dt.datetime(dt.MINYEAR, 1, 1)
_INF_DATE, _NEG_INF_DATE = dt.date(dt.MAXYEAR, 12, 31), dt.date(dt.MINYEAR, 1, 1)


class Unsupported(Exception):
    """This statement or these parameters are not carried by the pipeline (nothing was sent)."""


# ---- values: PostgreSQL binary/text form -> what asyncpg returns (or its ext type) ----------

Decoder = Callable[[bytearray, int, int], Any]


def _text(b: bytearray, p: int, n: int) -> str:
    return b[p : p + n].decode()


def _int2(b: bytearray, p: int, n: int) -> int:
    return int(I16.unpack_from(b, p)[0])


def _int4(b: bytearray, p: int, n: int) -> int:
    return int(_i32_from(b, p)[0])


def _int8(b: bytearray, p: int, n: int) -> int:
    return int(_I64.unpack_from(b, p)[0])


def _oid(b: bytearray, p: int, n: int) -> int:
    return int(U32.unpack_from(b, p)[0])


def _float4(b: bytearray, p: int, n: int) -> float:
    return float(_F32.unpack_from(b, p)[0])


def _float8(b: bytearray, p: int, n: int) -> float:
    return float(_F64.unpack_from(b, p)[0])


def _bool(b: bytearray, p: int, n: int) -> bool:
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


def _uuid(b: bytearray, p: int, n: int) -> msgpack.ExtType:
    return _new_tuple(_ExtType, (_EXT_UUID, bytes(b[p : p + 16])))


# PostgreSQL's timestamps and dates reach far past Python's years 1-9999; asyncpg fails a query
# that returns one, and so must we (the client could not decode it).
_MIN_MICROS = (dt.datetime(dt.MINYEAR, 1, 1) - _PG_EPOCH_NAIVE) // dt.timedelta(microseconds=1)
_MAX_MICROS = (_INF_NAIVE - _PG_EPOCH_NAIVE) // dt.timedelta(microseconds=1)
_MIN_DAYS = dt.date(dt.MINYEAR, 1, 1).toordinal() - _PG_EPOCH_ORDINAL
_MAX_DAYS = _INF_DATE.toordinal() - _PG_EPOCH_ORDINAL


def _check_micros(micros: int) -> None:
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        raise ValueError("timestamp out of Python's range (years 1-9999)")


def _timestamp_decoder(ext_code: int) -> Decoder:
    """timestamp and timestamptz alike: their ext type, or asyncpg's naive infinities (it
    gives timestamptz's naive too)."""

    def decode(b: bytearray, p: int, n: int) -> Any:
        micros = _I64.unpack_from(b, p)[0]
        if micros == _INT64_MAX:
            return _INF_NAIVE
        if micros == _INT64_MIN:
            return _NEG_INF_NAIVE
        _check_micros(micros)
        return _new_tuple(_ExtType, (ext_code, _I64.pack(micros + _PG_EPOCH_MICROS)))

    return decode


_timestamptz = _timestamp_decoder(_EXT_TIMESTAMPTZ)
_timestamp = _timestamp_decoder(_EXT_TIMESTAMP)


def _date(b: bytearray, p: int, n: int) -> Any:
    days = _i32_from(b, p)[0]
    if days == _INT32_MAX:
        return _INF_DATE
    if days == _INT32_MIN:
        return _NEG_INF_DATE
    if not _MIN_DAYS <= days <= _MAX_DAYS:
        raise ValueError("date out of Python's range (years 1-9999)")
    return _new_tuple(_ExtType, (_EXT_DATE, I32.pack(days + _PG_EPOCH_DAYS)))


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
    114: (0, _text),  # json: asyncpg returns the text
    700: (1, _float4),
    701: (1, _float8),
    1042: (1, _text),  # bpchar
    1043: (1, _text),  # varchar
    1082: (1, _date),
    1114: (1, _timestamp),
    1184: (1, _timestamptz),
    1700: (0, _numeric_text),
    2950: (1, _uuid),
    3802: (0, _text),  # jsonb
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


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _enc_timestamptz(v: Any) -> bytes:
    if type(v) is not dt.datetime or v.tzinfo is None or v.utcoffset() is None:
        raise Unsupported  # naive values: asyncpg's own rules apply
    micros = _micros(v - _PG_EPOCH_UTC)
    if micros in (_MIN_MICROS, _MAX_MICROS):
        raise Unsupported  # asyncpg sends Python's first and last instants as -infinity/infinity
    return _I64.pack(micros)


def _enc_timestamp(v: Any) -> bytes:
    if type(v) is not dt.datetime or v.tzinfo is not None or v in (_INF_NAIVE, _NEG_INF_NAIVE):
        raise Unsupported
    return _I64.pack(_micros(v - _PG_EPOCH_NAIVE))


def _enc_date(v: Any) -> bytes:
    if type(v) is not dt.date or v in (_INF_DATE, _NEG_INF_DATE):
        raise Unsupported
    return I32.pack(v.toordinal() - _PG_EPOCH_ORDINAL)


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
    114: (0, _enc_text),
    700: (1, _enc_float(_F32)),
    701: (1, _enc_float(_F64)),
    1042: (1, _enc_text),
    1043: (1, _enc_text),
    1082: (1, _enc_date),
    1114: (1, _enc_timestamp),
    1184: (1, _enc_timestamptz),
    1700: (0, _enc_numeric),
    2950: (1, _enc_uuid),
    3802: (0, _enc_text),
}
_ENUM_PARAM: tuple[int, Encoder] = (1, _enc_text)


# ---- messages ------------------------------------------------------------------------------

SYNC = b"S\x00\x00\x00\x04"
EXECUTE_ALL_SYNC = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + SYNC  # unnamed portal, all rows


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
    columns: list[str]
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


def make_statement(
    name: str, sql: str, param_oids: list[int], columns: list[tuple[str, int]], enums: set[int]
) -> Statement:
    names = [c[0] for c in columns]
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
    )  # fmt: skip
