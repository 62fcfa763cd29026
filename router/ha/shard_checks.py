"""A router node's periodic look at what its request path cannot see: whether each reference
table's copies are the same on every shard (row count and a hash of the rows' text forms, the
check `georoute health` makes too), and when each shard was last backed up (the row
`georoute backup` records on the shard's primary, in `georoute_backups`, which replicates and
survives a failover with the data). Every `router.shard_check_interval_seconds`, on each
shard's primary as the topology knows it now, over a connection of its own; the results are
metrics (router/metrics.py) for the alerts in ops/.

A reference-table write commits on every shard in one two-phase commit, whose second phase
reaches the shards one after another: a check that reads in between sees the copies differ for
a moment. The copies are read at once on every shard, and the alert waits for several checks
in a row before it fires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import asyncpg

from router.backend.tls import connect_asyncpg
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config, NodeAddress
from router.core.reference import is_reference_table
from router.ha.topology import Topology

__all__ = [
    "BACKUPS_DDL",
    "TABLES_SQL",
    "CopyState",
    "ShardChecks",
    "last_backup_time",
    "read_reference_copies",
    "record_backup",
]

log = logging.getLogger("georoute.checks")

# Every ordinary table outside the catalogue and the temporary schemas, with its schema.
TABLES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_temp%' AND n.nspname NOT LIKE 'pg\\_toast%'
"""
# The hash of each row's text form, sorted and hashed again: independent of row order.
_COPY_SQL = ("SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) "
             "FROM (SELECT md5(t::text) AS h FROM {table} t) rows")
# One row per verified base backup `georoute backup` took of the shard (georoute's own table:
# never a reference table).
BACKUPS_DDL = """
CREATE TABLE IF NOT EXISTS georoute_backups (
    backup_id   text PRIMARY KEY,
    finished_at timestamptz NOT NULL,
    size_bytes  bigint NOT NULL,
    source      text NOT NULL
)"""
_LAST_BACKUP_SQL = ("SELECT extract(epoch FROM max(finished_at))::float8 "
                    "FROM public.georoute_backups")


@dataclass(frozen=True, slots=True)
class CopyState:
    rows: int
    digest: str  # md5 over the sorted md5s of the rows' text forms


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def read_reference_copies(conn: asyncpg.Connection,
                                sharded: Collection[str]) -> dict[str, CopyState]:
    """Each reference table on this node ("table", or "schema.table" outside public)."""
    found: dict[str, CopyState] = {}
    for schema, name in await conn.fetch(TABLES_SQL):
        if not is_reference_table(name, schema, sharded):
            continue
        label = name if schema == "public" else f"{schema}.{name}"
        row = await conn.fetchrow(_COPY_SQL.format(table=f"{_ident(schema)}.{_ident(name)}"))
        assert row is not None
        found[label] = CopyState(int(row[0]), str(row[1]))
    return found


async def last_backup_time(conn: asyncpg.Connection) -> float | None:
    """When the newest backup recorded on this node finished (epoch seconds), or None."""
    if not await conn.fetchval("SELECT to_regclass('public.georoute_backups') IS NOT NULL"):
        return None  # never backed up (the table is made by the first backup)
    value = await conn.fetchval(_LAST_BACKUP_SQL)
    return None if value is None else float(value)


async def record_backup(conn: asyncpg.Connection, backup_id: str, finished_at: object,
                        size_bytes: int, source: str) -> None:
    """What `georoute backup` writes on the shard's primary once a backup is verified."""
    await conn.execute(BACKUPS_DDL)
    await conn.execute(
        "INSERT INTO georoute_backups (backup_id, finished_at, size_bytes, source) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (backup_id) DO NOTHING",
        backup_id, finished_at, size_bytes, source)


@dataclass(slots=True)
class ShardChecks:
    """The periodic check; `run()` is the task. Its results are read by the metrics."""

    topology: Callable[[], Topology]
    config: Callable[[], Config]
    clock: Clock = SYSTEM_CLOCK
    # table -> whether its copies differ (or one is missing), as of the last complete check
    diverged: dict[str, bool] = field(default_factory=dict)
    # shard -> when its last recorded backup finished (epoch seconds; 0: none recorded)
    last_backup: dict[str, float] = field(default_factory=dict)
    # shard -> checks that could not read it
    failures: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    _round: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            interval = self.config().router.shard_check_interval_seconds
            if interval <= 0:
                return
            try:
                await self.check()
            except Exception:  # the check must never stop checking
                log.exception("the shard check failed")
            await self.clock.sleep(interval)

    async def wait_check(self) -> None:
        """Until the next check has completed (tests)."""
        self._round.clear()
        await self._round.wait()

    async def check(self) -> None:
        """One check of every shard, the shards read at once."""
        topology, config = self.topology(), self.config()
        shards = list(topology.shards.values())
        for shard in shards:
            self.failures.setdefault(shard.name, 0)
        results = await asyncio.gather(
            *(self._read(config, s.primary.address) for s in shards), return_exceptions=True)
        copies: dict[str, dict[str, CopyState]] = {}
        for shard, result in zip(shards, results, strict=True):
            if isinstance(result, BaseException):
                self.failures[shard.name] += 1
                log.warning("shard check: cannot read shard %s: %s: %s", shard.name,
                            type(result).__name__, result)
                continue
            tables, backup = result
            copies[shard.name] = tables
            self.last_backup[shard.name] = backup or 0.0
        if len(copies) == len(shards):  # only a complete view says whether copies agree
            names = sorted({name for tables in copies.values() for name in tables})
            diverged = {}
            for name in names:
                states = [c.get(name) for c in copies.values()]
                diverged[name] = None in states or len(set(states)) != 1
            for name, differs in diverged.items():
                if differs and not self.diverged.get(name):
                    log.error("reference table %s differs between shards: %s", name, {
                        s: (c[name].rows, c[name].digest[:8]) if name in c else None
                        for s, c in copies.items()})
            self.diverged = diverged
        self.checks += 1
        self._round.set()

    async def _read(self, config: Config,
                    address: NodeAddress) -> tuple[dict[str, CopyState], float | None]:
        conn = await connect_asyncpg(config.database, address,
                                     {"application_name": "georoute-checks"})
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                tables = await read_reference_copies(conn, config.tables)
                backup = await last_backup_time(conn)
            return tables, backup
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
