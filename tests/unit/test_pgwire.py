"""router/backend/pgwire.py, pgtypes.py and pgauth.py without a server: SCRAM against RFC 7677's
worked example, parameter and column codecs, and the pipelined connection's reply matching
fed with crafted server bytes."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import msgpack
import pytest

from protocol.values import ExtCode, Infinity, ext_hook
from router.backend import pgwire
from router.backend.pgauth import AuthError, ScramClient
from router.backend.pgtypes import _RESULT, Statement, Unsupported
from router.backend.pgtypes import make_statement as _make_statement
from router.backend.pgwire import PipelinedConnection, PipelineError
from router.backend.wirevalues import ResultValueError

I16, I32, U32 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!I")


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + I32.pack(len(body) + 4) + body


def ready() -> bytes:
    return msg(b"Z", b"I")


def data_row(*values: bytes | None) -> bytes:
    body = I16.pack(len(values))
    for v in values:
        body += b"\xff\xff\xff\xff" if v is None else I32.pack(len(v)) + v
    return msg(b"D", body)


def row_description(*cols: tuple[str, int]) -> bytes:
    body = I16.pack(len(cols))
    for name, oid in cols:
        body += name.encode() + b"\x00" + U32.pack(0) + I16.pack(0) + U32.pack(oid)
        body += I16.pack(-1) + I32.pack(-1) + I16.pack(1)
    return msg(b"T", body)


def error(sqlstate: str, message: str, severity: str = "ERROR") -> bytes:
    fields = f"S{severity}\x00V{severity}\x00C{sqlstate}\x00M{message}\x00\x00"
    return msg(b"E", fields.encode())


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing or self.aborted


async def written(transport: FakeTransport) -> None:
    """Yield to the event loop until the connection has written something (a few turns)."""
    for _ in range(20):
        if transport.writes:
            return
        await asyncio.sleep(0)  # one loop turn, not a wait for time
    raise AssertionError("nothing written after 20 event-loop turns")


async def started_connection() -> tuple[PipelinedConnection, FakeTransport]:
    conn = PipelinedConnection("t", user="u", database="d", password=None, settings={},
                               cache_size=8)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    startup = transport.writes.pop()
    assert b"user\x00u\x00database\x00d\x00" in startup
    conn.data_received(msg(b"R", I32.pack(0)) + msg(b"S", b"a\x00b\x00") + msg(b"K", b"12345678")
                       + ready())
    assert conn.usable
    return conn, transport


# ---- SCRAM -----------------------------------------------------------------------------------


def test_scram_matches_rfc7677_example() -> None:
    scram = ScramClient("pencil", user="user", nonce="rOprNGfwEbeRWgbNEkqO")
    assert scram.first_message() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = scram.final_message(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    scram.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(AuthError):
        scram.verify(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_refuses_a_nonce_that_is_not_ours() -> None:
    scram = ScramClient("pencil", nonce="abc")
    with pytest.raises(AuthError):
        scram.final_message(b"r=xyz123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


# ---- codecs ----------------------------------------------------------------------------------


def parse_bind(data: bytes) -> tuple[str, list[int], list[bytes | None], list[int]]:
    assert data[:1] == b"B" and I32.unpack_from(data, 1)[0] == len(data) - 1
    pos = 5
    assert data[pos] == 0  # unnamed portal
    pos += 1
    end = data.index(b"\x00", pos)
    name = data[pos:end].decode()
    pos = end + 1
    n = I16.unpack_from(data, pos)[0]
    formats = [I16.unpack_from(data, pos + 2 + 2 * i)[0] for i in range(n)]
    pos += 2 + 2 * n
    count = I16.unpack_from(data, pos)[0]
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        length = I32.unpack_from(data, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(data[pos : pos + length])
            pos += length
    nres = I16.unpack_from(data, pos)[0]
    results = [I16.unpack_from(data, pos + 2 + 2 * i)[0] for i in range(nres)]
    assert pos + 2 + 2 * nres == len(data)
    return name, formats, values, results


def test_bind_encodes_each_parameter_in_its_type() -> None:
    u = uuid.uuid4()
    stmt = _make_statement("s1", "sql", [21, 23, 20, 25, 2950, 16, 1700, 1184, 1082, 701],
                           [("a", 23), ("b", 1700), ("c", 2950)], set())
    assert stmt.supported
    when = dt.datetime(2000, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    name, formats, values, results = parse_bind(stmt.bind(
        [-2, 7, 2**40, "héllo", u, True, Decimal("-1.50"), when, dt.date(2000, 1, 3), None]
    ))
    assert name == "s1"
    assert formats == [1, 1, 1, 1, 1, 1, 0, 1, 1, 1]  # numeric goes as text
    assert values == [
        b"\xff\xfe", I32.pack(7), struct.pack("!q", 2**40), "héllo".encode(), u.bytes,
        b"\x01", b"-1.50", struct.pack("!q", 1_000_000), I32.pack(2), None,
    ]
    assert results == [1, 0, 1]


@pytest.mark.parametrize(
    ("oid", "value"),
    [
        (23, "7"),  # asyncpg refuses a str for an integer: so must we, by declining
        (23, True),  # a bool is an int in Python, not in PostgreSQL
        (23, 2**31),  # out of int4's range
        (25, 7),
        (2950, "not-a-uuid"),
        (1184, dt.datetime(2020, 1, 1)),  # naive into timestamptz: asyncpg's rules apply
        (1114, dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
        (1082, dt.datetime(2020, 1, 1)),
        (1700, 1.5),
        (2950, "{12345678-1234-1234-1234-123456789abc}"),  # uuid.UUID takes it; asyncpg not
        (2950, "12345678_1234_1234_1234_123456789abc"),
        (1184, Infinity("date")),  # an infinity of another type: the pooled path's error
    ],
)
def test_bind_declines_values_asyncpg_would_judge(oid: int, value: Any) -> None:
    stmt = _make_statement("s", "sql", [oid], [], set())
    with pytest.raises(Unsupported):
        stmt.bind([value])


def test_infinity_parameters_and_the_last_instant_are_told_apart() -> None:
    """PostgreSQL's infinity is its own value; Python's last instant is an ordinary one (it
    was sent as infinity when asyncpg judged timestamps)."""
    stmt = _make_statement("s", "sql", [1184, 1184, 1082], [], set())
    last = dt.datetime.max.replace(tzinfo=dt.UTC)
    _, _, values, _ = parse_bind(stmt.bind([Infinity("timestamptz"), last,
                                         Infinity("date", negative=True)]))
    assert values[0] == struct.pack("!q", 2**63 - 1)
    assert values[1] == struct.pack("!q", (last - dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
                                    // dt.timedelta(microseconds=1))
    assert values[2] == I32.pack(-(2**31))


def test_unknown_types_leave_the_statement_to_asyncpg() -> None:
    assert not _make_statement("s", "sql", [], [("a", 1007)], set()).supported  # int4[] column
    assert not _make_statement("s", "sql", [1231], [], set()).supported  # numeric[] parameter
    assert not _make_statement("s", "sql", [1187], [], set()).supported  # interval[] parameter
    assert not _make_statement("s", "sql", [], [("i", 1186)], set()).supported  # interval
    enum_oid = 98765
    assert not _make_statement("s", "sql", [enum_oid], [], set()).supported
    assert _make_statement("s", "sql", [enum_oid], [("e", enum_oid)], {enum_oid}).supported


def decode(oid: int, raw: bytes) -> Any:
    """A value of type `oid` as the pipelined connections' row decoder gives it."""
    _, dec = _RESULT[oid]
    rows: list[Any] = []
    got = pgwire._decode_rows(bytearray(data_row(raw)), 0, (dec,), rows)
    if not isinstance(got, int):
        raise got[2]
    return rows[0][0]


