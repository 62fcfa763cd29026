"""A server that breaks the protocol (router/backend/pgwire.py): the connection fails, the router
neither hangs nor returns wrong values. Bytes are fed to the protocol; no server is involved."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest

from router.backend.pgtypes import I16, I32, Unsupported
from router.backend.pgtypes import make_statement as _make_statement
from router.backend.pgwire import PipelinedConnection, PipelineError
from tests.unit.test_pgwire import (
    FakeTransport,
    data_row,
    msg,
    parse_bind,
    ready,
    started_connection,
)


@pytest.mark.usefixtures("row_decoder")
@pytest.mark.parametrize("kind", [b"N", b"D"])
@pytest.mark.parametrize("length", [-1, 0, 3, 2**31 - 1])
async def test_an_impossible_message_length_fails_the_connection(length: int, kind: bytes) -> None:
    """-1 used to leave the read loop on the same message for ever (the router hung)."""
    conn, transport = await started_connection()
    stmt = _make_statement("s", "SELECT 1", [], [("a", 23)], set())
    fut = conn.execute(stmt, [])
    # A row first: the row decoder reads on into the message after it.
    conn.data_received(msg(b"2") + data_row(I32.pack(1)) + kind + struct.pack("!i", length)
                       + b"\x00" * 8)
    assert conn.closed and transport.aborted
    assert isinstance(fut.exception(), PipelineError)


@pytest.mark.usefixtures("row_decoder")
@pytest.mark.parametrize("row", [
    data_row(I32.pack(7)),  # one column for two
    data_row(I32.pack(7), I32.pack(8), I32.pack(9)),  # three for two
    msg(b"D", I16.pack(2) + I32.pack(4) + I32.pack(7) + I32.pack(40) + b"\x00" * 4),  # past end
    # The second column's length is not in the row: it used to be read from the next message.
    msg(b"D", I16.pack(2) + I32.pack(4) + I32.pack(7)),
    msg(b"D", I16.pack(2) + I32.pack(4) + I32.pack(7) + I32.pack(4) + I32.pack(8) + b"\x00"),
    msg(b"D", I16.pack(2) + I32.pack(4) + I32.pack(7) + I32.pack(-2)),  # NULL is -1 only
    msg(b"D", b"\x00"),  # shorter than its column count
    msg(b"D"),
])
async def test_a_malformed_row_fails_the_connection_not_just_gives_wrong_values(
    row: bytes,
) -> None:
    conn, transport = await started_connection()
    stmt = _make_statement("s", "SELECT a, b", [], [("a", 23), ("b", 23)], set())
    fut = conn.execute(stmt, [])
    conn.data_received(msg(b"2") + row + msg(b"C", b"SELECT 1\x00") + ready())
    assert conn.closed and transport.aborted
    assert isinstance(fut.exception(), PipelineError)


async def test_ready_before_authentication_is_refused() -> None:
    conn = PipelinedConnection("t", user="u", database="d", password="pw", settings={},
                               cache_size=8)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    conn.data_received(msg(b"R", I32.pack(10) + b"SCRAM-SHA-256\x00\x00"))
    conn.data_received(ready())  # no SCRAM exchange, no AuthenticationOk
    assert conn.closed and not conn.usable and "authentication" in str(conn.error)


async def test_a_copy_message_fails_the_connection() -> None:
    conn, transport = await started_connection()
    stmt = _make_statement("s", "SELECT 1", [], [("a", 23)], set())
    fut = conn.execute(stmt, [])
    conn.data_received(msg(b"G", b"\x00" + I16.pack(0)))  # CopyInResponse
    assert conn.closed and transport.aborted
    assert isinstance(fut.exception(), PipelineError)


@pytest.mark.parametrize("value", [Decimal("sNaN"), Decimal("-NaN"), Decimal("1E+200000"),
                                   Decimal("1E-20000")])
def test_numerics_postgresql_cannot_hold_are_left_to_asyncpg(value: Decimal) -> None:
    stmt = _make_statement("s", "sql", [1700], [], set())
    with pytest.raises(Unsupported):
        stmt.bind([value])
    assert parse_bind(_make_statement("s", "sql", [1700], [], set()).bind(
        [Decimal("NaN")]))[2] == [b"NaN"]
