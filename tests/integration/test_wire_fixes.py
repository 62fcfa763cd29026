"""What an independent client, written from PROTOCOL.md alone, found against a live router
(issue 13), on the real cluster: every type PostgreSQL returns reaches the client (a seeded
inet column included) with its column type, JSON is ext 9 both ways, infinity keeps its type,
a value Python cannot hold fails by name, a Commit after a failed statement and a Rollback
after it behave as documented, a write in a read-only transaction is not retryable, a batch
answers "BATCH n", a bad hint costs one request and not the connection, and no request is
ever answered with a timeout it did not ask for, under load with interleaved short timeouts.

Requests go through a raw protocol connection where the reply's fields matter (column types,
error codes), else through the client library."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgpack
import pytest

import client
from protocol import (
    Batch,
    Begin,
    Consistency,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    HelloOk,
    Hints,
    Infinity,
    Interval,
    Json,
    Message,
    Point,
    Query,
    QueryKind,
    Range,
    Rejected,
    Rollback,
    Rows,
    Status,
    TxStarted,
    encode,
)
from router.backend.pipeline import connect_pipelined
from router.config import Config
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import Catalogue, unique
from tests.support.router_proc import TOKEN, RouterProcess


class Raw:
    """A protocol connection that sends frames as given and matches replies by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.waiting: dict[int, asyncio.Future[Message | Rejected]] = {}
        self.next_id = 10
        self.reading = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, router: RouterProcess) -> Raw:
        r = router.config.router
        reader, writer = await asyncio.open_connection(r.listen_host, r.listen_port)
        raw = cls(reader, writer)
        hello = await raw.request(Hello(0, [1], "raw", TOKEN))
        assert isinstance(hello, HelloOk)
        return raw

    async def _read(self) -> None:
        while data := await self.reader.read(1 << 20):
            for message in self.decoder.feed(data):
                future = self.waiting.pop(message.id, None)
                if future is not None and not future.done():
                    future.set_result(message)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the router closed the connection"))

    def send(self, message: Any) -> asyncio.Future[Message | Rejected]:
        self.next_id += 1
        message.id = self.next_id
        return self.send_frame(message.id, encode(message))

    def send_all(self, messages: list[Any]) -> list[asyncio.Future[Message | Rejected]]:
        """Send `messages` in one write."""
        futures = []
        for message in messages:
            self.next_id += 1
            message.id = self.next_id
            futures.append(asyncio.get_running_loop().create_future())
            self.waiting[message.id] = futures[-1]
        self.writer.write(b"".join(encode(m) for m in messages))
        return futures

    def send_frame(self, request_id: int, data: bytes) -> asyncio.Future[Message | Rejected]:
        future: asyncio.Future[Message | Rejected] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self.writer.write(data)
        return future

    async def request(self, message: Any) -> Message | Rejected:
        return await asyncio.wait_for(self.send(message), 30)

    async def close(self) -> None:
        self.reading.cancel()
        self.writer.close()


@pytest.fixture
async def raw(router: RouterProcess) -> Any:
    conn = await Raw.open(router)
    yield conn
    await conn.close()


async def rows(raw: Raw, sql: str, *params: Any, **hints: Any) -> Rows:
    reply = await raw.request(Query(0, sql, list(params), QueryKind.FETCH, Hints(**hints)))
    assert isinstance(reply, Rows), reply
    return reply


# A transaction's statements run on pooled asyncpg connections; plain reads of carried types
# on the pipeline. Each value is checked on both.
async def on_both_paths(raw: Raw, sql: str, *params: Any) -> list[Rows]:
    out = [await rows(raw, sql, *params, shard="europe")]
    begun = await raw.request(Begin(0, Hints(shard="europe")))
    assert isinstance(begun, TxStarted)
    out.append(await rows(raw, sql, *params, tx=begun.tx))
    await raw.request(Rollback(0, begun.tx))
    return out


# ---- every type reaches the client -------------------------------------------------------