@pytest.mark.usefixtures("row_decoder")
def test_column_decoders_give_asyncpg_values_or_their_ext_types() -> None:
    u = uuid.uuid4()
    assert decode(23, I32.pack(-5)) == -5
    assert decode(20, struct.pack("!q", -(2**60))) == -(2**60)
    assert decode(16, b"\x01") is True
    assert decode(701, struct.pack("!d", 0.1)) == 0.1
    assert decode(1700, b"-12.50") == Decimal("-12.50")
    assert decode(25, "ß".encode()) == "ß"
    # ext types decode (client side) to the same Python values asyncpg would have given
    ext = decode(2950, u.bytes)
    assert isinstance(ext, msgpack.ExtType) and ext_hook(ext.code, ext.data) == u
    ts = decode(1184, struct.pack("!q", 1_500_000))
    assert ext_hook(ts.code, ts.data) == dt.datetime(2000, 1, 1, 0, 0, 1, 500000, tzinfo=dt.UTC)
    naive = decode(1114, struct.pack("!q", -1))
    assert naive.code == ExtCode.TIMESTAMP
    assert ext_hook(naive.code, naive.data) == dt.datetime(1999, 12, 31, 23, 59, 59, 999999)
    day = decode(1082, I32.pack(-1))
    assert ext_hook(day.code, day.data) == dt.date(1999, 12, 31)
    # infinities keep their type (PROTOCOL.md section 4), not asyncpg's datetime.max
    inf = decode(1184, struct.pack("!q", 2**63 - 1))
    assert ext_hook(inf.code, inf.data) == Infinity("timestamptz")
    assert ext_hook(*decode(1082, I32.pack(-(2**31)))) == Infinity("date", negative=True)


