"""Transactions over several shards on the real cluster: a commit reaches every shard or
none, a shard that refuses (at PREPARE, or the coordinator at its COMMIT) rolls the others
back, and each shard written gets its read-your-writes token. A router killed mid-commit:
test_twophase_recovery.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.db.connect import connect_node
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, RouterProcess, running_router
from tests.support.twophase import INSERT, none_prepared, rows_of, tp_config, tp_primaries


@pytest.fixture(scope="module")
def tp_router(migrated: Config) -> Iterator[RouterProcess]:
    config = tp_config(migrated, 120, "tp-router")
    with running_router(config, Path(migrated.cluster.state_dir) / "router-tp.toml") as proc:
        yield proc


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    async with tp_primaries(migrated) as conns:
        yield conns


@pytest.fixture
async def tp(tp_router: RouterProcess, primaries: dict[str, asyncpg.Connection]
             ) -> AsyncIterator[client.Client]:
    async with await client.connect(tp_router.dsn, token=TOKEN) as c:
        yield c


# ---- commits ---------------------------------------------------------------------------------


async def test_a_transaction_without_a_shard_commits_on_every_shard_it_wrote(
    tp: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    europe, asia = uuid.uuid4(), uuid.uuid4()
    async with tp.transaction() as tx:
        assert tx.route is None  # nothing opened until a statement names a shard
        await tx.execute(INSERT, europe, "europe", "a")
        await tx.execute(INSERT, asia, "asia", "b")
        # Inside it, its own writes are visible, each on its own shard.
        assert await tx.fetchval("SELECT payload FROM tp_items WHERE item_id = $1 "
                                 "AND region = 'asia'", asia) == "b"
    assert await rows_of(primaries, europe) == {"north_america": 0, "europe": 1, "asia": 0}
    assert await rows_of(primaries, asia) == {"north_america": 0, "europe": 0, "asia": 1}
    assert await none_prepared(primaries)
    # The commit's reply carried a read-your-writes token for each shard written.
    assert {"europe", "asia"} <= set(tp.ryw_state)


async def test_the_commit_reply_gives_every_shard_its_token(
    tp: client.Client, primaries: dict[str, asyncpg.Connection], migrated: Config
) -> None:
    """With the asia replica's replay paused, a read of the asia row right after the commit
    can only see it if the session holds asia's token (the router then reads the primary)."""
    replica = await connect_node(migrated, migrated.shards["asia"].replicas[0])
    try:
        await replica.execute("SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            return bool(await replica.fetchval(
                "SELECT pg_get_wal_replay_pause_state() = 'paused'"))

        await wait_until(paused, what="replay paused on the asia replica")
        europe, asia = uuid.uuid4(), uuid.uuid4()
        async with tp.transaction() as tx:
            await tx.execute(INSERT, europe, "europe", "x")  # europe decides: its token first
            await tx.execute(INSERT, asia, "asia", "y")
        seen = await tp.fetchval("SELECT payload FROM tp_items WHERE item_id = $1 "
                                 "AND region = 'asia'", asia)
        assert seen == "y"
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()