TYPES_SQL = """SELECT '10.0.0.1'::inet AS host, '10.1.2.3/16'::inet AS iface,
    '10.0.0.0/8'::cidr AS net, '08:00:2b:01:02:03'::macaddr AS mac,
    '1 year 2 mons 3 days 04:05:06'::interval AS long, '36 hours'::interval AS short,
    '(1.5,-2)'::point AS pt, 'a fat cat'::tsvector AS doc, 12.5::money AS price,
    '[1,5)'::int4range AS ints, '(,2.5]'::numrange AS upto, 'empty'::daterange AS nothing,
    '{[1,2),[5,6)}'::int4multirange AS spans, ARRAY['10.0.0.1'::inet, '::1'] AS hosts,
    ARRAY['1 mon'::interval] AS months, ARRAY['(0,0)'::point] AS pts, B'101'::bit(3) AS bits,
    '((0,0),(1,1))'::box AS area, '(0,1)'::tid AS tid, ROW(1, 'a') AS pair,
    '[2020-01-01,infinity)'::tstzrange AS open_ended"""


async def test_every_type_reaches_the_client_with_its_column_type(raw: Raw) -> None:
    """Bug: an inet column got 1006 NOT_ENCODABLE; a type without a form of its own must come
    as its text output, and the reply's column types say which."""
    reply = await rows(raw, TYPES_SQL, shard="europe")
    values = dict(zip(reply.columns, reply.rows[0], strict=True))
    types = dict(zip(reply.columns, reply.column_types or [], strict=True))
    assert values["host"] == ipaddress.ip_address("10.0.0.1") and types["host"] == "inet"
    assert values["iface"] == ipaddress.ip_interface("10.1.2.3/16")
    assert values["net"] == ipaddress.ip_network("10.0.0.0/8") and types["net"] == "cidr"
    assert values["mac"] == "08:00:2b:01:02:03" and types["mac"] == "text:macaddr"
    # 1 year 2 months stay months: not 420 days
    assert values["long"] == Interval(14, 3, (4 * 3600 + 5 * 60 + 6) * 1_000_000)
    assert values["short"] == dt.timedelta(hours=36) and types["short"] == "interval"
    assert values["pt"] == Point(1.5, -2.0) and types["pt"] == "point"
    assert values["doc"] == "'a' 'cat' 'fat'" and types["doc"] == "text:tsvector"
    assert values["price"] == "$12.50" and types["price"] == "text:money"
    assert values["ints"] == Range(1, 5, "[)") and types["ints"] == "int4range"
    assert values["upto"] == Range(None, Decimal("2.5"), "(]")
    assert values["nothing"] == Range.empty()
    assert values["spans"] == [Range(1, 2, "[)"), Range(5, 6, "[)")]
    assert values["hosts"] == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    assert types["hosts"] == "inet[]"
    assert values["months"] == [Interval(1, 0, 0)]
    assert values["pts"] == [Point(0.0, 0.0)]
    assert values["bits"] == "101" and types["bits"] == "text:bit"
    assert values["area"] == "(1,1),(0,0)" and types["area"] == "text:box"
    assert values["tid"] == "(0,1)" and types["tid"] == "text:tid"
    assert values["pair"] == [1, "a"] and types["pair"] == "record"
    assert values["open_ended"] == Range(dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                                         Infinity("timestamptz"), "[)")


async def test_a_seeded_inet_column_is_readable(raw: Raw, catalogue: Catalogue) -> None:
    user = await catalogue.user()
    session_id = await catalogue.conn.fetchval(
        "SELECT create_session($1, $2, interval '1 hour', '203.0.113.9'::inet, 'ua')",
        user, unique("tok-"))
    reply = await rows(raw, "SELECT session_id, ip_address FROM user_sessions "
                            "WHERE session_id = $1", session_id, consistency=Consistency.STRONG)
    assert reply.rows == [[session_id, ipaddress.ip_address("203.0.113.9")]]
    assert reply.column_types == ["uuid", "inet"]


