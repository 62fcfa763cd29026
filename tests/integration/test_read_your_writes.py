"""Read-your-writes end to end, made deterministic by pausing WAL replay on the europe replica
(`pg_wal_replay_pause()`, on a direct connection to it): a write is then certainly not on the
replica, so a read that sees it was sent to the primary, and one that does not see it shows
the replica really was behind. In one session, and across two clients that pass the tokens
(`Client.ryw_tokens()` / `observe_ryw_tokens()`) as a web tier would. Each read asks
PostgreSQL which node answered (current_setting('port'))."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

import client
from router.config import Config
from router.tools.db.connect import connect_node
from tests.integration.conftest import wait_until
from tests.support.ids import new_id
from tests.support.router_proc import TOKEN, RouterProcess, number, port_of

READ = "SELECT count(*), current_setting('port')::int FROM rt_items WHERE item_id = $1"


@contextlib.asynccontextmanager
async def europe_nodes(config: Config) -> AsyncIterator[tuple[asyncpg.Connection,
                                                               asyncpg.Connection]]:
    """Direct connections to the europe primary and replica."""
    shard = config.shards["europe"]
    primary = await connect_node(config, shard.primary)
    try:
        replica = await connect_node(config, shard.replicas[0])
        try:
            yield primary, replica
        finally:
            await replica.close()
    finally:
        await primary.close()


@contextlib.asynccontextmanager
async def replay_paused(replica: asyncpg.Connection) -> AsyncIterator[None]:
    """WAL replay paused on `replica`, and resumed on the way out, whatever happens."""
    await replica.execute("SELECT pg_wal_replay_pause()")
    try:
        async def paused() -> bool:  # pausing is a request; this is the fact
            state = await replica.fetchval("SELECT pg_get_wal_replay_pause_state()")
            return bool(state == "paused")

        await wait_until(paused, within=10, what="WAL replay paused on the replica")
        yield
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")


async def replayed(primary: asyncpg.Connection, replica: asyncpg.Connection) -> None:
    """Until the replica has replayed all the primary has written so far."""
    lsn = str(await primary.fetchval("SELECT pg_current_wal_lsn()::text"))

    async def caught_up() -> bool:
        return bool(await replica.fetchval(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn))

    await wait_until(caught_up, within=10, what=f"replica replay up to {lsn}")


async def read(db: client.Client, item: object, **hints: str) -> tuple[int, int, float]:
    """(rows seen, port of the node that answered, seconds it took) of reading `item`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):  # a read that waits for ever fails, it does not hang
        row = await db.fetchrow(READ, item, **hints)
    assert row is not None
    return row[0], row[1], loop.time() - started


# A read that waited on the paused replica would never come back; the wait is 20 ms.
WITHIN_THE_WAIT = 2.0


async def test_a_session_reads_its_write_from_the_primary_while_the_replica_is_paused(
    db: client.Client, router: RouterProcess, migrated: Config
) -> None:
    """The replica cannot have the write: the session's read waits for it at most
    read_your_writes_wait_ms, then the primary serves it. An eventual read goes to the
    replica and does not see it. Once the replica has replayed it, the session's reads are
    served by the replica again."""
    cfg = router.config
    primary_port, replica_port = port_of(cfg, "europe", "primary"), port_of(cfg, "europe", "replica")
    item = new_id(number(cfg, "europe"))
    async with europe_nodes(migrated) as (primary, replica):
        async with replay_paused(replica):
            await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
            seen, port, took = await read(db, item)
            assert (seen, port) == (1, primary_port)
            assert took < WITHIN_THE_WAIT, f"{took:.3f}s"
            seen, port, _ = await read(db, item, consistency="replica")
            assert (seen, port) == (0, replica_port)  # the replica was behind
        await replayed(primary, replica)
    seen, port, _ = await read(db, item)
    assert (seen, port) == (1, replica_port)


async def test_tokens_passed_to_another_client_make_it_read_the_write(
    db: client.Client, router: RouterProcess, migrated: Config
) -> None:
    """A web tier: one client writes, and its tokens travel (here as one comma-joined string,
    as in a cookie) to a second client, which reads the write from the primary while the
    replica is paused. A third client without them is served by the replica, which has not
    got it. Once the replica has replayed it, it serves both."""
    cfg = router.config
    primary_port, replica_port = port_of(cfg, "europe", "primary"), port_of(cfg, "europe", "replica")
    item = new_id(number(cfg, "europe"))
    async with (
        await client.connect(router.dsn, token=TOKEN) as writer,
        await client.connect(router.dsn, token=TOKEN) as given,
        await client.connect(router.dsn, token=TOKEN) as stranger,
        europe_nodes(migrated) as (primary, replica),
    ):
        async with replay_paused(replica):
            await writer.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')",
                                 item)
            cookie = ",".join(writer.ryw_tokens())
            assert cookie == f"europe:{writer.ryw_state['europe']}"
            seen, port, _ = await read(stranger, item)  # no token: the replica, behind
            assert (seen, port) == (0, replica_port)
            given.observe_ryw_tokens(cookie.split(","))
            seen, port, took = await read(given, item)
            assert (seen, port) == (1, primary_port)
            assert took < WITHIN_THE_WAIT, f"{took:.3f}s"
        await replayed(primary, replica)
        for session in (given, stranger):
            seen, port, _ = await read(session, item)
            assert (seen, port) == (1, replica_port)
