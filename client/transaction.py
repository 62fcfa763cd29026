"""A transaction, pinned to one router connection: Begin on enter, Commit on success,
Rollback on an exception. Begun with a shard (or shard key) it runs on that shard; without,
it spans the shards its statements' keys name, and commits on all of them or none. Statements
inside are never retried (the transaction would not survive the reconnect)."""

# A per-request `timeout=` (not an asyncio.timeout around the call) because it is also sent to
# the router as timeout_ms and bounds all retries together.
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from client.connection import Connection
from client.errors import GeorouteError, ProtocolViolationError, TransactionError
from client.record import Record
from client.replies import rows_of, status_of
from client.sender import Sender
from protocol import (
    Batch,
    Begin,
    Commit,
    Hints,
    Isolation,
    Query,
    QueryKind,
    Reply,
    Request,
    Rollback,
    RouteInfo,
    TxStarted,
)

__all__ = ["Transaction"]


class Transaction:
    def __init__(
        self,
        sender: Sender,
        hints: Hints,
        isolation: Isolation | None,
        read_only: bool,
        timeout: float | None,
    ) -> None:
        self._sender = sender
        self._hints = hints
        self._isolation = isolation
        self._read_only = read_only
        self._timeout = timeout
        self._conn: Connection | None = None
        self.tx: int | None = None
        self.route: RouteInfo | None = None
        self._finished = False

    async def __aenter__(self) -> Transaction:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished or self.tx is None:
            return
        if exc_type is None:
            await self.commit()
            return
        # The router rolls back on its own if the connection is gone; the original exception
        # is what the caller needs to see.
        with contextlib.suppress(GeorouteError):
            await self.rollback()

    async def start(self) -> None:
        if self.tx is not None:
            raise TransactionError("transaction already started")
        begin = Begin(0, self._hints, self._isolation, self._read_only)
        # Nothing is applied by Begin, so it may be retried on another connection.
        reply, conn = await self._sender.send(begin, retry=True, timeout=self._timeout)
        if not isinstance(reply, TxStarted):
            raise ProtocolViolationError(f"expected TxStarted, got {type(reply).__name__}")
        self._conn = conn
        self.tx = reply.tx
        self.route = reply.route

    async def commit(self) -> str:
        return status_of(await self._finish(Commit(0, self._require_tx())))

    async def rollback(self) -> str:
        return status_of(await self._finish(Rollback(0, self._require_tx())))

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[Record]:
        query = Query(0, sql, list(args), QueryKind.FETCH, self._statement_hints(timeout))
        return rows_of(await self._pinned(query, timeout))

    async def fetchrow(self, sql: str, *args: Any, timeout: float | None = None) -> Record | None:
        result = await self.fetch(sql, *args, timeout=timeout)
        return result[0] if result else None

    async def fetchval(
        self, sql: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        row = await self.fetchrow(sql, *args, timeout=timeout)
        return None if row is None else row[column]

    async def execute(self, sql: str, *args: Any, timeout: float | None = None) -> str:
        hints = self._statement_hints(timeout)
        hints.want_rows = False
        query = Query(0, sql, list(args), QueryKind.EXECUTE, hints)
        return status_of(await self._pinned(query, timeout))

    async def executemany(
        self, sql: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> str:
        batch = Batch(0, [(sql, list(a)) for a in args], self._statement_hints(timeout))
        return status_of(await self._pinned(batch, timeout))

    # -- internals

    def _require_tx(self) -> int:
        if self.tx is None:
            raise TransactionError("transaction not started")
        if self._finished:
            raise TransactionError("transaction already finished")
        return self.tx

    def _statement_hints(self, timeout: float | None) -> Hints:
        hints = self._sender.hints(None, None, None, None, timeout)
        hints.tx = self._require_tx()
        return hints

    async def _pinned(self, message: Request, timeout: float | None) -> Reply:
        assert self._conn is not None
        reply, _ = await self._sender.send(message, retry=False, timeout=timeout, conn=self._conn)
        return reply

    async def _finish(self, message: Commit | Rollback) -> Reply:
        self._finished = True
        return await self._pinned(message, self._timeout)
