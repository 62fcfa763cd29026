"""A write that applied is never reported as one that did not: when its reply cannot be sent
(here a RETURNING larger than the router's frame limit), the error says it applied, with its
status and read-your-writes token, on the pipelined fast path, on pooled connections, for
keyed writes and inside transactions. Ground truth is read on the shard's primary directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

import client
from protocol import ErrorCode
from router.config import Config
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.integration.test_pipeline import node_stats
from tests.support.ids import new_id
from tests.support.router_proc import (
    REGIONS,
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    number,
    router_config,
    running_router,
)

FRAME_LIMIT = 64 * 1024
BIG = 2 * FRAME_LIMIT  # a payload whose RETURNING cannot fit in one reply frame
INSERT_BIG = ("INSERT INTO rt_items (item_id, region, payload) "
              "VALUES ($1, 'europe', repeat('x', $2::int4)) RETURNING *")
# A two-dimensional array parameter: the pipeline declines it (a pooled connection runs it).
INSERT_BIG_POOLED = ("INSERT INTO rt_items (item_id, region, payload) "
                     "VALUES ($1, 'europe', repeat('x', $2::int4)) "
                     "RETURNING *, cardinality($3::int4[])")


@pytest.fixture(scope="module")
def small_frames(cluster: LocalCluster, migrated: Config) -> Iterator[RouterProcess]:
    """A router whose replies may be at most 64 KiB."""
    config = router_config(migrated, port_shift=110, max_frame_bytes=FRAME_LIMIT)
    with running_router(config, Path(migrated.cluster.state_dir) / "router-frames.toml") as proc:
        yield proc


@pytest.fixture
async def db(small_frames: RouterProcess) -> AsyncIterator[client.Client]:
    c = await client.connect(small_frames.dsn, token=TOKEN)
    async with c:
        for region in REGIONS:
            await c.execute(SCRATCH_DDL, shard=region)
        yield c


@pytest.fixture
async def europe(small_frames: RouterProcess) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_node(small_frames.config, small_frames.config.shards["europe"].primary)
    yield conn
    await conn.close()


async def stored_length(conn: asyncpg.Connection, item: uuid.UUID) -> int | None:
    length: int | None = await conn.fetchval(
        "SELECT length(payload) FROM rt_items WHERE item_id = $1", item)
    return length


def assert_applied(err: client.GeorouteError, status: str = "INSERT 0 1") -> None:
    assert isinstance(err, client.ResultUndeliverableError), repr(err)
    assert err.code == ErrorCode.RESULT_UNDELIVERABLE
    assert err.applied and err.status == status and err.rowcount == 1
    assert err.retryable is False  # sending it again would apply it twice
    assert "frame limit" in str(err)
    assert err.detail["route"][0] == "europe"


async def test_fast_path_write_says_it_applied(
    db: client.Client, europe: asyncpg.Connection, small_frames: RouterProcess
) -> None:
    item = new_id(number(small_frames.config, "europe"))
    before = await node_stats(db, "europe-1")
    with pytest.raises(client.GeorouteError) as err:
        await db.fetch(INSERT_BIG, item, BIG)
    assert_applied(err.value)
    after = await node_stats(db, "europe-1")
    assert after["pipeline_statements"] > before["pipeline_statements"]  # the fast path ran it
    token = err.value.ryw_token  # type: ignore[attr-defined]
    assert token is not None and token.startswith("europe:")
    assert db.ryw_state["europe"] >= int(token.rsplit(":", 1)[1])  # noted for later reads
    assert await stored_length(europe, item) == BIG
    # The session reads its own write (through a replica only once it has replayed it).
    assert await db.fetchval("SELECT length(payload) FROM rt_items WHERE item_id = $1",
                             item) == BIG


async def test_pooled_write_says_it_applied(
    db: client.Client, europe: asyncpg.Connection, small_frames: RouterProcess
) -> None:
    item = new_id(number(small_frames.config, "europe"))
    before = await node_stats(db, "europe-1")
    with pytest.raises(client.GeorouteError) as err:
        await db.fetch(INSERT_BIG_POOLED, item, BIG, [[1, 2]])
    assert_applied(err.value)
    after = await node_stats(db, "europe-1")
    assert after["pipeline_statements"] == before["pipeline_statements"]  # a pooled connection
    assert err.value.ryw_token is not None  # type: ignore[attr-defined]
    assert await stored_length(europe, item) == BIG


async def test_keyed_write_says_it_applied_and_its_retry_too(
    db: client.Client, europe: asyncpg.Connection, small_frames: RouterProcess
) -> None:
    item = new_id(number(small_frames.config, "europe"))
    key = f"test-{uuid.uuid4()}"
    for _ in range(2):  # the write, then a retry under its key: applied once, said both times
        with pytest.raises(client.GeorouteError) as err:
            await db.fetch(INSERT_BIG, item, BIG, idempotency_key=key)
        assert_applied(err.value)
        assert err.value.ryw_token is not None  # type: ignore[attr-defined]
    assert await europe.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 1
    # Only its status is needed for execute(): that reply can be sent.
    assert await db.execute(INSERT_BIG, item, BIG, idempotency_key=key) == "INSERT 0 1"


async def test_statement_in_a_transaction_says_it_ran_there(
    db: client.Client, europe: asyncpg.Connection, small_frames: RouterProcess
) -> None:
    item = new_id(number(small_frames.config, "europe"))
    async with db.transaction(shard="europe") as tx:
        with pytest.raises(client.GeorouteError) as err:
            await tx.fetch(INSERT_BIG, item, BIG)
        assert_applied(err.value)
        assert err.value.tx == tx.tx  # type: ignore[attr-defined]
        assert "still open" in str(err.value)
        # It ran in the transaction, which goes on: the row is there, and commits with it.
        assert await tx.fetchval("SELECT length(payload) FROM rt_items WHERE item_id = $1",
                                 item) == BIG
        assert await stored_length(europe, item) is None  # not committed yet
    assert await stored_length(europe, item) == BIG


async def test_a_read_too_large_to_send_is_not_said_to_apply(
    db: client.Client, small_frames: RouterProcess
) -> None:
    item = new_id(number(small_frames.config, "europe"))
    assert await db.execute(INSERT_BIG, item, BIG) == "INSERT 0 1"  # the status alone fits
    with pytest.raises(client.GeorouteError) as err:
        await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item)
    assert not isinstance(err.value, client.ResultUndeliverableError)
    assert err.value.code == ErrorCode.NOT_ENCODABLE and "frame limit" in str(err.value)
    assert await db.fetchval("SELECT 41 + 1") == 42  # the router serves on


async def test_a_write_whose_returned_value_cannot_be_read_says_it_applied(
    db: client.Client, europe: asyncpg.Connection, small_frames: RouterProcess
) -> None:
    """A value Python cannot hold (the year 10000) in a write's RETURNING: the pipeline reads
    the reply to its end, so the server's tag says the write completed (and committed): the
    error says it applied. A read with the same value changed nothing: a plain value error."""
    sql = ("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe') "
           "RETURNING item_id, '10000-01-01'::date AS far")
    for _ in range(3):  # prepared on the pipeline and judged quick: then fast-pathed
        item = new_id(number(small_frames.config, "europe"))
        with pytest.raises(client.GeorouteError) as info:
            await db.fetch(sql, item)
        err = info.value
        assert isinstance(err, client.ResultUndeliverableError), repr(err)
        assert err.applied and err.status == "INSERT 0 1" and err.retryable is False
        assert "'far'" in str(err), str(err)
        assert await europe.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1",
                                     item) == 1
    with pytest.raises(client.GeorouteError) as read:
        await db.fetch("SELECT '10000-01-01'::date AS far FROM rt_items WHERE region = $1 "
                       "LIMIT 1", "europe")
    assert not isinstance(read.value, client.ResultUndeliverableError), repr(read.value)