async def test_a_shard_that_refuses_the_prepare_rolls_the_others_back(
    tp: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    europe, asia, na = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    tx = tp.transaction()
    await tx.start()
    await tx.execute(INSERT, europe, "europe", "fine")  # the first to write: the coordinator
    await tx.execute(INSERT, na, "north_america", "fine")
    await tx.execute(INSERT, asia, "asia", "refuse")  # its PREPARE runs the deferred check
    with pytest.raises(client.PostgresError) as info:
        await tx.commit()
    assert info.value.sqlstate == "GR900"
    assert info.value.detail["shard"] == "asia"
    assert "rolled back on every shard" in str(info.value)
    for item in (europe, asia, na):
        assert sum((await rows_of(primaries, item)).values()) == 0
    assert await none_prepared(primaries)


async def test_a_coordinator_that_refuses_its_commit_rolls_the_prepared_ones_back(
    tp: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    europe, asia = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(client.PostgresError) as info:
        async with tp.transaction() as tx:
            await tx.execute(INSERT, asia, "asia", "refuse")  # first: asia coordinates
            await tx.execute(INSERT, europe, "europe", "fine")  # prepared, then rolled back
    assert info.value.sqlstate == "GR900"
    assert info.value.detail["shard"] == "asia"
    assert sum((await rows_of(primaries, europe)).values()) == 0
    assert sum((await rows_of(primaries, asia)).values()) == 0
    assert await none_prepared(primaries)


async def test_statements_whose_shard_cannot_be_told_are_refused_and_harm_nothing(
    tp: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    europe = uuid.uuid4()
    async with tp.transaction() as tx:
        await tx.execute(INSERT, europe, "europe", "kept")
        with pytest.raises(client.MissingShardKeyError):
            await tx.execute("UPDATE tp_items SET payload = 'all' WHERE payload = 'kept'")
        with pytest.raises(client.CrossShardError, match="inside a transaction"):
            await tx.fetch("SELECT * FROM tp_items WHERE payload = 'kept'")
        # Refused before anything ran: the transaction goes on.
        await tx.execute("UPDATE tp_items SET payload = 'still' WHERE item_id = $1 "
                         "AND region = 'europe'", europe)
    row = await primaries["europe"].fetchval("SELECT payload FROM tp_items WHERE item_id = $1",
                                             europe)
    assert row == "still"


async def test_a_failed_statement_rolls_back_every_shard_at_commit(
    tp: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    europe, asia = uuid.uuid4(), uuid.uuid4()
    tx = tp.transaction()
    await tx.start()
    await tx.execute(INSERT, europe, "europe", "a")
    with pytest.raises(client.PostgresError):  # a duplicate key on asia
        await tx.execute(INSERT, asia, "asia", "b")
        await tx.execute(INSERT, asia, "asia", "b")
    with pytest.raises(client.TransactionAbortedError):
        await tx.commit()
    assert sum((await rows_of(primaries, europe)).values()) == 0
    assert sum((await rows_of(primaries, asia)).values()) == 0


async def test_a_transaction_given_a_shard_stays_on_it(tp: client.Client) -> None:
    async with tp.transaction(shard="europe") as tx:
        assert tx.route is not None and tx.route.shard == "europe"
        with pytest.raises(client.CrossShardError):
            await tx.execute(INSERT, uuid.uuid4(), "asia", "no")


async def test_an_idle_transaction_over_shards_is_rolled_back_on_every_shard(
    migrated: Config, primaries: dict[str, asyncpg.Connection]
) -> None:
    base = tp_config(migrated, 123, "tp-idle")
    config = replace(base, router=replace(base.router, transaction_idle_timeout_seconds=1.5))
    app = f"georoute:{config.router.node_name}"

    async def open_branches() -> dict[str, int]:
        return {r: int(await c.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND state LIKE 'idle in transaction%'", app)) for r, c in primaries.items()}

    async def none_open() -> bool:
        return not any((await open_branches()).values())

    europe, asia = uuid.uuid4(), uuid.uuid4()
    path = Path(migrated.cluster.state_dir) / "router-tp-idle.toml"
    with running_router(config, path) as proc:
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            tx = db.transaction()
            await tx.start()
            await tx.execute(INSERT, europe, "europe", "idle")
            await tx.execute(INSERT, asia, "asia", "idle")
            assert await open_branches() == {"north_america": 0, "europe": 1, "asia": 1}
            await wait_until(none_open, within=10, what="both branches rolled back")
            with pytest.raises(client.TransactionAbortedError, match="sent nothing"):
                await tx.execute(INSERT, uuid.uuid4(), "europe", "late")
    assert sum((await rows_of(primaries, europe)).values()) == 0
    assert sum((await rows_of(primaries, asia)).values()) == 0
