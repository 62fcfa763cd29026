"""router.read_only_builtins against the real cluster: the router lists pg_catalog's functions
that are not volatile from a node, a statement that calls them goes to a replica, and none of
them that the router would send to a replica fails there where it runs on the primary (every
one that takes no argument is called on both). The few left to the primary really do fail on
a standby, so the exclusion is needed."""

from __future__ import annotations

import asyncpg

import client
from router.backend.catalog import BUILTIN_READS_SQL
from router.config import Config
from router.core.classify import BUILTIN_PRIMARY_ONLY
from router.tools.db.connect import connect_node
from tests.support.router_proc import RouterProcess, port_of

# Every plain function of pg_catalog without arguments, returning something a SELECT can
# show (not a trigger, handler or internal value).
_NO_ARGUMENT_SQL = """
SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_type t
  ON t.oid = p.prorettype
WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f' AND p.pronargs = 0
  AND (t.typtype <> 'p' OR t.typname IN ('record', 'void'))
ORDER BY 1
"""


async def _fails(conn: asyncpg.Connection, sql: str) -> str | None:
    """The error `sql` ends with on `conn`, or None when it runs."""
    try:
        await conn.fetch(sql, timeout=10)
    except asyncpg.PostgresError as exc:
        return f"{exc.sqlstate}: {exc}"
    return None


async def test_a_read_calling_catalog_builtins_goes_to_a_replica(
        db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    sql = ("SELECT current_setting('port')::int, count(*), md5($2), format('%s', 1), "
           "array_length(ARRAY[1, 2], 1) FROM rt_items WHERE region = $1")
    for region in ("europe", "asia"):
        row = await db.fetchrow(sql, region, "x", consistency="replica")
        assert row is not None and row[0] == port_of(cfg, region, "replica"), region
        # One the catalogue calls stable but a standby refuses: still the primary's.
        port = await db.fetchval("SELECT current_setting('port')::int, count(*), "
                                 "txid_current() FROM rt_items WHERE region = $1", region,
                                 consistency="replica")
        assert port == port_of(cfg, region, "primary"), region


async def test_no_builtin_sent_to_a_replica_fails_there_when_it_runs_on_the_primary(
        migrated: Config) -> None:
    shard = migrated.shards["europe"]
    primary = await connect_node(migrated, shard.primary)
    replica = await connect_node(migrated, shard.replicas[0])
    try:
        await replica.execute("SET statement_timeout = '10s'")
        reads = frozenset(row[0] for row in await replica.fetch(BUILTIN_READS_SQL))
        assert {"md5", "format", "now", "array_length"} <= reads
        assert not {"nextval", "random", "setval", "pg_advisory_lock"} & reads
        no_argument = [row[0] for row in await replica.fetch(_NO_ARGUMENT_SQL)]
        called = 0
        only_on_primary = []
        for name in no_argument:
            if name not in reads or name in BUILTIN_PRIMARY_ONLY:
                continue
            # Tested, not fetched: its value is made (one a query does not use could be
            # left out by the planner) and only a boolean comes back.
            call = f"SELECT pg_catalog.{name}() IS NULL"
            on_replica = await _fails(replica, call)
            if on_replica is not None and await _fails(primary, call) is None:
                only_on_primary.append(f"{name}: {on_replica}")
            called += 1
        assert called > 50, f"only {called} functions called: the query found too few"
        assert only_on_primary == []
        # The exclusions are needed: each fails on the standby.
        for sql in ("SELECT txid_current()", "SELECT pg_current_xact_id()",
                    "SELECT pg_walfile_name('0/1000000')",
                    "SELECT * FROM pg_walfile_name_offset('0/1000000')"):
            assert await _fails(replica, sql) is not None, sql
            assert await _fails(primary, sql) is None, sql
        assert {"txid_current", "pg_current_xact_id", "pg_walfile_name",
                "pg_walfile_name_offset"} <= reads, "the exclusions are listed as reads"
    finally:
        await primary.close()
        await replica.close()
