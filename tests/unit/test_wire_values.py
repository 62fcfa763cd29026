"""The value forms PROTOCOL.md section 4 gives the types PostgreSQL returns beyond the first
table (inet, cidr, intervals with months, points, ranges, +-infinity), JSON as ext 9 both
ways, the reply's column types, and how the router turns PostgreSQL's binary forms into them
(router/backend/wirevalues.py). Pure: no sockets, no database."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import struct
from decimal import Decimal
from typing import Any

import msgpack
import pytest

import protocol as p
from protocol.values import ExtCode, ext_default, ext_hook
from router.backend.wirevalues import (
    Columns,
    ResultValueError,
    column_type,
    date_value,
    interval_triple,
    interval_value,
    json_text,
    name_unencodable,
    time_value,
    timestamp_micros,
    timestamp_value,
    timestamptz_micros,
    timetz_value,
)


def wire(value: Any) -> bytes:
    return msgpack.packb(value, default=ext_default, use_bin_type=True)


def back(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=True)


def roundtrip(value: Any) -> Any:
    return back(wire(value))


@pytest.mark.parametrize(
    "value",
    [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_interface("10.0.0.7/8"),
        ipaddress.ip_interface("2001:db8::7/64"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        p.Interval(14, -3, 5_000_001),
        p.Point(1.5, -2.25),
        p.Range(1, 5, "[)"),
        p.Range(None, Decimal("2.50"), "(]"),
        p.Range(dt.date(2020, 1, 1), None, "[)"),
        p.Range.empty(),
        p.Range(p.Infinity("timestamptz", negative=True),
                dt.datetime(2020, 1, 1, tzinfo=dt.UTC), "()"),
        p.Infinity("timestamptz"),
        p.Infinity("timestamp", negative=True),
        p.Infinity("date"),
        [p.Range(1, 2, "[]"), p.Range(5, 6, "[)")],  # a multirange: an array of ranges
    ],
)
def test_new_forms_survive_the_wire_with_their_type(value: Any) -> None:
    got = roundtrip(value)
    assert got == value and type(got) is type(value)


def test_inet_cidr_and_infinity_payloads_are_as_documented() -> None:
    inet = ext_default(ipaddress.ip_interface("192.168.1.5/24"))
    assert (inet.code, inet.data) == (ExtCode.INET, bytes([192, 168, 1, 5, 24]))
    cidr = ext_default(ipaddress.ip_network("10.0.0.0/8"))
    assert (cidr.code, cidr.data) == (ExtCode.CIDR, bytes([10, 0, 0, 0, 8]))
    assert ext_default(p.Infinity("timestamptz")) == msgpack.ExtType(2, struct.pack(">q", 2**63 - 1))
    assert ext_default(p.Infinity("date", True)) == msgpack.ExtType(4, struct.pack(">i", -(2**31)))
    months = ext_default(p.Interval(1, 2, 3))
    assert (months.code, months.data) == (ExtCode.INTERVAL_MONTHS, struct.pack(">iiq", 1, 2, 3))
    rng = ext_default(p.Range(1, 5))
    assert rng.code == ExtCode.RANGE and msgpack.unpackb(rng.data) == [1, 5, "[)"]


class DriverRange:
    """What asyncpg.Range looks like: the wire takes any range by these attributes."""

    def __init__(self, lower: Any, upper: Any, lower_inc: bool, upper_inc: bool,
                 empty: bool = False) -> None:
        self.lower, self.upper = lower, upper
        self.lower_inc, self.upper_inc, self.isempty = lower_inc, upper_inc, empty


def test_a_drivers_range_object_goes_as_a_range() -> None:
    assert roundtrip(DriverRange(1, 10, True, False)) == p.Range(1, 10, "[)")
    assert roundtrip(DriverRange(None, 10, False, True)) == p.Range(None, 10, "(]")
    assert roundtrip(DriverRange(None, None, False, False, empty=True)) == p.Range.empty()


def test_a_range_with_bad_bounds_is_refused() -> None:
    with pytest.raises(ValueError):
        p.Range(1, 2, "[[")  # type: ignore[arg-type]
    bad = msgpack.ExtType(ExtCode.RANGE, msgpack.packb([1, 2, "{}"]))
    with pytest.raises(p.MalformedFrame):
        p.decode_body(msgpack.packb([p.MessageType.ROWS, 1, ["r"], [[bad]], "SELECT 1", None,
                                     None]))


def test_json_ext_9_keeps_its_text_both_ways() -> None:
    """A json column keeps its spacing and key order: the router passes the text through,
    and a Json that came off the wire goes back as that same text."""
    text = '{"b":  [1, 2], "a": 1}'
    doc = back(wire(msgpack.ExtType(ExtCode.JSON, text.encode())))
    assert isinstance(doc, p.Json) and doc.value == {"b": [1, 2], "a": 1}
    assert doc.dumps() == text
    assert ext_default(doc).data == text.encode()
    assert json_text(doc) == text
    assert json_text('{"raw": true}') == '{"raw": true}'  # a str is JSON text already
    assert p.Json([1, 2]).dumps() == "[1,2]"
    with pytest.raises(TypeError):
        json_text({"not": "wrapped"})


def test_infinity_keeps_its_type_and_the_last_instant_stays_an_instant() -> None:
    """Bug: 'infinity'::timestamptz came back as ext 3 (a naive timestamp) 9999-12-31."""
    for code, name in ((ExtCode.TIMESTAMPTZ, "timestamptz"), (ExtCode.TIMESTAMP, "timestamp")):
        value = timestamp_value(2**63 - 1, code)
        assert value.code == code
        assert ext_hook(*value) == p.Infinity(name)  # type: ignore[arg-type]
        assert ext_hook(*timestamp_value(-(2**63), code)) == p.Infinity(name, True)  # type: ignore[arg-type]
    assert ext_hook(*date_value(2**31 - 1)) == p.Infinity("date")
    last = dt.datetime.max.replace(tzinfo=dt.UTC)
    assert timestamptz_micros(last) != 2**63 - 1
    assert timestamptz_micros(p.Infinity("timestamptz")) == 2**63 - 1
    assert timestamp_micros(p.Infinity("timestamp", True)) == -(2**63)
    with pytest.raises(TypeError):
        timestamptz_micros(p.Infinity("date"))


def test_values_python_cannot_hold_fail_by_name() -> None:
    with pytest.raises(ResultValueError, match="time"):
        time_value(86_400_000_000)  # PostgreSQL's 24:00:00
    with pytest.raises(ResultValueError):
        timestamp_value(10_000 * 366 * 86_400_000_000, ExtCode.TIMESTAMP)
    error = ResultValueError("time", "24:00:00 is past Python's last time of day")
    error.column = "closes_at"
    assert "'closes_at'" in str(error) and "time" in str(error) and "ran" in str(error)


def test_intervals_with_months_are_exact_and_others_stay_timedeltas() -> None:
    assert interval_value(0, 1, 7_200_000_000) == dt.timedelta(days=1, hours=2)
    assert interval_value(14, 3, 5) == p.Interval(14, 3, 5)
    assert interval_value(0, 2_000_000_000, 0) == p.Interval(0, 2_000_000_000, 0)  # too big
    assert interval_triple(dt.timedelta(days=-1, seconds=5)) == (0, -1, 5_000_000)
    assert interval_triple(p.Interval(1, 2, 3)) == (1, 2, 3)


def test_timetz_offsets_turn_from_west_to_east() -> None:
    value = timetz_value(43_200_000_000, -7200)  # PostgreSQL: 12:00+02 is 7200 s west... < 0
    assert ext_hook(*value) == dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def test_column_types_say_which_values_are_text_output() -> None:
    assert column_type("int4") == "int4"
    assert column_type("inet[]", "array") == "inet[]"
    assert column_type("int4range", "range") == "int4range"
    assert column_type("tsvector") == "text:tsvector"
    assert column_type("money") == "text:money"
    assert column_type("xml[]", "array") == "text:xml[]"
    assert column_type("user_role") == "text:user_role"  # an enum: its label


def test_rows_carry_column_types_and_an_older_reply_still_decodes() -> None:
    rows = p.Rows(3, ["a", "b"], [[1, "x"]], "SELECT 1", None, None, ["int4", "text:xml"])
    assert p.decode_body(p.encode(rows)[4:]) == rows
    old = msgpack.packb([p.MessageType.ROWS, 3, ["a"], [[1]], "SELECT 1", None, None])
    assert p.decode_body(old).column_types is None  # type: ignore[union-attr]
    wrong = msgpack.packb([p.MessageType.ROWS, 3, ["a"], [[1]], "SELECT 1", None, None, []])
    with pytest.raises(p.MalformedFrame):
        p.decode_body(wrong)


def test_protocol_md_lists_every_ext_type_and_the_worked_reply_with_column_types() -> None:
    from pathlib import Path

    text = Path(__file__).resolve().parents[2].joinpath("PROTOCOL.md").read_text()
    values = text[text.index("## 4. Values") : text.index("## 5.")]
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", values, re.MULTILINE)}
    assert listed == {int(code) for code in ExtCode}
    route = p.RouteInfo("europe", "eu-r1", p.Role.REPLICA)
    reply = p.encode_rows(2, ["name"], [["Ada"]], "SELECT 1", route, None, ["text"])
    assert " ".join(f"{b:02x}" for b in reply) in " ".join(text.split())


def test_a_reply_that_cannot_be_encoded_names_the_column() -> None:
    """#12: a value the wire has no form for names its column, not just its Python type."""
    columns = Columns(["n", "odd"], ["int4", "text:odd"])
    named = name_unencodable(p.EncodeError("cannot encode message"), columns,
                             [[1, "fine"], [2, object()]])
    assert named is not None and "'odd'" in named.message and "text:odd" in named.message
    assert name_unencodable(p.EncodeError("too large"), columns, [[1, "x"]]) is None


def test_a_requests_timeout_goes_to_the_server_only_below_the_sessions_own() -> None:
    from router.backend.pipeline import Pipeline
    from router.config import DatabaseConfig, NodeAddress

    address = NodeAddress("127.0.0.1", 1, "d")
    pipeline = Pipeline("n", address, DatabaseConfig(), {"statement_timeout": "30000"})
    assert pipeline._server_timeout(100) == 100
    assert pipeline._server_timeout(30_000) is None  # not above the router's own limit
    assert pipeline._server_timeout(None) is None and pipeline._server_timeout(0) is None
    unlimited = Pipeline("n", address, DatabaseConfig(), {})
    assert unlimited._server_timeout(2**40) == 2**31 - 1  # PostgreSQL's largest
