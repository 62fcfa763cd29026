"""WAL positions: the SQL that reads them (every reader in georoute uses these), and the
shared reader of a primary's position after writes, for read-your-writes tokens.

Positions are int8 byte offsets from 0/0 (a pg_lsn minus '0/0'): what tokens carry
(protocol/ryw.py) and what replica lag subtracts.

A write's token must be a WAL position read *after* the write committed. Asking on the write's
own connection costs every write a second round trip; instead, writes that finish while a read
is already in flight wait for the next read, and that one read answers all of them. Under
concurrent writes this turns N extra round trips into about two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from router.backend.tls import connect_asyncpg
from router.config import DatabaseConfig, NodeAddress
from router.types import UNKNOWN_LSN

__all__ = [
    "AFTER_WRITE_SQL",
    "NODE_POSITION",
    "NODE_POSITION_SQL",
    "NODE_STATE_SQL",
    "PRIMARY_POSITION",
    "PRIMARY_POSITION_SQL",
    "REPLAY_POSITION",
    "REPLAY_POSITION_SQL",
    "SYSTEM_ID_SQL",
    "TIMELINE_SQL",
    "UNKNOWN_LSN",
    "LsnReader",
    "position_bytes",
]

log = logging.getLogger("georoute.lsn")

# Used when the position cannot be read (router/types.py says what it means).


def position_bytes(lsn_expression: str) -> str:
    """SQL for a pg_lsn expression as an int8 byte offset from 0/0."""
    return f"({lsn_expression} - '0/0'::pg_lsn)::int8"


# A primary's position right after a write, read on the write's own connection or after it
# completed: the insert position (with synchronous_commit off, the write position may still
# be behind the write's commit record). Fails on a replica.
AFTER_WRITE_SQL = f"SELECT {position_bytes('pg_current_wal_insert_lsn()')}"
# A primary's position, that replicas are measured against (replica lag).
PRIMARY_POSITION = position_bytes("pg_current_wal_lsn()")
PRIMARY_POSITION_SQL = f"SELECT {PRIMARY_POSITION}"
# How far a replica has replayed (NULL on a node that never was in recovery; on a promoted
# one, where its recovery ended, for good).
REPLAY_POSITION = position_bytes("pg_last_wal_replay_lsn()")
REPLAY_POSITION_SQL = f"SELECT {REPLAY_POSITION}"
# Any node's position: how far it has replayed while in recovery, else its own. Not
# coalesce(replay, own): a promoted node's replay position stays where its recovery ended,
# and the primary it became would seem to write nothing (every replica fresh).
NODE_POSITION = position_bytes("CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                               "ELSE pg_current_wal_lsn() END")
NODE_POSITION_SQL = f"SELECT pg_is_in_recovery(), {NODE_POSITION}"

# A writable node's timeline (NULL on a standby), from the name of the WAL file it writes:
# its first 8 hex digits are the timeline. pg_control_checkpoint()'s timeline_id is only
# updated by the checkpoint after a promotion, which may come seconds later. Every promotion
# starts a new timeline, so the highest one is the newest primary (router/core/primary.py).
TIMELINE_SQL = (
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
)
# The cluster a node belongs to (initdb's; its replicas share it), asked once per connection
# in managed mode (router/ha/memory.py). Any role may call pg_control_system().
SYSTEM_ID_SQL = "SELECT system_identifier FROM pg_control_system()"
# What the monitor asks every node each round: in recovery or not, its position, its timeline.
NODE_STATE_SQL = f"SELECT pg_is_in_recovery(), {NODE_POSITION}, {TIMELINE_SQL}"


class LsnReader:
    def __init__(self, name: str, address: NodeAddress, db: DatabaseConfig) -> None:
        self.name = name
        self._address = address
        self._db = db
        self._conn: asyncpg.Connection | None = None
        self._next: asyncio.Future[int] | None = None  # the read that has not started yet
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.reads = 0

    async def after_write(self) -> int:
        """A WAL position at or past every write that completed before this call."""
        if self._closed:
            return UNKNOWN_LSN
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        fut = self._next
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"lsn:{self.name}")
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        fut: asyncio.Future[int] | None = None
        try:
            while self._next is not None:
                fut, self._next = self._next, None  # later callers wait for the next read
                try:
                    lsn = await self._read()
                except Exception as exc:  # the writes succeeded; only the token is unknown
                    log.warning("cannot read WAL position of %s: %s", self.name, exc)
                    lsn = UNKNOWN_LSN
                if not fut.done():
                    fut.set_result(lsn)
        finally:
            # Cancelled (closing): nobody may be left waiting for a position.
            for pending in (fut, self._next):
                if pending is not None and not pending.done():
                    pending.set_result(UNKNOWN_LSN)
            self._next = None

    async def _read(self) -> int:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect_asyncpg(self._db, self._address,
                                               {"application_name": "georoute-lsn"})
        self.reads += 1
        try:
            value = await self._conn.fetchval(AFTER_WRITE_SQL,
                                              timeout=self._db.connect_timeout_seconds)
        except BaseException:
            self._conn.terminate()
            self._conn = None
            raise
        return int(value)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
