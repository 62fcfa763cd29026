"""How PostgreSQL (and document-store) values map onto MessagePack: native types where they are
exact, and a small table of ext types (documented in PROTOCOL.md section 4) where they are not.
The Python classes of the values that need one are in valuetypes.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
import uuid
from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgpack

from protocol.valuetypes import Infinity, Interval, Json, ObjectId, Point, Range

__all__ = [
    "ExtCode",
    "Infinity",
    "Interval",
    "Json",
    "ObjectId",
    "Point",
    "Range",
    "ext_default",
    "ext_hook",
]


class ExtCode(IntEnum):
    """MessagePack ext type codes used by the protocol (application range 0..127)."""

    DECIMAL = 1  # numeric: ASCII text of the Decimal, e.g. b"-12.50", b"NaN", b"Infinity"
    TIMESTAMPTZ = 2  # int64 BE microseconds since 1970-01-01T00:00:00Z (int64 max/min: +-inf)
    TIMESTAMP = 3  # naive timestamp: int64 BE microseconds since 1970-01-01T00:00:00 (same)
    DATE = 4  # int32 BE days since 1970-01-01 (int32 max/min: +-infinity)
    TIME = 5  # naive time: int64 BE microseconds since midnight
    TIMETZ = 6  # int64 BE microseconds since midnight, then int32 BE UTC offset in seconds
    UUID = 7  # the 16 raw bytes
    INTERVAL = 8  # timedelta: int32 BE days, int32 BE seconds, int32 BE microseconds
    JSON = 9  # json/jsonb: UTF-8 JSON text
    BIGINT = 10  # an integer outside int64/uint64: ASCII decimal text, e.g. b"-123..."
    OBJECT_ID = 11  # document-store ObjectId: the 12 raw bytes
    INET = 12  # inet: the 4 or 16 address bytes, then 1 byte of prefix length
    CIDR = 13  # cidr: the same layout (host bits zero)
    INTERVAL_MONTHS = 14  # interval with months: int32 BE months, int32 BE days, int64 BE us
    POINT = 15  # point: float64 BE x, float64 BE y
    RANGE = 16  # range: a MessagePack array [lower, upper, bounds], bounds "[)" ... or "empty"


_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_EPOCH_DATE_ORDINAL = dt.date(1970, 1, 1).toordinal()
_Q = struct.Struct(">q")
_I = struct.Struct(">i")
_QI = struct.Struct(">qi")
_III = struct.Struct(">iii")
_IIQ = struct.Struct(">iiq")
_DD = struct.Struct(">dd")
_MICROS_PER_DAY = 86_400_000_000
# PostgreSQL's own +-infinity: the extreme int64 (timestamps) and int32 (dates).
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
_INFINITY_PAYLOADS = {
    Infinity("timestamptz"): (ExtCode.TIMESTAMPTZ, _Q.pack(INT64_MAX)),
    Infinity("timestamptz", True): (ExtCode.TIMESTAMPTZ, _Q.pack(INT64_MIN)),
    Infinity("timestamp"): (ExtCode.TIMESTAMP, _Q.pack(INT64_MAX)),
    Infinity("timestamp", True): (ExtCode.TIMESTAMP, _Q.pack(INT64_MIN)),
    Infinity("date"): (ExtCode.DATE, _I.pack(INT32_MAX)),
    Infinity("date", True): (ExtCode.DATE, _I.pack(INT32_MIN)),
}
_IP_ADDRESS = (ipaddress.IPv4Address, ipaddress.IPv6Address)
_IP_INTERFACE = (ipaddress.IPv4Interface, ipaddress.IPv6Interface)
_IP_NETWORK = (ipaddress.IPv4Network, ipaddress.IPv6Network)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time_micros(value: dt.time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


# A UUID is the commonest non-native value (every primary key), so it skips the isinstance
# chain below, and its ExtType is built without ExtType.__new__'s checks (code and payload are
# known to be valid here): the same tuple, at half the cost.
_UUID_TYPE = uuid.UUID
_EXT_UUID = int(ExtCode.UUID)
_EXT_TIMESTAMPTZ = int(ExtCode.TIMESTAMPTZ)
_timedelta = dt.timedelta
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
    if isinstance(obj, Infinity):
        return msgpack.ExtType(*_INFINITY_PAYLOADS[obj])
    if isinstance(obj, Interval):
        return msgpack.ExtType(ExtCode.INTERVAL_MONTHS,
                               _IIQ.pack(obj.months, obj.days, obj.microseconds))
    # An interface before an address: ipaddress makes IPv4Interface a subclass of IPv4Address.
    if isinstance(obj, _IP_INTERFACE):
        return msgpack.ExtType(ExtCode.INET, obj.packed + bytes((obj.network.prefixlen,)))
    if isinstance(obj, _IP_ADDRESS):
        return msgpack.ExtType(ExtCode.INET, obj.packed + bytes((obj.max_prefixlen,)))
    if isinstance(obj, _IP_NETWORK):
        return msgpack.ExtType(ExtCode.CIDR,
                               obj.network_address.packed + bytes((obj.prefixlen,)))
    if isinstance(obj, Point):
        return msgpack.ExtType(ExtCode.POINT, _DD.pack(obj.x, obj.y))
    if isinstance(obj, Range) or _is_foreign_range(obj):
        return msgpack.ExtType(ExtCode.RANGE, _range_payload(obj))
    if isinstance(obj, (set, frozenset)):
        raise TypeError("sets have no wire form; pass a list")
    raise TypeError(f"cannot encode a value of type {type(obj).__name__}")


def _is_foreign_range(obj: Any) -> bool:
    """A driver's range object (asyncpg.Range): recognised by its attributes, so this module
    needs no driver."""
    return hasattr(obj, "isempty") and hasattr(obj, "lower_inc") and hasattr(obj, "upper_inc")


def _range_payload(obj: Any) -> bytes:
    bounds: str
    if isinstance(obj, Range):
        lower, upper, bounds = obj.lower, obj.upper, obj.bounds
    elif obj.isempty:
        lower, upper, bounds = None, None, "empty"
    else:
        lower, upper = obj.lower, obj.upper
        bounds = ("[" if obj.lower_inc and lower is not None else "(") + (
            "]" if obj.upper_inc and upper is not None else ")"
        )
    return msgpack.packb([lower, upper, bounds], default=ext_default, use_bin_type=True)


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


def _decode_timestamp(data: bytes, epoch: dt.datetime, type_name: str) -> Any:
    (micros,) = _Q.unpack(data)
    if micros == INT64_MAX:
        return Infinity(type_name)  # type: ignore[arg-type]
    if micros == INT64_MIN:
        return Infinity(type_name, True)  # type: ignore[arg-type]
    return epoch + dt.timedelta(microseconds=micros)


def _decode_date(data: bytes) -> Any:
    (days,) = _I.unpack(data)
    if days == INT32_MAX:
        return Infinity("date")
    if days == INT32_MIN:
        return Infinity("date", True)
    return dt.date.fromordinal(days + _EPOCH_DATE_ORDINAL)


def _split_address(data: bytes) -> tuple[bytes, int]:
    if len(data) not in (5, 17):
        raise ValueError("an inet or cidr is 4 or 16 address bytes and a prefix length")
    return data[:-1], data[-1]


def _decode_inet(data: bytes) -> Any:
    address, prefix = _split_address(data)
    if prefix == len(address) * 8:
        return ipaddress.ip_address(address)
    return ipaddress.ip_interface((address, prefix))


def _decode_cidr(data: bytes) -> Any:
    address, prefix = _split_address(data)
    return ipaddress.ip_network((address, prefix))


def _decode_range(data: bytes) -> Range:
    items = msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=True)
    if type(items) is not list or len(items) != 3:
        raise ValueError("a range is [lower, upper, bounds]")
    bounds: Any = items[2]  # Range checks it is one of the five
    return Range(items[0], items[1], bounds)


def _decode_json(data: bytes) -> Json:
    return Json.from_text(data.decode("utf-8"))


def ext_hook(code: int, data: bytes) -> Any:
    """msgpack `ext_hook=`: decode our ext types. Unknown codes stay as msgpack.ExtType so a
    newer peer's values pass through; a bad payload raises (and the frame is malformed)."""
    if code == _EXT_UUID:
        return _decode_uuid(data)
    if code == _EXT_TIMESTAMPTZ:  # the next commonest (created_at, updated_at, ...)
        (micros,) = _Q.unpack(data)
        if micros != INT64_MAX and micros != INT64_MIN:
            return _EPOCH_UTC + _timedelta(microseconds=micros)
    decode = _DECODERS.get(code)
    if decode is None:
        return msgpack.ExtType(code, data)
    return decode(data)


_DECODERS: dict[int, Any] = {
    ExtCode.TIMESTAMPTZ: lambda data: _decode_timestamp(data, _EPOCH_UTC, "timestamptz"),
    ExtCode.DECIMAL: _decode_decimal,
    ExtCode.TIMESTAMP: lambda data: _decode_timestamp(data, _EPOCH_NAIVE, "timestamp"),
    ExtCode.DATE: _decode_date,
    ExtCode.TIME: _decode_time,
    ExtCode.TIMETZ: _decode_timetz,
    ExtCode.INTERVAL: lambda data: dt.timedelta(*_III.unpack(data)),
    ExtCode.JSON: _decode_json,
    ExtCode.BIGINT: _decode_bigint,
    ExtCode.OBJECT_ID: lambda data: ObjectId(bytes(data)),
    ExtCode.INET: _decode_inet,
    ExtCode.CIDR: _decode_cidr,
    ExtCode.INTERVAL_MONTHS: lambda data: Interval(*_IIQ.unpack(data)),
    ExtCode.POINT: lambda data: Point(*_DD.unpack(data)),
    ExtCode.RANGE: _decode_range,
}