async def test_new_forms_go_back_as_parameters(db: client.Client) -> None:
    sql = ("SELECT $1::interval = '14 mons 3 days', $2::point ~= '(1,2)', "
           "$3::int4range = '[1,5)', $4::inet = '10.0.0.1', $5::cidr = '10.0.0.0/8'")
    args = (Interval(14, 3, 0), Point(1, 2), Range(1, 5), ipaddress.ip_address("10.0.0.1"),
            ipaddress.ip_network("10.0.0.0/8"))
    assert list(await db.fetchrow(sql, *args, shard="europe") or []) == [True] * 5
    async with db.transaction(shard="europe") as tx:
        assert list(await tx.fetchrow(sql, *args) or []) == [True] * 5


# ---- JSON is ext 9 both ways -----------------------------------------------------------------


async def test_json_is_ext_9_both_ways(raw: Raw, db: client.Client) -> None:
    """Bug: json/jsonb came as plain strings; a Json parameter got 4002 'expected str'."""
    doc = Json({"b": [1, 2], "a": None})
    for reply in await on_both_paths(raw, "SELECT $1::jsonb AS b, $2::json AS j, "
                                          "'{\"keep\":  1}'::json AS kept", doc, doc):
        b, j, kept = reply.rows[0]
        assert isinstance(b, Json) and b == doc and j == doc
        assert kept.dumps() == '{"keep":  1}'  # json keeps its text
        assert reply.column_types == ["jsonb", "json", "json"]
    # The client library sends and gets them the same way.
    assert await db.fetchval("SELECT $1::jsonb -> 'b'", doc, shard="asia") == Json([1, 2])


# ---- infinity keeps its type ---------------------------------------------------------------


async def test_infinity_keeps_its_type_both_ways(raw: Raw) -> None:
    """Bug: 'infinity'::timestamptz came back as a naive 9999-12-31 (ext 3), a silent change
    of value and type."""
    sql = ("SELECT 'infinity'::timestamptz, '-infinity'::timestamp, 'infinity'::date, "
           "$1::timestamptz = 'infinity', $2::date = '-infinity', "
           "'9999-12-31 23:59:59.999999+00'::timestamptz")
    last = dt.datetime.max.replace(tzinfo=dt.UTC)
    for reply in await on_both_paths(raw, sql, Infinity("timestamptz"),
                                     Infinity("date", negative=True)):
        assert reply.rows[0] == [Infinity("timestamptz"), Infinity("timestamp", negative=True),
                                 Infinity("date"), True, True, last]


async def test_a_value_python_cannot_hold_fails_by_name(raw: Raw) -> None:
    """Bug (#12): SELECT '24:00:00'::time was 'invalid parameters'."""
    for tx in (False, True):
        hints: dict[str, Any] = {"shard": "europe"}
        if tx:
            begun = await raw.request(Begin(0, Hints(shard="europe")))
            assert isinstance(begun, TxStarted)
            hints = {"tx": begun.tx}
        for sql, column, type_name in (
            ("SELECT 1 AS n, '24:00:00'::time AS closes", "closes", "time"),
            ("SELECT 'infinity'::date AS d, '10000-01-01'::timestamp AS far", "far", "timestamp"),
        ):
            reply = await raw.request(Query(0, sql, [], QueryKind.FETCH, Hints(**hints)))
            assert isinstance(reply, Error), reply
            assert reply.code == ErrorCode.POSTGRES_ERROR and "invalid parameters" not in reply.message
            assert reply.detail == {"raised_by": "router", "column": column, "type": type_name}
            if tx:
                break  # the transaction has failed now


# ---- transactions --------------------------------------------------------------------------


async def test_commit_after_a_failed_statement_is_rolled_back_and_rollback_succeeds(
    db: client.Client,
) -> None:
    """Bug: Commit got 5002 and then the Rollback 5002 asks for got 5001."""
    item = uuid.uuid4()
    tx = db.transaction(shard="europe")
    await tx.start()
    await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
    with pytest.raises(client.PostgresError):
        await tx.execute("SELECT 1 / 0")
    with pytest.raises(client.GeorouteError) as info:
        await tx.commit()
    assert info.value.code == ErrorCode.TRANSACTION_ABORTED
    assert "rolled back" in str(info.value)
    tx._finished = False  # the client library would not send it; a client may
    assert await tx.rollback() == "ROLLBACK"
    assert await db.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item,
                             shard="europe", consistency=Consistency.STRONG) == 0