# ---- the pipelined connection ------------------------------------------------------------


@pytest.mark.usefixtures("row_decoder")
async def test_pipelined_replies_are_matched_in_order_and_an_error_stays_its_own() -> None:
    conn, transport = await started_connection()
    preparing = asyncio.ensure_future(conn.prepare("SELECT x FROM t WHERE id = $1"))
    await written(transport)
    sent = transport.writes.pop()
    assert sent.startswith(b"P") and b"SELECT x FROM t WHERE id = $1" in sent
    conn.data_received(msg(b"1") + msg(b"t", I16.pack(1) + U32.pack(23))
                       + row_description(("x", 25)) + ready())
    stmt: Statement = await preparing
    assert stmt.columns == ["x"] and stmt.supported

    futures = [conn.execute(stmt, [i]) for i in range(3)]
    assert conn.in_flight == 3
    await written(transport)
    assert len(transport.writes) == 1  # three requests, one write
    assert transport.writes[0].count(b"B") >= 3
    replies = (
        msg(b"2") + data_row(b"zero") + msg(b"C", b"SELECT 1\x00") + ready()
        + msg(b"2") + error("22012", "division by zero") + ready()
        + msg(b"2") + data_row(None) + data_row(b"two") + msg(b"C", b"SELECT 2\x00") + ready()
    )
    for i in range(len(replies)):  # one byte at a time: framing must not care
        conn.data_received(replies[i : i + 1])
    rows, status, _ = futures[0].result()
    assert (rows, status) == ([["zero"]], "SELECT 1")
    exc = futures[1].exception()
    assert isinstance(exc, asyncpg.DivisionByZeroError) and exc.sqlstate == "22012"
    rows, status, _ = futures[2].result()
    assert (rows, status) == ([[None], ["two"]], "SELECT 2")
    assert conn.in_flight == 0


@pytest.mark.usefixtures("row_decoder")
async def test_a_lost_connection_fails_everything_in_flight() -> None:
    conn, _ = await started_connection()
    conn.data_received(b"")
    stmt = _make_statement("s", "SELECT 1", [], [("a", 23)], set())
    conn._stmts["SELECT 1"] = stmt
    futures = [conn.execute(stmt, []) for _ in range(4)]
    conn.data_received(msg(b"2") + data_row(I32.pack(1)))  # the first is half answered
    conn.connection_lost(ConnectionResetError("reset by peer"))
    for fut in futures:
        assert isinstance(fut.exception(), PipelineError)
    assert conn.closed and not conn.usable
    with pytest.raises(PipelineError):
        conn.execute(stmt, [])


async def test_a_fatal_error_closes_the_connection() -> None:
    conn, transport = await started_connection()
    stmt = _make_statement("s", "SELECT 1", [], [("a", 23)], set())
    fut = conn.execute(stmt, [])
    conn.data_received(error("57P01", "terminating connection due to administrator command",
                             severity="FATAL"))
    assert isinstance(fut.exception(), PipelineError)
    assert transport.aborted


