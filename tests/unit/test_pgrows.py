"""router/backend/pgrows.py: the compiled DataRow decoder (_rowdecode.c) is the one in use, and it
gives exactly what the Python one gives: the same rows, the same failed requests, the same lost
streams, for random rows of every type the pipeline carries (valid, odd, malformed), whole or
split across reads. Bytes only; no server."""

from __future__ import annotations

import asyncio
import gc
import os
import struct
import subprocess
import sys
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.backend import pgrows, pgwire
from router.backend.pgtypes import _ENUM_RESULT, _RESULT, Decoder, Statement, make_statement
from router.backend.wirevalues import ResultValueError
from tests.support.ci import missing
from tests.unit.test_pgwire import data_row, msg, ready, started_connection

REPO = Path(__file__).resolve().parents[2]
ENUM_OID = 90001

QUICK = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG = settings(max_examples=20000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def compiled() -> pgrows.RowsDecoder:
    try:
        return pgrows.compiled_decoder()
    except ImportError as exc:
        missing(f"the compiled row decoder is not built ({exc}): make venv builds it")


# ---- the one in use ---------------------------------------------------------------------------


def test_the_compiled_decoder_is_the_one_in_use() -> None:
    """Where the tests run (CI included), the pipelined connections read rows with the compiled
    decoder, built from the source as it is now: a build that failed or went stale must not
    leave the suite testing only the Python one."""
    if os.environ.get(pgrows.ROW_DECODER_ENV, "").lower() == "python":
        missing(f"{pgrows.ROW_DECODER_ENV}=python forces the Python decoder")
    try:
        from router.backend import _rowdecode
    except ImportError as exc:  # the build found no C compiler or no Python headers
        missing(f"the compiled row decoder is not built ({exc}): make venv builds it")

    assert pgrows.IMPLEMENTATION == "c"
    assert pgwire._decode_rows is _rowdecode.decode_rows
    built = Path(_rowdecode.__file__)
    source = REPO / "router" / "backend" / "_rowdecode.c"
    assert built.stat().st_mtime >= source.stat().st_mtime, (
        f"{built.name} is older than {source.name}: rebuild it (make venv, or pip install -e .)")


@pytest.mark.parametrize(("wanted", "expect"), [("python", "python"), ("c", "c"), ("", "c"),
                                                ("rust", None)])
def test_the_environment_chooses_the_decoder(wanted: str, expect: str | None) -> None:
    if expect == "c":
        compiled()
    env = {**os.environ, pgrows.ROW_DECODER_ENV: wanted}
    run = subprocess.run(
        [sys.executable, "-c", "from router.backend import pgrows; print(pgrows.IMPLEMENTATION)"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    if expect is None:
        assert run.returncode != 0 and "expected 'c' or 'python'" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == expect


# ---- random rows --------------------------------------------------------------------------------


def _reversed_bytes(b: bytearray, p: int, n: int) -> bytes:
    """A decoder the compiled one does not know (it calls it), failing on some values."""
    if n == 3:
        raise ResultValueError("custom", "three bytes are not allowed")
    if n == 5:
        raise KeyError("a decoder's bug: the stream is lost")
    return bytes(b[p : p + n])[::-1]


# Every column decoder the pipeline uses, an enum's, and one the compiled decoder calls.
DECODERS: dict[int, Decoder] = {oid: dec for oid, (_, dec) in _RESULT.items()}
DECODERS[ENUM_OID] = _ENUM_RESULT[1]
DECODERS[0] = _reversed_bytes

_I64_EDGES = [-(2**63), 2**63 - 1, 0, -1, -211_813_488_000_000_000, 252_455_615_999_999_999,
              -211_813_488_000_000_001, 252_455_616_000_000_000]
_I32_EDGES = [-(2**31), 2**31 - 1, 0, -730_119, 2_921_939, -730_120, 2_921_940]


def _valid(oid: int) -> st.SearchStrategy[bytes]:
    """Values of type `oid` in PostgreSQL's binary (or text) form."""
    i16, i32, i64 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!q")
    if oid == 21:
        return st.integers(-(2**15), 2**15 - 1).map(i16.pack)
    if oid in (23, 1082):
        return st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(_I32_EDGES)).map(
            i32.pack)
    if oid == 26:
        return st.integers(0, 2**32 - 1).map(struct.Struct("!I").pack)
    if oid in (20, 1114, 1184):
        return st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(_I64_EDGES)).map(
            i64.pack)
    if oid == 700:
        return st.one_of(st.floats(width=32).map(struct.Struct("!f").pack), st.binary(min_size=4, max_size=4))
    if oid == 701:
        return st.one_of(st.floats().map(struct.Struct("!d").pack), st.binary(min_size=8, max_size=8))
    if oid == 16:
        return st.binary(min_size=1, max_size=1)
    if oid == 2950:
        return st.binary(min_size=16, max_size=16)
    if oid == 1700:
        return st.one_of(st.decimals(allow_nan=True).map(lambda d: str(d).encode()),
                         st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e", b""]))
    return st.text(max_size=12).map(str.encode)  # text, json, bytea, enum labels, ...


@st.composite
def values(draw: st.DrawFn, oid: int) -> bytes | None:
    """A column: NULL, a value of its type, or any bytes (odd widths, invalid UTF-8)."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return None
    if choice == 1:
        return draw(st.binary(max_size=20))
    return draw(_valid(oid))


MUTATIONS = ("none", "none", "none", "count", "trailing", "truncate", "past_end", "neg_length",
             "flip", "message_length")


@st.composite
def row_message(draw: st.DrawFn, oids: list[int]) -> bytes:
    """A DataRow message for columns `oids`, well-formed or broken in one way."""
    cells = [draw(values(oid)) for oid in oids]
    count = len(oids)
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "count":
        count += draw(st.sampled_from([-1, 1]))
    body = struct.pack("!h", count)
    for cell in cells:
        body += b"\xff\xff\xff\xff" if cell is None else struct.pack("!i", len(cell)) + cell
    if mutation == "trailing":
        body += draw(st.binary(min_size=1, max_size=4))
    elif mutation == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mutation == "past_end" and oids:
        column = draw(st.integers(0, len(oids) - 1))
        offset = 2 + sum(4 + (len(c) if c is not None else 0) for c in cells[:column])
        body = body[:offset] + struct.pack("!i", len(body) - offset + 4) + body[offset + 4 :]
    elif mutation == "neg_length" and oids:
        column = draw(st.integers(0, len(oids) - 1))
        offset = 2 + sum(4 + (len(c) if c is not None else 0) for c in cells[:column])
        body = body[:offset] + struct.pack("!i", draw(st.integers(-(2**31), -2))) + body[
            offset + 4 :]
    elif mutation == "flip" and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    if mutation == "message_length":
        return b"D" + struct.pack("!i", draw(st.sampled_from([-1, 0, 3, 2**30 + 1, 2**31 - 1])))
    return msg(b"D", body)


OIDS = sorted(DECODERS)
columns = st.lists(st.sampled_from(OIDS), max_size=5)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[int], bytes]:
    """Columns, and a stream of rows for them with other messages among them."""
    oids = draw(columns)
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            parts.append(msg(b"C", b"SELECT 1\x00"))
        elif kind == 1:
            parts.append(msg(b"N", b"SNOTICE\x00\x00"))
        else:
            parts.append(draw(row_message(oids)))
    return oids, b"".join(parts)


def canonical(value: Any) -> Any:
    """A value with its exact type, and floats and decimals by their bits or text (NaN)."""
    if isinstance(value, msgpack.ExtType):
        return ("ext", type(value), value.code, value.data, hash(value))
    if isinstance(value, float):
        return ("float", struct.pack("!d", value))
    if isinstance(value, Decimal):
        return ("decimal", str(value))
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return (type(value), value)


def failure(exc: BaseException) -> tuple[Any, ...]:
    return (type(exc), str(exc), getattr(exc, "type_name", None), getattr(exc, "sqlstate", None))


def run_stream(decode: pgrows.RowsDecoder, data: bytes,
               decoders: tuple[Decoder, ...]) -> list[Any]:
    """Reads `data` as the pipelined connection does, and what came of it: rows, failed
    values, skipped messages, a lost stream."""
    buf = bytearray(data)
    pos = 0
    events: list[Any] = []
    while len(buf) - pos >= 5:
        if buf[pos] != 68:
            length = struct.unpack_from("!i", buf, pos + 1)[0]
            if length < 4:
                events.append(("bad length", length))
                return events
            events.append(("message", chr(buf[pos])))
            pos += 1 + length
            continue
        rows: list[Any] = []
        try:
            got = decode(buf, pos, decoders, rows)
        except Exception as exc:
            events.append(("lost", failure(exc), canonical(rows)))
            return events
        events.append(("rows", canonical(rows)))
        if isinstance(got, int):
            if got == pos:  # an incomplete message: the rest waits for more bytes
                events.append(("incomplete", pos))
                return events
            pos = got
        else:
            pos, index, error = got
            events.append(("value error", pos, index, failure(error)))
    events.append(("end", pos))
    return events


@QUICK
@given(streams())
def test_both_decoders_read_any_stream_alike(stream: tuple[list[int], bytes]) -> None:
    oids, data = stream
    decoders = tuple(DECODERS[oid] for oid in oids)
    expected = run_stream(pgrows.decode_rows_python, data, decoders)
    assert run_stream(compiled(), data, decoders) == expected


@pytest.mark.chaos
@LONG
@given(streams())
def test_both_decoders_read_any_stream_alike_long(stream: tuple[list[int], bytes]) -> None:
    test_both_decoders_read_any_stream_alike.hypothesis.inner_test(stream)  # type: ignore[attr-defined]


# ---- through the pipelined connection, split across reads ----------------------------------------


def _statement(oids: list[int]) -> Statement:
    stmt = make_statement("s", "SELECT ...", [], [(f"c{i}", oid) for i, oid in enumerate(oids)],
                          {ENUM_OID})
    assert stmt.supported
    return stmt


async def _replies(decode: pgrows.RowsDecoder, oids: list[int], replies: list[bytes],
                   cuts: list[int]) -> list[Any]:
    """Each reply (its rows) answers one request; the bytes arrive cut at `cuts`."""
    old = pgwire._decode_rows
    pgwire._decode_rows = decode
    try:
        conn, _ = await started_connection()
        stmt = _statement([oid for oid in oids if oid != 0])
        futures = [conn.execute(stmt, []) for _ in replies]
        data = b"".join(msg(b"2") + reply + msg(b"C", b"SELECT 1\x00") + ready()
                        for reply in replies)
        at = 0
        for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
            conn.data_received(data[at:cut])
            at = max(at, cut)
        outcome: list[Any] = [("closed", conn.closed,
                               failure(conn.error) if conn.error is not None else None)]
        for fut in futures:
            if not fut.done():
                outcome.append("pending")
            elif fut.exception() is not None:
                exc = fut.exception()
                assert exc is not None
                outcome.append(("failed", failure(exc), getattr(exc, "column", None)))
            else:
                rows, status, _ = fut.result()
                outcome.append(("rows", canonical(rows), status))
        return outcome
    finally:
        pgwire._decode_rows = old


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[int], list[bytes], list[int]]:
    oids = [oid for oid in draw(columns) if oid != 0]  # the statement's own decoders only
    replies = [b"".join(draw(st.lists(row_message(oids), max_size=4)))
               for _ in range(draw(st.integers(1, 3)))]
    return oids, replies, draw(st.lists(st.integers(min_value=0), max_size=6))


@QUICK
@given(requests())
def test_the_pipelined_connection_answers_alike_with_either_decoder(
    case: tuple[list[int], list[bytes], list[int]],
) -> None:
    oids, replies, cuts = case
    loop = asyncio.new_event_loop()
    try:
        expected = loop.run_until_complete(
            _replies(pgrows.decode_rows_python, oids, replies, cuts))
        got = loop.run_until_complete(_replies(compiled(), oids, replies, cuts))
    finally:
        loop.close()
    assert got == expected


# ---- the compiled decoder's own care ----------------------------------------------------------------


def test_its_ext_types_are_msgpacks_own_equal_and_hashed_alike() -> None:
    """A uuid (ext 7) from C is a msgpack.ExtType as the Python decoder builds it: equal,
    hashed alike (a dict key when grouping), packed alike."""
    raw = bytes(range(16))
    dec = DECODERS[2950]
    rows_c: list[Any] = []
    rows_py: list[Any] = []
    compiled()(bytearray(data_row(raw)), 0, (dec,), rows_c)
    pgrows.decode_rows_python(bytearray(data_row(raw)), 0, (dec,), rows_py)
    (from_c,), (from_py,) = rows_c[0], rows_py[0]
    assert type(from_c) is msgpack.ExtType and from_c == from_py
    assert hash(from_c) == hash(from_py) and {from_py: 1}[from_c] == 1
    assert from_c.code == 7 and from_c.data == raw
    assert msgpack.packb(from_c) == msgpack.packb(from_py)


def test_it_neither_leaks_nor_frees_what_it_returns() -> None:
    """Many rows of every kind (values, NULLs, failed values, Python decoders): memory does
    not grow with the number of calls, and the objects it hands back stay whole."""
    decode = compiled()
    oids = [23, 25, 2950, 1114, 1082, 1700, 701, 16, 17, 3802, 0]
    decoders = tuple(DECODERS[oid] for oid in oids)
    good = data_row(struct.pack("!i", 7), b"text", bytes(16), struct.pack("!q", 5),
                    struct.pack("!i", 3), b"1.5", struct.pack("!d", 0.5), b"\x01", b"ab",
                    b"{}", b"reverse")
    nulls = data_row(*([None] * len(oids)))
    year_10000 = struct.pack("!q", 252_455_616_000_000_000)
    bad = data_row(struct.pack("!i", 7), b"text", bytes(16), year_10000, *([None] * 7))
    buf = bytearray((good + nulls + bad) * 20 + msg(b"C", b"SELECT 60\x00"))

    def read_all() -> list[Any]:
        rows: list[Any] = []
        pos = 0
        while True:
            got = decode(buf, pos, decoders, rows)
            if isinstance(got, int):
                return rows
            pos = got[0]

    for _ in range(200):  # warm up caches and free lists
        read_all()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            read_all()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 2000 runs of 60 rows"
    rows = read_all()
    gc.collect()
    assert len(rows) == 40
    assert rows[0][:3] == [7, "text", msgpack.ExtType(7, bytes(16))]
    assert rows[0][10] == b"esrever" and rows[1] == [None] * len(oids)
    # As many references to each value, and to the bytes inside an ext type, as the Python
    # decoder's rows hold to theirs: one each, the row's (or the ext type's).
    same: list[Any] = []
    pgrows.decode_rows_python(buf, 0, decoders, same)
    for ours, theirs in zip(rows[0], same[0], strict=True):
        assert sys.getrefcount(ours) == sys.getrefcount(theirs) or type(ours) in (bool, int)
    assert sys.getrefcount(rows[0][2].data) == sys.getrefcount(same[0][2].data)


def test_it_refuses_to_resize_the_buffer_under_itself() -> None:
    """A decoder that changes the buffer while rows are read from it gets an error (the
    compiled decoder holds the buffer, so its memory cannot move) instead of freed memory."""
    def resizing(b: bytearray, p: int, n: int) -> bytes:
        b.extend(b"\x00" * 4096)
        return b""

    buf = bytearray(data_row(b"x") * 3)
    with pytest.raises(BufferError):
        compiled()(buf, 0, (resizing,), [])
