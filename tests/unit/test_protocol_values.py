"""Every PostgreSQL value type survives encode -> decode exactly (type and value)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol
from protocol.values import ExtCode, ext_default, ext_hook

aware_zones = st.builds(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
# Aware datetimes are carried in UTC, so stay a day inside datetime's range.
aware_datetimes = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=aware_zones
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False)
    | st.datetimes()
    | aware_datetimes
    | st.dates()
    | st.times()
    | st.builds(lambda t, z: t.replace(tzinfo=z), st.times(), aware_zones)
    | st.uuids()
    | st.timedeltas()
    | st.builds(protocol.Json, json_values)
    | st.builds(protocol.ObjectId, st.binary(min_size=12, max_size=12))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equal in type and value; Decimals compared by text (so 1.0 != 1.00), datetimes by
    instant and awareness."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime | dt.time):
        return a == b and (a.utcoffset() is None) == (b.utcoffset() is None)
    return bool(a == b)


def roundtrip(value: Any) -> Any:
    frame = protocol.encode(protocol.Query(1, "select $1", [value]))
    (message,) = protocol.FrameDecoder().feed(frame)
    assert isinstance(message, protocol.Query)
    return message.params[0]


@given(values)
def test_values_roundtrip_exactly(value: Any) -> None:
    assert same(roundtrip(value), value)


@pytest.mark.parametrize(
    "value",
    [
        Decimal("12345678901234567890123456789.000000001"),
        Decimal("-0.00"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        2**64,
        -(2**63) - 1,
        2**63 - 1,
        2**64 - 1,
        dt.datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 26, 12, 0, 0, 123456),
        dt.date(1, 1, 1),
        dt.date(9999, 12, 31),
        dt.time(23, 59, 59, 999999),
        dt.timedelta(days=-999999999),
        uuid.UUID(int=0),
        b"\x00\xff",
        [[1, [2, None]], []],
        protocol.Json([1, 2]),
        protocol.Json(None),
    ],
)
def test_edge_values(value: Any) -> None:
    assert same(roundtrip(value), value)


def test_decimal_nan_roundtrips() -> None:
    assert roundtrip(Decimal("NaN")).is_nan()


def test_aware_datetime_is_returned_in_utc() -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    value = dt.datetime(2026, 1, 1, 9, 0, tzinfo=tokyo)
    decoded = roundtrip(value)
    assert decoded == value
    assert decoded.utcoffset() == dt.timedelta(0)


def test_json_array_is_distinct_from_postgres_array() -> None:
    assert type(roundtrip(protocol.Json([1]))) is protocol.Json
    assert type(roundtrip([1])) is list


def test_unknown_ext_passes_through() -> None:
    assert ext_hook(99, b"abc") == msgpack.ExtType(99, b"abc")


def test_ext_codes_are_unique() -> None:
    assert len({c.value for c in ExtCode}) == len(ExtCode)


def test_unencodable_value_raises_encode_error() -> None:
    with pytest.raises(protocol.EncodeError):
        protocol.encode(protocol.Query(1, "select $1", [{1, 2}]))
    with pytest.raises(protocol.EncodeError):
        protocol.encode(protocol.Query(1, "select $1", [object()]))
    with pytest.raises(TypeError):
        ext_default(object())


def test_bigint_wire_form_is_decimal_text() -> None:
    ext = ext_default(2**70)
    assert ext == msgpack.ExtType(ExtCode.BIGINT, str(2**70).encode())


def test_uuid_wire_form_is_the_16_bytes_and_a_bad_payload_is_malformed() -> None:
    value = uuid.UUID("0190a1b2-c3d4-8e01-8123-456789abcdef")
    assert ext_default(value) == msgpack.ExtType(ExtCode.UUID, value.bytes)
    assert protocol.encode(protocol.Query(1, "s", [value])) == protocol.encode(
        protocol.Query(1, "s", [msgpack.ExtType(ExtCode.UUID, value.bytes)])
    )
    decoded = ext_hook(ExtCode.UUID, value.bytes)
    assert type(decoded) is uuid.UUID and decoded == value and str(decoded) == str(value)
    assert decoded.is_safe is uuid.SafeUUID.unknown and hash(decoded) == hash(value)
    with pytest.raises(ValueError):
        ext_hook(ExtCode.UUID, b"\x01" * 15)


def test_uuid_subclass_encodes_like_a_uuid() -> None:
    class MyUUID(uuid.UUID):
        pass

    value = MyUUID(int=12345)
    assert ext_default(value) == msgpack.ExtType(ExtCode.UUID, value.bytes)
