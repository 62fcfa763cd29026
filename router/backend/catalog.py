"""What the shards' own catalogue says about PostgreSQL's built-in functions: those none of
whose forms is volatile (`provolatile` 'i' or 's' for every overload of the name in pg_catalog)
cannot change the database, so a SELECT that calls only those (and router.read_only_functions)
is a read and may go to a replica. pgpool-II decides the same way from the same catalogue.
The name list comes from the server, so it is right for its PostgreSQL version.

Asked of the first node that answers at start-up (every node of every shard runs the same
schema and PostgreSQL); until one has, functions outside router.read_only_functions count as
writes (the safe side: they run on a primary), and the node asks again every few seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from router.backend.tls import connect_asyncpg
from router.config import DatabaseConfig, NodeAddress

__all__ = ["BUILTIN_READS_SQL", "RETRY_SECONDS", "builtin_reads", "learn_builtin_reads"]

log = logging.getLogger("georoute.catalog")

BUILTIN_READS_SQL = (
    "SELECT p.proname FROM pg_catalog.pg_proc p "
    "WHERE p.pronamespace = 'pg_catalog'::regnamespace "
    "GROUP BY p.proname HAVING bool_and(p.provolatile <> 'v')")
RETRY_SECONDS = 5.0


async def builtin_reads(db: DatabaseConfig, address: NodeAddress) -> frozenset[str]:
    """The names of pg_catalog's functions none of whose forms is volatile, on one node."""
    conn = await connect_asyncpg(db, address, {"application_name": "georoute-catalog"})
    try:
        rows = await conn.fetch(BUILTIN_READS_SQL, timeout=db.connect_timeout_seconds)
    finally:
        conn.terminate()
    return frozenset(row[0] for row in rows)


async def learn_builtin_reads(db: DatabaseConfig,
                              nodes: Callable[[], Iterable[tuple[str, NodeAddress]]],
                              learned: Callable[[frozenset[str]], None], *,
                              retry_seconds: float = RETRY_SECONDS) -> None:
    """Ask `nodes()` (name, address) in turn until one answers, then pass its list to
    `learned` and return; while none answers, ask again every `retry_seconds`."""
    said = False
    while True:
        for name, address in nodes():
            try:
                names = await builtin_reads(db, address)
            except Exception as exc:  # unreachable, or not answering: the next one
                log.info("catalog: %s did not list its built-in functions: %s: %s", name,
                         type(exc).__name__, exc)
                continue
            learned(names)
            log.info("catalog: %d built-in functions count as reads (not volatile, as %s's "
                     "catalog says)", len(names), name)
            return
        if not said:
            said = True
            log.warning("catalog: no node listed its built-in functions; those outside "
                        "router.read_only_functions count as writes (sent to a primary) until "
                        "one does (asked again every %.0f s)", retry_seconds)
        await asyncio.sleep(retry_seconds)