async def test_startup_asks_for_a_password_we_do_not_have() -> None:
    conn = PipelinedConnection("t", user="u", database="d", password=None, settings={},
                               cache_size=8)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    conn.data_received(msg(b"R", I32.pack(10) + b"SCRAM-SHA-256\x00\x00"))
    assert conn.closed and isinstance(conn.error, PipelineError)
    assert "password" in str(conn.error)


async def test_md5_and_cleartext_answers() -> None:
    for code, extra, expect in ((3, b"", b"secret\x00"), (5, b"salt", b"md5")):
        conn = PipelinedConnection("t", user="u", database="d", password="secret", settings={},
                                   cache_size=8)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(msg(b"R", I32.pack(code) + extra))
        answer = transport.writes[-1]
        assert answer[:1] == b"p" and answer[5:].startswith(expect)
        if code == 5:  # md5(md5(password + user) + salt), as PostgreSQL computes it
            import hashlib

            inner = hashlib.md5(b"secretu").hexdigest().encode()
            assert answer[5:-1] == b"md5" + hashlib.md5(inner + b"salt").hexdigest().encode()


async def test_a_slow_statement_stays_off_the_pipeline_only_for_a_cool_down() -> None:
    import time

    from router.backend.pipeline import Pipeline
    from router.config import DatabaseConfig, NodeAddress

    pipeline = Pipeline("n", NodeAddress("127.0.0.1", 1, "d"), DatabaseConfig(pipeline_slow_ms=20),
                        {})
    pipeline.finished("SELECT fast", 0.001)
    # One slow-looking run among fast ones (a stalled event loop) is forgiven...
    for seconds in (0.5, 0.5, 0.001, 0.5, 0.5):
        pipeline.finished("SELECT stalled", seconds)
    assert "SELECT stalled" not in pipeline._slow
    # ... a statement slow every time is not.
    for _ in range(Pipeline.SLOW_STREAK):
        pipeline.finished("SELECT slow", 0.5)
    assert pipeline.statements == 6 + Pipeline.SLOW_STREAK
    assert "SELECT fast" not in pipeline._slow
    assert pipeline._still_slow("SELECT slow")
    pipeline._slow["SELECT slow"] = time.monotonic() - 0.001  # the cool-down is over
    assert not pipeline._still_slow("SELECT slow")
    assert "SELECT slow" not in pipeline._slow


async def _pipeline_with_one_statement() -> tuple[Any, PipelinedConnection, str]:
    """A node's pipeline of one started connection, with one statement prepared on it."""
    from router.backend.pipeline import Pipeline
    from router.config import DatabaseConfig, NodeAddress

    db = DatabaseConfig(pipeline_slow_ms=20, pipeline_connections=1)
    pipeline = Pipeline("n", NodeAddress("127.0.0.1", 1, "d"), db, {})
    conn, _ = await started_connection()
    pipeline._conns.append(conn)
    sql = "SELECT report()"
    conn._stmts[sql] = _make_statement("s", sql, [], [("r", 23)], set())
    return pipeline, conn, sql


async def test_one_copy_of_a_statement_not_yet_judged_runs_on_the_pipeline() -> None:
    """A hundred copies of a new statement sent at once must not all queue up on the shared
    connection before the first one shows whether it is slow."""
    pipeline, conn, sql = await _pipeline_with_one_statement()

    def submit() -> bool:
        return pipeline.submit(sql, [], lambda *result: None) is not None

    assert submit()
    assert not submit()  # the others go to pooled connections meanwhile
    pipeline.finished(sql, 0.5)  # slow: still not known to be fast
    assert [submit(), submit()] == [True, False]
    pipeline.finished(sql, 0.0)  # the connection failed: that says nothing either
    assert [submit(), submit()] == [True, False]
    pipeline.finished(sql, 0.001)  # quick: from now on any number at once
    assert all(submit() for _ in range(10))
    assert conn.in_flight == 13
    pipeline.finished(sql, 0.5)  # slow again: back to one copy at a time until judged
    assert [submit(), submit()] == [True, False]


