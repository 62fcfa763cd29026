"""Bad input and failing nodes: typed errors, malformed frames, forged tokens, exactly-once
writes, and nodes that go down and come back. The router keeps serving throughout."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

import client
from protocol import (
    Commit,
    ErrorCode,
    FrameDecoder,
    Hello,
    Hints,
    Query,
    QueryKind,
    Rollback,
    encode,
)
from router.config import Config
from router.tools.db.documents import USER_PREFERENCES
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.documents import preferences
from tests.support.ids import new_id
from tests.support.present import present
from tests.support.router_proc import (
    TOKEN,
    RouterProcess,
    number,
    port_of,
    router_config,
    running_router,
)


async def test_typed_errors_and_other_connections_unaffected(
    db: client.Client, router: RouterProcess
) -> None:
    with pytest.raises(client.SQLSyntaxError) as parse:
        await db.fetch("SELECT * FORM rt_items")
    assert parse.value.sqlstate == "42601"
    with pytest.raises(client.MissingShardKeyError) as missing:
        await db.execute("UPDATE rt_items SET payload = $1 WHERE payload = $2", "a", "b")
    assert "rt_items.region or item_id" in str(missing.value)
    assert (missing.value.key, missing.value.detail["table"]) == ("region", "rt_items")
    with pytest.raises(client.PostgresError) as pg:
        await db.fetch("SELECT * FROM no_such_table", shard="europe")
    assert pg.value.sqlstate == "42P01"
    item = new_id(number(router.config, "europe"))
    await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
    with pytest.raises(client.PostgresError) as dup:
        await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
    assert dup.value.sqlstate == "23505"
    assert await db.fetchval("SELECT 41 + 1") == 42


async def test_deep_and_oversized_statements_get_typed_errors(
    db: client.Client, router: RouterProcess
) -> None:
    """30,000 levels of `1+1+...` used to kill the router inside the parser; over
    router.max_sql_bytes a text is refused unparsed. The router serves on after both."""
    with pytest.raises(client.PostgresError) as deep:  # the router parses it; PostgreSQL refuses
        await db.fetchval("SELECT " + "+".join(["1"] * 30_000), shard="europe")
    assert deep.value.sqlstate == "54001"  # statement_too_complex
    limit = router.config.router.max_sql_bytes
    with pytest.raises(client.SQLSyntaxError, match="max_sql_bytes") as big:
        await db.fetchval("SELECT '" + "x" * limit + "'", shard="europe")
    assert big.value.sqlstate == "54000"
    assert router.proc.poll() is None
    assert await db.fetchval("SELECT 41 + 1") == 42


def _raw_exchange(dsn_port: int, payload: bytes) -> list[object]:
    with socket.create_connection(("127.0.0.1", dsn_port), timeout=10) as s:
        s.sendall(payload)
        decoder = FrameDecoder()
        out: list[object] = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out.extend(decoder.feed(chunk))


def test_bad_frames_and_tokens_get_typed_errors(router: RouterProcess) -> None:
    port = router.config.router.listen_port
    hello = encode(Hello(1, [1], "raw", TOKEN))
    # Garbage after a good handshake: a MALFORMED_FRAME error, then the connection closes.
    replies = _raw_exchange(port, hello + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert [type(r).__name__ for r in replies] == ["HelloOk", "Error"]
    assert replies[1].code == ErrorCode.MALFORMED_FRAME  # type: ignore[attr-defined]
    # An oversized length prefix is refused before any body is read.
    replies = _raw_exchange(port, hello + struct.pack(">I", 2**31))
    assert replies[-1].code == ErrorCode.FRAME_TOO_LARGE  # type: ignore[attr-defined]
    # A forged token.
    replies = _raw_exchange(port, encode(Hello(1, [1], "raw", "forged")))
    assert replies[0].code == ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]
    # A request before the handshake.
    replies = _raw_exchange(port, encode(Query(5, "SELECT 1")))
    assert replies[0].code == ErrorCode.HANDSHAKE_REQUIRED  # type: ignore[attr-defined]


async def test_idempotency_key_applies_a_write_once(
    db: client.Client, router: RouterProcess
) -> None:
    cfg = router.config
    item = new_id(number(cfg, "europe"))
    key = f"test-{uuid.uuid4()}"
    sql = "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', 'once') RETURNING payload"
    first = await db.fetch(sql, item, idempotency_key=key)
    # The same request again (as a client retry after a lost reply would send it): no
    # duplicate-key error, no second row, the same reply.
    again = await db.fetch(sql, item, idempotency_key=key)
    assert [r.values() for r in again] == [r.values() for r in first] == [["once"]]
    counter = f"test-{uuid.uuid4()}"
    for _ in range(3):
        await db.execute(
            "UPDATE rt_items SET payload = payload || '+' WHERE item_id = $1", item,
            idempotency_key=counter,
        )
    assert await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item) == "once+"
    # Concurrent duplicates: still exactly once.
    racer = f"test-{uuid.uuid4()}"
    await asyncio.gather(*(
        db.execute("UPDATE rt_items SET payload = payload || '!' WHERE item_id = $1", item,
                   idempotency_key=racer)
        for _ in range(5)
    ))
    assert await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item) == "once+!"


async def test_idempotency_key_applies_a_batch_once_and_is_refused_for_document_writes(
    db: client.Client, router: RouterProcess
) -> None:
    item = new_id(number(router.config, "europe"))
    await db.execute("INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', '')",
                     item)
    key = f"test-{uuid.uuid4()}"
    bump = "UPDATE rt_items SET payload = payload || $2 WHERE item_id = $1"
    for _ in range(3):  # as a client retrying after lost replies would send it
        status = await db.executemany(bump, [(item, "a"), (item, "b")], idempotency_key=key)
        assert status == "BATCH 2"
    assert await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item) == "ab"
    docs = db.docs("rt_docs", shard="europe")
    with pytest.raises(client.GeorouteError, match="idempotency keys are not supported"):
        await docs.command("insert_one", {"document": {"n": 1}}, idempotency_key=key)


async def test_document_requests_are_checked_and_typed(db: client.Client) -> None:
    docs = db.docs(USER_PREFERENCES, shard="europe")
    doc = preferences(theme="light")
    key = doc["_id"]
    await docs.insert_one(doc)
    replaced = await docs.replace_one({"_id": key}, {**doc, "theme": "dark"})
    assert replaced["matched"] == 1 and present(await docs.find_one({"_id": key}))["theme"] == "dark"
    with pytest.raises(client.GeorouteError, match="theme"):  # a replacement is validated too
        await docs.replace_one({"_id": key}, {**doc, "theme": "neon"})
    with pytest.raises(client.GeorouteError) as unknown:
        await docs.command("drop_database", {})
    assert unknown.value.code == 6003  # DOC_UNKNOWN_OPERATION
    with pytest.raises(client.GeorouteError, match=r"\$out"):  # writes elsewhere: refused
        await docs.aggregate([{"$match": {}}, {"$out": "stolen"}])
    with pytest.raises(client.GeorouteError, match="JavaScript"):
        await docs.find({"$where": "true"})
    await docs.delete_one({"_id": key})


async def test_wrong_token_raises_auth_error(router: RouterProcess) -> None:
    with pytest.raises(client.AuthError):
        await client.connect(router.dsn, token="wrong", connect_rounds=1)


async def test_node_down_fails_fast_and_recovers(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    """A stopped replica: reads fall back to the primary at once; after restart they return."""
    cfg = router.config
    name = "asia-2"
    cluster.stop_node(name)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        port = await db.fetchval("SELECT current_setting('port')::int", shard="asia", consistency="replica")
        assert port == port_of(cfg, "asia", "primary")
        assert loop.time() - started < 5
    finally:
        cluster.start_node(name)

    async def back() -> bool:
        nodes = (await db.topology())["shards"]["asia"]["nodes"]
        node = next(n for n in nodes if n["name"] == name)
        return node["health"] == "up" and node["lag_bytes"] is not None

    await wait_until(back, within=30, what="replica back up")
    port = await db.fetchval("SELECT current_setting('port')::int", shard="asia", consistency="replica")
    assert port == port_of(cfg, "asia", "replica")


async def test_primary_down_fails_fast_with_retryable_error(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    """Writes to a shard whose primary is down fail fast, typed and retryable; other shards
    keep serving; once the primary is back, writes succeed again."""
    cfg = router.config
    name = "north_america-1"
    cluster.stop_node(name)
    try:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            started = loop.time()
            with pytest.raises(client.NodeUnavailableError) as info:
                await db.execute(
                    "INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')",
                    new_id(number(cfg, "north_america")),
                )
            assert info.value.retryable
            assert loop.time() - started < 5
        item = new_id(number(cfg, "asia"))
        await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", item)
    finally:
        cluster.start_node(name)

    async def writable() -> bool:
        try:
            await db.execute(
                "INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')",
                new_id(number(cfg, "north_america")),
            )
        except client.NodeUnavailableError:
            return False
        return True

    await wait_until(writable, within=30, what="writes to the restarted primary")

    # Leave the shard as other tests expect it: its replica's WAL receiver reconnects to the
    # restarted primary on its own schedule; wait until it has replayed a write made now.
    await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')",
                     new_id(number(cfg, "north_america")))
    written = db.ryw_state["north_america"]

    async def replica_streaming_again() -> bool:
        nodes = (await db.topology())["shards"]["north_america"]["nodes"]
        replica = next(n for n in nodes if n["role"] == "replica")
        return bool(replica["replay_lsn"] is not None and replica["replay_lsn"] >= written)

    await wait_until(replica_streaming_again, within=30, what="the replica streaming again")


async def test_wrong_parameter_count_is_a_bad_request_not_a_down_node(
    db: client.Client, router: RouterProcess
) -> None:
    item = new_id(number(router.config, "europe"))
    with pytest.raises(client.InvalidRequestError):
        await db.fetch("SELECT * FROM rt_items WHERE item_id = $1", item, 42)
    nodes = (await db.topology())["shards"]["europe"]["nodes"]
    assert all(n["health"] == "up" for n in nodes)
    port = await db.fetchval("SELECT current_setting('port')::int", shard="europe", consistency="replica")
    assert port == port_of(router.config, "europe", "replica")


async def test_statement_queued_behind_rollback_never_reaches_a_pooled_connection(
    db: client.Client, router: RouterProcess
) -> None:
    """Rollback and a statement of the same transaction pipelined together: the statement
    is refused as an unknown transaction instead of running on a connection that went back
    to the pool; a second commit of a finished transaction is refused the same way."""
    tx = db.transaction(shard="europe")
    await tx.start()
    assert tx.tx is not None
    probe = Query(0, "SELECT 1", [], QueryKind.FETCH, Hints(tx=tx.tx))
    done, refused = await asyncio.gather(
        tx._pinned(Rollback(0, tx.tx), None), tx._pinned(probe, None), return_exceptions=True
    )
    assert not isinstance(done, BaseException)
    assert isinstance(refused, client.UnknownTransactionError)

    tx2 = db.transaction(shard="europe")
    await tx2.start()
    assert tx2.tx is not None
    first, second = await asyncio.gather(
        tx2._pinned(Commit(0, tx2.tx), None), tx2._pinned(Commit(0, tx2.tx), None),
        return_exceptions=True,
    )
    assert not isinstance(first, BaseException)
    assert isinstance(second, client.UnknownTransactionError)
    # The pool is intact: plenty of ordinary requests still work.
    assert await asyncio.gather(*(db.fetchval("SELECT 1", shard="europe") for _ in range(40))) == [1] * 40


async def test_batch_inside_a_transaction_runs_on_its_connection(
    db: client.Client, router: RouterProcess
) -> None:
    item = new_id(number(router.config, "asia"))
    async with db.transaction(shard="asia") as tx:
        await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", item)
        # No shard key in these statements: the transaction's shard is the route.
        await tx.executemany("UPDATE rt_items SET payload = payload || $1 WHERE item_id::text = $2",
                             [("a", str(item)), ("b", str(item))])
        assert await tx.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item) == "ab"


async def _frames_until_closed(reader: asyncio.StreamReader, within: float = 10.0) -> list[Any]:
    """Every reply the router sends on a raw connection until it closes it."""
    decoder, replies = FrameDecoder(1 << 20), []
    async with asyncio.timeout(within):
        while data := await reader.read(65536):
            replies.extend(decoder.feed(data))
    return replies


async def test_connection_limit_and_handshake_timeout(migrated: Config) -> None:
    """A node at router.max_client_connections turns the next connection away with a
    retryable TOO_MANY_CONNECTIONS; one that sends no Hello in time is closed."""
    config = router_config(migrated, port_shift=80, max_client_connections=2,
                           handshake_timeout_seconds=0.5)
    port = config.router.listen_port
    with running_router(config, Path(migrated.cluster.state_dir) / "router-limits.toml") as proc:
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        (refused,) = await _frames_until_closed(reader)
        writer.close()
        assert (refused.id, refused.code, refused.retryable) == (
            0, ErrorCode.TOO_MANY_CONNECTIONS, True)
        for reader, writer in silent:  # no Hello within 0.5 s
            (overdue,) = await _frames_until_closed(reader)
            writer.close()
            assert overdue.code == ErrorCode.HANDSHAKE_REQUIRED and "no Hello" in overdue.message

        async def connects() -> bool:
            try:
                first = await client.connect(proc.dsn, token=TOKEN, pool_size=1, connect_rounds=1)
            except client.NoRouterAvailableError:
                return False  # the router has not seen the silent ones go yet
            await first.close()
            return True

        await wait_until(connects, what="the closed connections to be forgotten")
        first = await client.connect(proc.dsn, token=TOKEN, pool_size=1)
        second = await client.connect(proc.dsn, token=TOKEN, pool_size=1)
        try:
            with pytest.raises(client.NoRouterAvailableError) as info:
                await client.connect(proc.dsn, token=TOKEN, pool_size=1, connect_rounds=1)
            assert isinstance(info.value.__cause__, client.TooManyConnectionsError)
            assert await first.fetchval("SELECT 1", shard="europe") == 1  # others unaffected
        finally:
            await first.close()
            await second.close()
