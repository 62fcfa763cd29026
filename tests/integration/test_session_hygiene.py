"""A pooled connection whose session a client changed never serves the next client: it is
closed, not reset (asyncpg's reset leaves temporary tables, prepared statements and SET ROLE
in place). A router with one pooled and one pipelined connection per node makes the next
client land where the last one was, if that connection were kept."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

import client
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router


@pytest.fixture(scope="module")
def one_connection_router(migrated: Config) -> Iterator[RouterProcess]:
    base = router_config(migrated, port_shift=100)
    database = dataclasses.replace(base.database, pool_min_size=1, pool_max_size=1,
                                   pipeline_connections=1)
    config = dataclasses.replace(base, database=database)
    with running_router(config, Path(migrated.cluster.state_dir) / "router-hygiene.toml") as proc:
        yield proc


@pytest.fixture
async def db(one_connection_router: RouterProcess) -> AsyncIterator[client.Client]:
    c = await client.connect(one_connection_router.dsn, token=TOKEN)
    async with c:
        yield c


def _scrape(router: RouterProcess) -> str:
    url = f"http://127.0.0.1:{router.config.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def _session(db: client.Client) -> tuple[int, str, str | None, str]:
    """(backend pid, current_user, pg_temp.leak_probe if visible, whether `leaky` is prepared)
    as seen on the node's one pooled connection (a transaction runs there)."""
    async with db.transaction(shard="europe") as tx:
        row = await tx.fetchrow(
            "SELECT pg_backend_pid(), current_user::text, to_regclass('pg_temp.leak_probe')::text,"
            " (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaky')::text"
        )
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def test_temp_tables_roles_and_prepared_statements_do_not_reach_the_next_client(
    db: client.Client, one_connection_router: RouterProcess
) -> None:
    clean_pid, user, _, _ = await _session(db)
    assert await _session(db) == (clean_pid, user, None, "0")  # clean: the connection is kept
    async with db.transaction(shard="europe") as tx:
        await tx.execute("CREATE TABLE pg_temp.leak_probe (x int)")
        await tx.execute("PREPARE leaky AS SELECT 1")
        await tx.execute("SET ROLE pg_monitor")
        assert await tx.fetchval("SELECT current_user::text") == "pg_monitor"
    pid, after_user, probe, prepared = await _session(db)
    assert (after_user, probe, prepared) == (user, None, "0")
    assert pid != clean_pid  # a new connection
    metrics = await asyncio.to_thread(_scrape, one_connection_router)
    closed = [line for line in metrics.splitlines() if line.startswith(
        'georoute_pool_connections_closed_total{node="europe-1",reason="session_changed"}'
    )]
    assert closed and float(closed[0].split()[1]) >= 1


async def test_a_failed_statement_that_took_a_session_lock_does_not_keep_its_connection(
    db: client.Client, one_connection_router: RouterProcess
) -> None:
    """The connection is marked before the statement runs: the lock outlives its failure."""
    with pytest.raises(client.PostgresError) as failed:
        await db.fetchval("SELECT pg_advisory_lock(424242), 1 / 0", shard="europe")
    assert failed.value.sqlstate == "22012"
    primary = one_connection_router.config.shards["europe"].primary
    direct = await asyncpg.connect(host="127.0.0.1", port=primary.port, database=primary.database,
                                   user=one_connection_router.config.database.user)
    try:
        async def released() -> bool:
            taken = await direct.fetchval("SELECT pg_try_advisory_lock(424242)")
            if taken:
                await direct.execute("SELECT pg_advisory_unlock(424242)")
            return bool(taken)

        await wait_until(released, what="the router's connection holding the lock to close")
    finally:
        await direct.close()


PROBE = ("SELECT current_setting('work_mem'), (SELECT count(*) FROM pg_listening_channels()),"
         " (SELECT count(*) FROM pg_cursors WHERE name = 'hygiene_cursor'), pg_backend_pid()")


async def _probe(db: client.Client) -> tuple[tuple[str, int, int, int], tuple[str, int, int, int]]:
    """PROBE on the europe primary's pooled connection (in a transaction) and on its
    pipelined one (autocommit)."""
    async with db.transaction(shard="europe") as tx:
        pooled = await tx.fetchrow(PROBE)
    piped = await db.fetchrow(PROBE, shard="europe", consistency="strong")
    assert pooled is not None and piped is not None
    return (pooled[0], pooled[1], pooled[2], pooled[3]), (piped[0], piped[1], piped[2], piped[3])


async def test_session_state_set_outside_a_transaction_does_not_reach_the_next_client(
    db: client.Client, one_connection_router: RouterProcess
) -> None:
    """An autocommit SET, LISTEN and DECLARE ... WITH HOLD sent through the router: a second
    client, on the node's only pooled connection and its only pipelined one, sees none of
    them. The pooled connection they ran on was closed (a new backend), the pipelined one
    never had them (the same backend, clean)."""
    pooled_before, piped_before = await _probe(db)
    work_mem = pooled_before[0]
    assert pooled_before[:3] == piped_before[:3] == (work_mem, 0, 0) and work_mem != "7777kB"
    assert await db.execute("SET work_mem = '7777kB'", shard="europe") == "SET"
    assert await db.execute("LISTEN hygiene_channel", shard="europe") == "LISTEN"
    assert await db.execute("DECLARE hygiene_cursor CURSOR WITH HOLD FOR SELECT 1",
                            shard="europe") == "DECLARE CURSOR"
    async with await client.connect(one_connection_router.dsn, token=TOKEN) as other:
        pooled, piped = await _probe(other)
    assert pooled[:3] == piped[:3] == (work_mem, 0, 0)
    assert pooled[3] != pooled_before[3]  # the pooled connection that ran them is gone
    assert piped[3] == piped_before[3]  # the pipelined one is the same, and clean