async def test_a_write_in_a_read_only_transaction_is_not_retryable(db: client.Client) -> None:
    """Bug: 4005 READ_ONLY with retryable true; resending can never succeed."""
    tx = db.transaction(shard="europe", read_only=True)
    await tx.start()
    with pytest.raises(client.GeorouteError) as info:
        await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')",
                         uuid.uuid4())
    assert await tx.rollback() == "ROLLBACK"
    assert info.value.code == ErrorCode.POSTGRES_ERROR and info.value.sqlstate == "25006"
    assert not info.value.retryable


async def test_a_batch_answers_batch_n_and_a_failing_one_keeps_nothing(raw: Raw) -> None:
    """Bug: "BATCH 2" outside a transaction, the last statement's status inside one."""
    insert = "INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')"
    ids = [uuid.uuid4() for _ in range(3)]
    plain = await raw.request(Batch(0, [(insert, [ids[0]]), ("SELECT 1", [])],
                                    Hints(shard="asia")))
    begun = await raw.request(Begin(0, Hints(shard="asia")))
    assert isinstance(begun, TxStarted)
    inside = await raw.request(Batch(0, [(insert, [ids[1]]), ("SELECT 1", [])],
                                     Hints(tx=begun.tx)))
    await raw.request(Rollback(0, begun.tx))
    assert isinstance(plain, Status) and isinstance(inside, Status)
    assert (plain.status, plain.rowcount) == (inside.status, inside.rowcount) == ("BATCH 2", 2)
    failing = await raw.request(Batch(0, [(insert, [ids[2]]), ("SELECT 1 / 0", [])],
                                      Hints(shard="asia")))
    assert isinstance(failing, Error) and failing.sqlstate == "22012"
    kept = await rows(raw, "SELECT count(*) FROM rt_items WHERE item_id = $1", ids[2],
                      shard="asia", consistency=Consistency.STRONG)
    assert kept.rows == [[0]]  # the statement before the failure was rolled back too


# ---- a bad request costs that request alone ----------------------------------------------


async def test_a_bad_hint_is_refused_alone_and_requests_in_flight_are_answered(
    raw: Raw,
) -> None:
    """Bug: 1001 MALFORMED_FRAME closed the connection, losing every request in flight."""
    slow = raw.send(Query(0, "SELECT 7 FROM pg_sleep(0.2)", [], QueryKind.FETCH,
                          Hints(shard="europe")))
    raw.next_id += 1
    body = msgpack.packb([10, raw.next_id, "fetch", "SELECT 1", [],
                          {"shard": "europe", "consistency": "bogus"}])
    bad = raw.send_frame(raw.next_id, len(body).to_bytes(4, "big") + body)
    refused, answered = await asyncio.gather(bad, slow)
    assert isinstance(refused, Error) and refused.code == ErrorCode.INVALID_REQUEST
    assert isinstance(answered, Rows) and answered.rows == [[7]]
    assert (await rows(raw, "SELECT 8", shard="europe")).rows == [[8]]  # the connection lives


# ---- no spurious timeouts ------------------------------------------------------------------

# Statements that time out, by the path they take: the pipeline (a new text each time: each
# is prepared and runs there, where a new statement is tried once), a pooled connection (inet
# is not carried by the pipeline), a transaction, a batch, an executemany.
PIPELINED_SLEEPER = "SELECT {n} FROM pg_sleep($1::float8)"
POOLED_SLEEPER = "SELECT '10.0.0.9'::inet FROM pg_sleep($1::float8)"