@pytest.mark.usefixtures("row_decoder")
@pytest.mark.parametrize("server_seconds", [0.001, 0.5])
async def test_a_statement_whose_caller_gave_up_keeps_its_slot_until_it_completes(
    monkeypatch: pytest.MonkeyPatch, server_seconds: float
) -> None:
    """The statement runs on after its caller gives up, and is judged by how long it took
    when it completes: quick (under pipeline_slow_ms, 20 ms here) makes it fast, slow
    starts its streak. The connection's clock is driven by the test, so the verdict is
    known in advance whatever the machine's load."""
    from router.backend import pgwire

    clock = [100.0]
    monkeypatch.setattr(pgwire, "_monotonic", lambda: clock[0])
    pipeline, conn, sql = await _pipeline_with_one_statement()
    waiting = asyncio.ensure_future(pipeline.run(sql, []))
    await asyncio.sleep(0)  # let it queue the statement
    assert conn.in_flight == 1
    waiting.cancel()  # e.g. the request's timeout: the statement itself runs on
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(Unsupported):  # a second copy still waits for the verdict
        await pipeline.run(sql, [])
    clock[0] += server_seconds
    conn.data_received(msg(b"2") + data_row(b"done") + msg(b"C", b"SELECT 1\x00") + ready())
    await asyncio.sleep(0)  # one loop turn: the future's done-callbacks run
    assert pipeline.statements == 1  # judged when it completed
    assert sql not in pipeline._trying
    if server_seconds < 0.02:
        assert sql in pipeline._fast and sql not in pipeline._streaks
    else:
        assert sql not in pipeline._fast and pipeline._streaks[sql] == 1


@pytest.mark.usefixtures("row_decoder")
async def test_writes_of_one_turn_share_one_wal_position_read_after_them() -> None:
    conn, transport = await started_connection()
    wal = _make_statement("w", "SELECT wal", [], [("lsn", 20)], set())
    conn._wal_stmt = wal
    write = _make_statement("u", "UPDATE t SET x = 1 WHERE id = $1", [23], [], set())
    got: list[tuple[Any, ...]] = []

    def callback(*result: Any) -> None:
        got.append(result)

    conn.execute_then(write, [1], callback, wal_position=True)
    conn.execute_then(write, [2], callback, wal_position=True)
    await written(transport)
    sent = transport.writes[0]
    assert sent.count(b"\x00w\x00") == 1 and sent.rindex(b"\x00w\x00") > sent.rindex(b"\x00u\x00")
    done = msg(b"2") + msg(b"C", b"UPDATE 1\x00") + ready()
    conn.data_received(done + done)
    assert got == []  # both wait for the position read queued after them
    conn.data_received(msg(b"2") + data_row(struct.pack("!q", 123456)) + msg(b"C", b"SELECT 1\x00")
                       + ready())
    assert [(g[0], g[1], g[3], g[4]) for g in got] == [([], "UPDATE 1", None, 123456)] * 2


async def test_a_write_done_before_the_connection_died_still_gets_its_result() -> None:
    conn, transport = await started_connection()
    conn._wal_stmt = _make_statement("w", "SELECT wal", [], [("lsn", 20)], set())
    write = _make_statement("u", "UPDATE t SET x = 1", [], [], set())
    got: list[tuple[Any, ...]] = []
    conn.execute_then(write, [], lambda *r: got.append(r), wal_position=True)
    await written(transport)
    conn.data_received(msg(b"2") + msg(b"C", b"UPDATE 1\x00") + ready())
    conn.connection_lost(None)
    assert len(got) == 1
    _, status, _, error, position = got[0]
    assert (status, error, position) == ("UPDATE 1", None, None)  # applied; position unknown


