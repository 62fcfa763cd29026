"""The shared WAL-position reader behind read-your-writes tokens."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg

from router.backend.wal import UNKNOWN_LSN, LsnReader
from router.config import Config
from router.tools.localcluster import LocalCluster

LSN_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8"


async def test_concurrent_writes_share_reads_and_never_get_an_older_position(
    cluster: LocalCluster, test_config: Config
) -> None:
    address = test_config.shards["europe"].primary
    reader = LsnReader("europe-1", address, test_config.database)
    conn = await asyncpg.connect(host=address.host, port=address.port,
                                 database=address.database, user=test_config.database.user)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS lsn_probe (v int)")
        await conn.execute("INSERT INTO lsn_probe VALUES (1)")
        after_commit = await conn.fetchval(LSN_SQL)
        positions = await asyncio.gather(*(reader.after_write() for _ in range(20)))
        assert all(p >= after_commit for p in positions)
        assert reader.reads <= 2  # one read answers every caller that arrived before it began
        # A caller arriving after a write waits for a read that starts after it.
        await conn.execute("INSERT INTO lsn_probe VALUES (2)")
        later = await conn.fetchval(LSN_SQL)
        assert await reader.after_write() >= later
    finally:
        await conn.execute("DROP TABLE IF EXISTS lsn_probe")  # shards must stay identical
        await conn.close()
        await reader.close()


async def test_unreachable_primary_gives_a_position_no_replica_reaches(
    test_config: Config,
) -> None:
    address = replace(test_config.shards["europe"].primary, port=1)  # nothing listens there
    reader = LsnReader("nowhere", address, replace(test_config.database,
                                                   connect_timeout_seconds=1.0))
    try:
        assert await reader.after_write() == UNKNOWN_LSN
    finally:
        await reader.close()
