"""Reads a primary's WAL position for read-your-writes tokens, shared by concurrent writes.

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

__all__ = ["TIMELINE_SQL", "UNKNOWN_LSN", "LsnReader"]

log = logging.getLogger("georoute.lsn")

# Used when the position cannot be read (router/types.py says what it means).

_SQL = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8"

# A writable node's timeline (NULL on a standby), from the name of the WAL file it writes:
# its first 8 hex digits are the timeline. pg_control_checkpoint()'s timeline_id is only
# updated by the checkpoint after a promotion, which may come seconds later. Every promotion
# starts a new timeline, so the highest one is the newest primary (router/core/primary.py).
TIMELINE_SQL = (
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
)


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
                                               {"application_name": "georoute-lsn"})  # fmt: skip
        self.reads += 1
        try:
            value = await self._conn.fetchval(_SQL, timeout=self._db.connect_timeout_seconds)
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