@pytest.mark.usefixtures("row_decoder")
async def test_a_value_python_cannot_hold_fails_its_request_not_the_connection() -> None:
    conn, _ = await started_connection()
    stmt = _make_statement("s", "SELECT ts", [], [("ts", 1114)], set())
    far, near = conn.execute(stmt, []), conn.execute(stmt, [])
    year_10000 = struct.pack("!q", (dt.datetime(9999, 12, 31) - dt.datetime(2000, 1, 1))
                             // dt.timedelta(microseconds=1) + 2 * 86_400_000_000)
    conn.data_received(msg(b"2") + data_row(year_10000) + msg(b"C", b"SELECT 1\x00") + ready()
                       + msg(b"2") + data_row(struct.pack("!q", 0)) + msg(b"C", b"SELECT 1\x00")
                       + ready())
    exc = far.exception()
    assert isinstance(exc, ResultValueError) and exc.sqlstate == "22008"
    assert (exc.column, exc.type_name) == ("ts", "timestamp")
    rows, _, _ = near.result()
    assert ext_hook(rows[0][0].code, rows[0][0].data) == dt.datetime(2000, 1, 1)
    assert not conn.closed


@pytest.mark.usefixtures("row_decoder")
@pytest.mark.parametrize(("oid", "raw"), [
    (23, b"\x00\x00\x07"),  # an int4 of 3 bytes: it used to take a byte of the next column
    (23, b"\x00" * 8),
    (16, b""),
    (2950, b"\x00" * 15),
    (1114, b"\x00" * 4),
    (25, b"\xff"),  # not UTF-8
])
async def test_a_value_not_of_its_types_width_fails_its_request_not_the_connection(
    oid: int, raw: bytes,
) -> None:
    conn, _ = await started_connection()
    stmt = _make_statement("s", "SELECT v, n", [], [("v", oid), ("n", 23)], set())
    bad, good = conn.execute(stmt, []), conn.execute(stmt, [])
    conn.data_received(msg(b"2") + data_row(raw, I32.pack(1)) + msg(b"C", b"SELECT 1\x00")
                       + ready() + msg(b"2") + data_row(None, I32.pack(2))
                       + msg(b"C", b"SELECT 1\x00") + ready())
    exc = bad.exception()
    assert isinstance(exc, ResultValueError) and exc.column == "v"
    assert good.result()[0] == [[None, 2]]
    assert not conn.closed


async def test_scram_without_the_servers_proof_is_refused() -> None:
    conn = PipelinedConnection("t", user="u", database="d", password="pw", settings={},
                               cache_size=8)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(msg(b"R", I32.pack(10) + b"SCRAM-SHA-256\x00\x00"))
    assert transport.writes[-1].startswith(b"p")  # our first message went out
    conn.data_received(msg(b"R", I32.pack(0)))  # "OK", with no SASLFinal before it
    assert conn.closed and "SCRAM" in str(conn.error)


async def test_a_node_that_looks_down_lets_busy_pipelined_connections_finish() -> None:
    from router.backend.pipeline import Pipeline
    from router.config import DatabaseConfig, NodeAddress

    pipeline = Pipeline("n", NodeAddress("127.0.0.1", 1, "d"), DatabaseConfig(), {})
    busy, _ = await started_connection()
    idle, idle_transport = await started_connection()
    pipeline._conns.extend([busy, idle])
    stmt = _make_statement("s", "UPDATE t SET x = 1", [], [], set())
    write = busy.execute(stmt, [])
    pipeline.terminate_all()
    assert idle.closed and idle_transport.aborted
    assert not busy.closed and pipeline.in_flight == 1  # the write may be committing
    assert pipeline.submit("UPDATE t SET x = 1", [], lambda *a: None) is None  # nothing new
    busy.data_received(msg(b"2") + msg(b"C", b"UPDATE 1\x00") + ready())
    assert write.result()[1] == "UPDATE 1"
    assert busy.closed and pipeline.in_flight == 0


@pytest.mark.parametrize(
    ("given", "prepared"),
    [
        ("pencil", "pencil"),
        ("I\u00adX", "IX"),  # RFC 4013's examples: soft hyphen mapped to nothing
        ("user", "user"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to a space
        ("a\u0007b", "a\u0007b"),  # a prohibited control character: used as it is
    ],
)
def test_saslprep_as_postgresql_applies_it(given: str, prepared: str) -> None:
    from router.backend.pgauth import saslprep

    assert saslprep(given) == prepared
