"""Client basics against the in-process fake router: pipelining, replies, errors, parsing."""

from __future__ import annotations

import asyncio
import random

import pytest

import client as georoute_client
from protocol import (
    Batch,
    Error,
    ErrorCode,
    Message,
    Query,
    Rows,
    Status,
)
from tests.support.fake_server import FakeConnection, FakeRouter


async def test_pipelined_requests_get_their_own_replies_out_of_order() -> None:
    held: list[tuple[FakeConnection, Query]] = []

    def hold(conn: FakeConnection, msg: Message) -> None:
        assert isinstance(msg, Query)
        held.append((conn, msg))

    n = 50
    async with FakeRouter(hold) as router:
        client = await georoute_client.connect(router.dsn, token="secret", pool_size=1)
        async with client:
            tasks = [asyncio.create_task(client.fetchval("SELECT $1", i)) for i in range(n)]
            await router.wait_for(lambda: len(held) == n)
            random.Random(7).shuffle(held)
            for conn, msg in held:
                conn.send(Rows(msg.id, ["v"], [[msg.params[0] * 10]], "SELECT 1"))
            assert await asyncio.gather(*tasks) == [i * 10 for i in range(n)]
            # All 50 requests were issued in one loop turn: coalesced into very few writes.
            (conn,) = router.connections
            assert conn.reads <= 5
            assert all(c.in_flight == 0 for c in client.connections)


async def test_fetch_returns_records() -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        rows = await client.fetch("SELECT $1::int", 5)
        assert len(rows) == 1
        row = rows[0]
        assert row["sql"] == "SELECT $1::int" and row[1] == [5] and row["node"] == "fake-router"
        assert row.as_dict() == {"sql": "SELECT $1::int", "params": [5], "node": "fake-router"}
        assert dict(row) == row.as_dict()
        assert await client.fetchrow("SELECT 1") is not None
        assert await client.execute("UPDATE t SET x = 1") == "EXECUTE"
        assert await client.ping() >= 0
        assert await client.topology() == {"node": "fake-router", "op": "topology"}


async def test_executemany_sends_one_batch() -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        status = await client.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,), (3,)])
        assert status == "INSERT 0 1"
        (batch,) = router.requests(Batch)
        assert batch.statements == [("INSERT INTO t VALUES ($1)", [n]) for n in (1, 2, 3)]


@pytest.mark.parametrize(
    ("code", "sqlstate", "detail", "exc_type"),
    [
        (
            ErrorCode.MISSING_SHARD_KEY,
            None,
            {"key": "region"},
            georoute_client.MissingShardKeyError,
        ),
        (ErrorCode.SQL_PARSE_ERROR, None, {"position": 8}, georoute_client.SQLSyntaxError),
        (ErrorCode.POSTGRES_ERROR, "23505", {}, georoute_client.PostgresError),
        (ErrorCode.UNKNOWN_SHARD, None, {}, georoute_client.RoutingError),
        (ErrorCode.UNKNOWN_TRANSACTION, None, {}, georoute_client.TransactionError),
        (ErrorCode.DOC_DUPLICATE_KEY, None, {}, georoute_client.DocumentStoreError),
        (ErrorCode.INTERNAL, None, {}, georoute_client.InternalError),
        (3999, None, {}, georoute_client.RoutingError),  # unknown code: by family
    ],
)
async def test_error_replies_become_typed_exceptions(
    code: int, sqlstate: str | None, detail: dict[str, object], exc_type: type[Exception]
) -> None:
    def fail(conn: FakeConnection, msg: Message) -> None:
        conn.send(Error(msg.id, code, "X", "it failed", sqlstate, False, detail))

    async with (
        FakeRouter(fail) as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        with pytest.raises(exc_type) as info:
            await client.fetch("SELECT * FROM users")
        err = info.value
        assert isinstance(err, georoute_client.GeorouteError)
        assert err.code == code and err.sqlstate == sqlstate and not err.retryable
        if isinstance(err, georoute_client.MissingShardKeyError):
            assert err.key == "region"
        if isinstance(err, georoute_client.SQLSyntaxError):
            assert err.position == 8


async def test_fetch_of_a_status_reply_is_empty() -> None:
    def status(conn: FakeConnection, msg: Message) -> None:
        conn.send(Status(msg.id, "INSERT 0 1", 1))

    async with (
        FakeRouter(status) as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        assert await client.fetch("INSERT INTO t VALUES (1)") == []


def test_parse_dsn() -> None:
    dsn = georoute_client.parse_dsn("georoute://tok@h1:7000,h2,[::1]:7001/?pool_size=4")
    assert dsn.addresses == (("h1", 7000), ("h2", 6600), ("::1", 7001))
    assert dsn.token == "tok"
    assert dsn.options == {"pool_size": "4"}
    with pytest.raises(ValueError):
        georoute_client.parse_dsn("postgres://h1")
    with pytest.raises(ValueError):
        georoute_client.parse_dsn("georoute://")
    # A directory names the router's Unix socket in it, percent-encoded or not.
    assert georoute_client.parse_dsn("georoute://%2Ftmp:6610").addresses == (("/tmp", 6610),)
    assert georoute_client.parse_dsn("georoute:///run/g:6611").addresses == (("/run/g", 6611),)


@pytest.mark.parametrize(
    ("sql", "read"),
    [
        ("SELECT 1", True),
        ("  select * from t", True),
        ("-- comment\n (SELECT 1)", True),
        # Block comments nest in PostgreSQL: the parser sees an INSERT here. Not guessed at.
        ("/* /* */ SELECT */ INSERT INTO t VALUES (1)", False),
        ("/* x */ SELECT 1", False),
        ("SELECT * INTO new_table FROM t", False),  # makes a table: a retry would fail
        ("SHOW server_version", True),
        ("INSERT INTO t VALUES (1)", False),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", False),
        ("UPDATE t SET a = 1", False),
        ("", False),
    ],
)
def test_looks_read_only(sql: str, read: bool) -> None:
    assert georoute_client.looks_read_only(sql) is read
