"""How PostgreSQL (and document-store) values map onto MessagePack: native types where they are
exact, and a small table of ext types (documented in PROTOCOL.md) where they are not."""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgpack

__all__ = ["ExtCode", "Json", "ObjectId", "ext_default", "ext_hook"]


class ExtCode(IntEnum):
    """MessagePack ext type codes used by the protocol (application range 0..127)."""

    DECIMAL = 1  # numeric: ASCII text of the Decimal, e.g. b"-12.50", b"NaN", b"Infinity"
    TIMESTAMPTZ = 2  # int64 BE microseconds since 1970-01-01T00:00:00Z
    TIMESTAMP = 3  # naive timestamp: int64 BE microseconds since 1970-01-01T00:00:00
    DATE = 4  # int32 BE days since 1970-01-01
    TIME = 5  # naive time: int64 BE microseconds since midnight
    TIMETZ = 6  # int64 BE microseconds since midnight, then int32 BE UTC offset in seconds
    UUID = 7  # the 16 raw bytes
    INTERVAL = 8  # timedelta: int32 BE days, int32 BE seconds, int32 BE microseconds
    JSON = 9  # json/jsonb: UTF-8 JSON text
    BIGINT = 10  # an integer outside int64/uint64: ASCII decimal text, e.g. b"-123..."
    OBJECT_ID = 11  # document-store ObjectId: the 12 raw bytes


@dataclass(frozen=True, slots=True)
class Json:
    """A json/jsonb value. Wrapped so a JSON array is never confused with a PostgreSQL array
    (plain lists) and a JSON object never with a msgpack map."""

    value: Any

    def dumps(self) -> str:
        return json.dumps(self.value, separators=(",", ":"), ensure_ascii=False)


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


_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_EPOCH_DATE_ORDINAL = dt.date(1970, 1, 1).toordinal()
_Q = struct.Struct(">q")
_I = struct.Struct(">i")
_QI = struct.Struct(">qi")
_III = struct.Struct(">iii")
_MICROS_PER_DAY = 86_400_000_000


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time_micros(value: dt.time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


# A UUID is the commonest non-native value (every primary key), so it skips the isinstance
# chain below, and its ExtType is built without ExtType.__new__'s checks (code and payload are
# known to be valid here): the same tuple, at half the cost.
_UUID_TYPE = uuid.UUID
_EXT_UUID = int(ExtCode.UUID)
_new_tuple = tuple.__new__
_ExtType = msgpack.ExtType


def ext_default(obj: Any) -> msgpack.ExtType:
    """msgpack `default=`: turn a non-native value into an ExtType, or raise TypeError."""
    if type(obj) is _UUID_TYPE:
        return _new_tuple(_ExtType, (_EXT_UUID, obj.bytes))
    # datetime before date: datetime is a subclass of date.
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is not None and obj.utcoffset() is not None:
            return msgpack.ExtType(ExtCode.TIMESTAMPTZ, _Q.pack(_micros(obj - _EPOCH_UTC)))
        return msgpack.ExtType(ExtCode.TIMESTAMP, _Q.pack(_micros(obj - _EPOCH_NAIVE)))
    if isinstance(obj, Decimal):
        return msgpack.ExtType(ExtCode.DECIMAL, str(obj).encode("ascii"))
    if isinstance(obj, int):  # only reached for ints msgpack cannot hold in 64 bits
        return msgpack.ExtType(ExtCode.BIGINT, str(int(obj)).encode("ascii"))
    if isinstance(obj, dt.date):
        return msgpack.ExtType(ExtCode.DATE, _I.pack(obj.toordinal() - _EPOCH_DATE_ORDINAL))
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(ExtCode.UUID, obj.bytes)
    if isinstance(obj, dt.time):
        offset = obj.utcoffset()
        if offset is not None:
            seconds = offset.days * 86_400 + offset.seconds
            return msgpack.ExtType(ExtCode.TIMETZ, _QI.pack(_time_micros(obj), seconds))
        return msgpack.ExtType(ExtCode.TIME, _Q.pack(_time_micros(obj)))
    if isinstance(obj, dt.timedelta):
        return msgpack.ExtType(ExtCode.INTERVAL, _III.pack(obj.days, obj.seconds, obj.microseconds))
    if isinstance(obj, Json):
        return msgpack.ExtType(ExtCode.JSON, obj.dumps().encode("utf-8"))
    if isinstance(obj, ObjectId):
        return msgpack.ExtType(ExtCode.OBJECT_ID, obj.binary)
    if isinstance(obj, (set, frozenset)):
        raise TypeError("sets have no wire form; pass a list")
    raise TypeError(f"cannot encode a value of type {type(obj).__name__}")


def _decode_timetz(data: bytes) -> dt.time:
    micros, offset = _QI.unpack(data)
    if not 0 <= micros < _MICROS_PER_DAY:
        raise ValueError("time out of range")
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    tz = dt.timezone(dt.timedelta(seconds=offset))
    return dt.time(hour, minute, second, micro, tzinfo=tz)


def _decode_time(data: bytes) -> dt.time:
    (micros,) = _Q.unpack(data)
    if not 0 <= micros < _MICROS_PER_DAY:
        raise ValueError("time out of range")
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return dt.time(hour, minute, second, micro)


def _decode_decimal(data: bytes) -> Decimal:
    text = data.decode("ascii")
    # Decimal() also accepts whitespace and underscores; the wire form has neither.
    if not text or text != text.strip() or "_" in text:
        raise ValueError("not a canonical decimal")
    return Decimal(text)


def _decode_bigint(data: bytes) -> int:
    text = data.decode("ascii")
    if not text or len(text) > 4300 or not text.lstrip("-").isdigit():
        raise ValueError("not a decimal integer")
    return int(text)


_new_object = object.__new__
_set_attribute = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _decode_uuid(data: bytes) -> uuid.UUID:
    # What uuid.UUID(bytes=data) builds, without its argument parsing (a UUID per row on the
    # client's hot path).
    if len(data) != 16:
        raise ValueError("a uuid is exactly 16 bytes")
    value = _new_object(_UUID_TYPE)
    _set_attribute(value, "int", int.from_bytes(data, "big"))
    _set_attribute(value, "is_safe", _SAFE_UNKNOWN)
    return value


def ext_hook(code: int, data: bytes) -> Any:
    """msgpack `ext_hook=`: decode our ext types. Unknown codes stay as msgpack.ExtType so a
    newer peer's values pass through; a bad payload raises (and the frame is malformed)."""
    if code == _EXT_UUID:
        return _decode_uuid(data)
    if code == ExtCode.TIMESTAMPTZ:
        return _EPOCH_UTC + dt.timedelta(microseconds=_Q.unpack(data)[0])
    if code == ExtCode.DECIMAL:
        return _decode_decimal(data)
    if code == ExtCode.TIMESTAMP:
        return _EPOCH_NAIVE + dt.timedelta(microseconds=_Q.unpack(data)[0])
    if code == ExtCode.DATE:
        return dt.date.fromordinal(_I.unpack(data)[0] + _EPOCH_DATE_ORDINAL)
    if code == ExtCode.TIME:
        return _decode_time(data)
    if code == ExtCode.TIMETZ:
        return _decode_timetz(data)
    if code == ExtCode.INTERVAL:
        days, seconds, micros = _III.unpack(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == ExtCode.JSON:
        return Json(json.loads(data.decode("utf-8")))
    if code == ExtCode.BIGINT:
        return _decode_bigint(data)
    if code == ExtCode.OBJECT_ID:
        return ObjectId(bytes(data))
    return msgpack.ExtType(code, data)