async def test_a_fast_path_statement_past_its_timeout_does_not_hold_up_the_pipeline(
    raw: Raw,
) -> None:
    """A statement known to be quick, answered from the pipeline's callback, that this time
    sleeps 2 s with timeout_ms 100: the requests pipelined behind it (1 ms statements with a
    timeout of 1 s) are answered, not timed out."""
    hints = Hints(shard="asia", consistency=Consistency.STRONG)
    sql = "SELECT $1::int FROM pg_sleep($2::float8)"
    quick = "SELECT $1::int AS v"
    for text, params in ((sql, [1, 0.0]), (quick, [1])):
        # Quick once: then any number of copies may run on the pipeline; a burst of them
        # prepares the statement on both pipelined connections.
        assert (await rows(raw, text, *params, shard="asia",
                           consistency=Consistency.STRONG)).rows == [[1]]
        burst = raw.send_all([Query(0, text, params, QueryKind.FETCH, hints)
                              for _ in range(100)])
        assert all(isinstance(r, Rows) for r in await asyncio.gather(*burst))
    slow = Query(0, sql, [0, 2.0], QueryKind.FETCH,
                 Hints(shard="asia", consistency=Consistency.STRONG, timeout_ms=100))
    hints.timeout_ms = 1000
    behind = [Query(0, quick, [n], QueryKind.FETCH, hints) for n in range(200)]
    # One write: read in one turn, they fill both pipelined connections, the slow one's too.
    replies = raw.send_all([slow, *behind])
    stopped, *answered = await asyncio.wait_for(asyncio.gather(*replies), 10)
    assert isinstance(stopped, Error) and stopped.code == ErrorCode.TIMEOUT
    assert [getattr(r, "rows", r) for r in answered] == [[[n]] for n in range(200)]


async def test_a_statements_server_side_timeout_ends_with_it(migrated: Config) -> None:
    """A pipelined statement with a timeout is stopped by the server at that timeout, and
    the setting ends with it: the statements pipelined right behind it, on the same
    connection, keep the session's own statement_timeout."""
    primary = migrated.shards["asia"].primary
    conn = await connect_pipelined(
        "timeout-test", host="127.0.0.1", port=primary.port, user=migrated.database.user,
        database=primary.database, password=None, settings={"statement_timeout": "30000"},
        cache_size=8, timeout=5,
    )
    try:
        sleep = await conn.prepare("SELECT 1 FROM pg_sleep($1::float8)")
        show = await conn.prepare("SELECT current_setting('statement_timeout')")
        stopped = conn.execute(sleep, [5.0], timeout_ms=100)
        after = [conn.execute(show, []), conn.execute(sleep, [0.3]), conn.execute(show, [])]
        inside = conn.execute(show, [], timeout_ms=250)
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await asyncio.wait_for(stopped, 2)  # not the 5 s it asked for
        (shown, _, _), (slept, _, _), (again, _, _) = [await f for f in after]
        assert (shown, slept, again) == ([["30s"]], [[1]], [["30s"]])
        assert (await inside)[0] == [["250ms"]]
    finally:
        await conn.close()


def _canceled_statements(log: Path, start: int) -> list[str]:
    """The statements PostgreSQL canceled, from its log after byte `start`."""
    text = log.read_bytes()[start:].decode(errors="replace")
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "ERROR:  canceling statement due to" in line:
            following = next((ln for ln in lines[i + 1 : i + 4] if "STATEMENT:" in ln), "")
            out.append(following.split("STATEMENT:", 1)[-1].strip())
    return out


async def test_no_request_gets_a_timeout_it_did_not_ask_for_under_load(
    router: RouterProcess, cluster: LocalCluster
) -> None:
    """Many requests pipelined on few backend connections (the asia primary's two pipelined
    connections and its pool) while others, sleeping 2 s, time out after 20-100 ms on every
    path. Bug: a statement the router had given up on ran on for its 2 s on its pipelined
    connection, and every request queued behind it waited as long; one that carried a
    timeout of its own (here 1 s, for a statement of a millisecond) got TIMEOUT. Now the
    server stops it too. Every request gets its own result, and PostgreSQL canceled only
    statements that carried a timeout (a timeout or cancel that outlived its statement
    would hit the next one on the same backend connection). Bounded: 10 rounds of 120."""
    log = Path(cluster.state_dir) / "asia-1" / "postgres.log"
    start = log.stat().st_size
    conns = [await Raw.open(router) for _ in range(3)]
    rng = random.Random(13)
    wrong: list[Any] = []
    timed_out = 0

    async def plain(conn: Raw, n: int) -> None:
        hints = Hints(shard="asia", consistency=Consistency.STRONG,
                      timeout_ms=1000 if n % 2 else None)
        if n % 3:
            query = Query(0, "SELECT $1::int AS v", [n], QueryKind.FETCH, hints)
            want: list[list[object]] = [[n]]
        else:  # not carried by the pipeline: a pooled connection
            query = Query(0, "SELECT $1::int AS v, '10.0.0.1'::inet", [n], QueryKind.FETCH,
                          hints)
            want = [[n, ipaddress.ip_address("10.0.0.1")]]
        reply = await conn.request(query)
        if not isinstance(reply, Rows) or reply.rows != want:
            wrong.append((query.sql, n, reply))

    async def sleeper(conn: Raw, n: int) -> None:
        nonlocal timed_out
        timeout_ms = rng.choice([20, 50, 100])
        hints = Hints(shard="asia", timeout_ms=timeout_ms, consistency=Consistency.STRONG)
        sleep = [2.0]
        choice = rng.randrange(5)
        if choice == 0:
            sql = PIPELINED_SLEEPER.format(n=n)
            reply = await conn.request(Query(0, sql, sleep, QueryKind.FETCH, hints))
        elif choice == 1:
            reply = await conn.request(Query(0, POOLED_SLEEPER, sleep, QueryKind.FETCH, hints))
        elif choice == 2:
            begun = await conn.request(Begin(0, Hints(shard="asia")))
            assert isinstance(begun, TxStarted)
            sql = PIPELINED_SLEEPER.format(n=0)
            reply = await conn.request(Query(0, sql, sleep, QueryKind.FETCH,
                                             Hints(tx=begun.tx, timeout_ms=timeout_ms)))
            assert isinstance(await conn.request(Rollback(0, begun.tx)), Status)
        elif choice == 3:
            sql = PIPELINED_SLEEPER.format(n=0)
            reply = await conn.request(Batch(0, [(sql, sleep), ("SELECT 1", [])], hints))
        else:  # one statement many times: asyncpg's executemany
            sql = PIPELINED_SLEEPER.format(n=0)
            reply = await conn.request(Batch(0, [(sql, [0.7])] * 3, hints))
        assert isinstance(reply, Error) and reply.code == ErrorCode.TIMEOUT, reply
        timed_out += 1

    try:
        for round_ in range(10):
            jobs = []
            for i in range(120):
                n = round_ * 1000 + i + 1
                jobs.append(sleeper(conns[i % 3], n) if rng.random() < 0.05
                            else plain(conns[i % 3], n))
            await asyncio.gather(*jobs)
    finally:
        for conn in conns:
            await conn.close()
    assert timed_out > 30
    assert wrong == []
    canceled = _canceled_statements(log, start)
    assert canceled and all(re.search(r"pg_sleep", sql) for sql in canceled), canceled


async def test_a_keyed_writes_retry_has_its_column_types_too(raw: Raw, db: client.Client) -> None:
    """A keyed write's reply is stored for its retries: with its column types, so the retry's
    reply reads as the first one did (they were nil)."""
    key = unique("idem-types-")
    sql = ("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe') "
           "RETURNING item_id, '10.0.0.1'::inet AS ip, '{\"a\": 1}'::jsonb AS doc")
    item = uuid.uuid4()
    first = await rows(raw, sql, item, idempotency_key=key)
    again = await rows(raw, sql, item, idempotency_key=key)
    assert first.column_types == ["uuid", "inet", "jsonb"]
    assert again.column_types == first.column_types and again.rows == first.rows
