"""Backend connections to one PostgreSQL node, managed by the router itself.

asyncpg's Pool runs a reset query on every release, which halved a proxy's throughput; here a
connection goes back to the idle list untouched unless the statement it ran changed session
state. Each connection keeps its own LRU of prepared statements, so a hot statement costs one
round trip (bind + execute).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from router.config import DatabaseConfig, NodeAddress
from router.pgwire import Callback, PipelinedConnection, Unsupported, connect_pipelined

__all__ = [
    "Backend",
    "BackendPool",
    "NodeUnavailableError",
    "Pipeline",
    "PoolTimeoutError",
    "QueryResult",
    "is_stale_statement",
]

log = logging.getLogger("georoute.pool")

_RETRY_ONCE = (asyncpg.exceptions.InvalidCachedStatementError,
               asyncpg.exceptions.OutdatedSchemaCacheError)


class NodeUnavailableError(Exception):
    """The node cannot be reached. `sent` is True when the connection died after the statement
    was sent, so it may have run: then only a read is safe to retry."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class PoolTimeoutError(Exception):
    """No backend connection became free in time. Safe to retry."""


QueryResult = tuple[list[str], list[Any], str]  # (columns, rows as tuples, command status)


class Backend:
    """One connection to a node with its own prepared-statement cache."""

    __slots__ = ("_stmts", "cache_size", "conn", "dirty", "pool")

    def __init__(self, conn: asyncpg.Connection, pool: BackendPool, cache_size: int) -> None:
        self.conn = conn
        self.pool = pool
        self.cache_size = cache_size
        self.dirty = False  # ran something that changed session state
        self._stmts: collections.OrderedDict[str, Any] = collections.OrderedDict()

    async def _prepare(self, sql: str) -> tuple[Any, list[str]]:
        stmt = await self.conn.prepare(sql)
        entry = (stmt, [a.name for a in stmt.get_attributes()])
        if self.cache_size > 0:
            self._stmts[sql] = entry
            if len(self._stmts) > self.cache_size:
                # asyncpg closes a dropped statement on the server before the next query.
                self._stmts.popitem(last=False)
        return entry

    async def _statement(self, sql: str) -> Any:
        entry = self._stmts.get(sql)
        if entry is None:
            entry = await self._prepare(sql)
        return entry[0]

    async def run(
        self, sql: str, params: Sequence[Any], *, retry_stale: bool = True
    ) -> QueryResult:
        entry = self._stmts.get(sql)
        if entry is None:
            entry = await self._prepare(sql)
        else:
            self._stmts.move_to_end(sql)
        stmt, columns = entry
        try:
            records = await stmt.fetch(*params)
        except _RETRY_ONCE:
            # The schema changed under a cached statement (e.g. a migration): re-prepare once.
            self._stmts.pop(sql, None)
            if not retry_stale:
                raise
            return await self.run(sql, params, retry_stale=False)
        return columns, list(map(tuple, records)), stmt.get_statusmsg()

    async def run_many(self, sql: str, args: Sequence[Sequence[Any]]) -> str:
        stmt = await self._statement(sql)
        await stmt.executemany(args)
        return f"BATCH {len(args)}"

    async def scalar(self, sql: str) -> Any:
        stmt = await self._statement(sql)
        return await stmt.fetchval()

    def forget_statements(self) -> None:
        self._stmts.clear()


def is_stale_statement(exc: BaseException) -> bool:
    """PostgreSQL refused a cached statement whose result type changed under it."""
    return isinstance(exc, asyncpg.FeatureNotSupportedError) and "cached plan" in str(exc)


Submitted = tuple[asyncio.Future[Any], list[str]]  # (rows, status, server seconds), columns


class Pipeline:
    """The pipelined connections to one node (`database.pipeline_connections` of them): the
    fast path for autocommit statements. Each carries up to `database.pipeline_max_in_flight`
    requests at once; a request goes to the least busy one. When none can take it (busy,
    reconnecting, types it does not carry) the pipeline declines before sending anything,
    and the caller uses a pooled asyncpg connection instead.

    A statement that kept the server busy longer than `database.pipeline_slow_ms` goes to
    pooled connections for the next `SLOW_COOL_DOWN` seconds: on a shared connection it
    would hold up every request queued behind it. The measure is from the router's side (the
    time between its reply and the one before), so a stalled event loop can make a fast
    statement look slow; hence a cool-down, not a verdict for good."""

    SLOW_COOL_DOWN = 10.0
    _SLOW_MEMORY = 4096  # statements remembered as slow (forgotten all at once beyond that)

    def __init__(self, name: str, address: NodeAddress, db: DatabaseConfig,
                 settings: dict[str, str]) -> None:  # fmt: skip
        self.name = name
        self._address = address
        self._db = db
        self._settings = settings
        self._size = db.pipeline_connections if db.statement_cache_size > 0 else 0
        self._max_in_flight = db.pipeline_max_in_flight
        self._slow_after = db.pipeline_slow_ms / 1000
        self._conns: list[PipelinedConnection] = []
        self._opening = 0
        self._retry_at = 0.0
        self._closed = False
        self._slow: dict[str, float] = {}  # sql -> until when it stays off the pipeline
        self._bg: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.statements = 0  # run on the pipeline
        self.fallbacks = 0  # declined by `run`, so run on pooled connections

    @property
    def connections(self) -> int:
        return sum(1 for c in self._conns if not c.closed)

    @property
    def in_flight(self) -> int:
        return sum(c.in_flight for c in self._conns)

    async def start(self) -> None:
        """Open the connections now (a failure is logged; they are retried on demand)."""
        if self._size:
            await asyncio.gather(*(self._open() for _ in range(self._size - len(self._conns))))

    async def _open(self) -> None:
        self._opening += 1
        try:
            conn = await connect_pipelined(
                f"{self.name}/pipeline", host=self._db.host_for(self._address),
                port=self._address.port, user=self._db.user, database=self._address.database,
                password=self._db.password(), settings=self._settings,
                cache_size=self._db.statement_cache_size,
                timeout=self._db.connect_timeout_seconds,
            )  # fmt: skip
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            self._retry_at = time.monotonic() + 1.0
            log.info("%s: pipelined connection not opened: %s", self.name, exc)
            return
        finally:
            self._opening -= 1
        if self._closed:
            conn.abort()
            return
        conn.on_idle = self._note_idle
        self._conns = [c for c in self._conns if not c.closed] + [conn]

    def _pick(self) -> PipelinedConnection | None:
        best: PipelinedConnection | None = None
        live = 0
        for conn in self._conns:
            if conn.closed:
                continue
            live += 1
            if best is None or conn.in_flight < best.in_flight:
                best = conn
        if (live + self._opening < self._size and not self._closed
                and time.monotonic() >= self._retry_at):  # fmt: skip
            task = asyncio.ensure_future(self._open())
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        if best is None or best.in_flight >= self._max_in_flight or not best.usable:
            return None
        return best

    def submit(self, sql: str, params: Sequence[Any], callback: Callback,
               wal_position: bool = False) -> list[str] | None:  # fmt: skip
        """Queue a statement already prepared on the least busy connection; `callback` gets
        its result (see pgwire.Callback). Returns the column names, or None when the pipeline
        declines (nothing was sent; `run` also prepares)."""
        if sql in self._slow and self._still_slow(sql):
            return None
        conn = self._pick()
        if conn is None:
            return None
        stmt = conn.cached(sql)
        if stmt is None:
            return None
        try:
            conn.execute_then(stmt, params, callback, wal_position)
        except Unsupported:
            return None
        self._idle.clear()
        return stmt.columns

    def _submit(
        self, conn: PipelinedConnection, sql: str, params: Sequence[Any]
    ) -> Submitted | None:
        stmt = conn.cached(sql)
        if stmt is None:
            return None
        try:
            fut = conn.execute(stmt, params)
        except Unsupported:
            return None
        self._idle.clear()
        return fut, stmt.columns

    def finished(self, sql: str, server_seconds: float) -> None:
        """Note a statement done on the pipeline (one that took long stays off it)."""
        self.statements += 1
        if server_seconds > self._slow_after:
            if len(self._slow) >= self._SLOW_MEMORY:
                self._slow.clear()
            self._slow[sql] = time.monotonic() + self.SLOW_COOL_DOWN
            log.info("%s: statement kept off the pipeline (took %.0f ms): %.200s",
                     self.name, server_seconds * 1000, sql)  # fmt: skip

    def _still_slow(self, sql: str) -> bool:
        if time.monotonic() < self._slow[sql]:
            return True
        del self._slow[sql]  # cooled down: try the pipeline again
        return False

    def forget(self, sql: str) -> None:
        """Drop `sql`'s prepared statements (its result type changed, e.g. a migration)."""
        for conn in self._conns:
            conn.forget(sql)

    async def run(
        self, sql: str, params: Sequence[Any], *, retry_stale: bool = True
    ) -> QueryResult:
        """Run one autocommit statement on the pipeline, preparing it first if need be.
        Raises Unsupported when it cannot (nothing was sent), PipelineError when the
        connection failed under it, or the statement's PostgresError."""
        conn = None if sql in self._slow and self._still_slow(sql) else self._pick()
        sent = None if conn is None else self._submit(conn, sql, params)
        if sent is None and conn is not None and conn.cached(sql) is None:
            await conn.prepare(sql)
            if not conn.closed:
                sent = self._submit(conn, sql, params)
        if sent is None:
            self.fallbacks += 1
            raise Unsupported
        fut, columns = sent
        try:
            rows, status, server_seconds = await fut
        except asyncpg.FeatureNotSupportedError as exc:
            if not is_stale_statement(exc) or not retry_stale:
                raise
            self.forget(sql)
            return await self.run(sql, params, retry_stale=False)
        self.finished(sql, server_seconds)
        return columns, rows, status

    def _note_idle(self) -> None:
        if not self.in_flight:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Wait (at most `grace` seconds) until nothing is in flight."""
        if self.in_flight:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)

    def terminate_all(self) -> None:
        """The node is gone: fail what is in flight (PipelineError) and drop the connections."""
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.abort()

    async def close(self, grace: float) -> None:
        self._closed = True
        await self.drain(grace)
        conns, self._conns = self._conns, []
        for conn in conns:
            if conn.in_flight:
                conn.abort()
            else:
                await conn.close()


class BackendPool:
    """Connections to one node: `acquire()` an idle one (or open a new one up to max_size)."""

    def __init__(
        self,
        name: str,
        address: NodeAddress,
        db: DatabaseConfig,
        *,
        acquire_timeout: float,
        statement_timeout: float,
        transaction_idle_timeout: float = 0.0,
        application_name: str = "georoute",
    ) -> None:
        self.name = name
        self.address = address
        self._db = db
        self._acquire_timeout = acquire_timeout
        self._settings = {"application_name": application_name}
        if statement_timeout > 0:
            self._settings["statement_timeout"] = str(int(statement_timeout * 1000))
        if transaction_idle_timeout > 0:
            self._settings["idle_in_transaction_session_timeout"] = str(
                int(transaction_idle_timeout * 1000)
            )
        self._idle: collections.deque[Backend] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Backend]] = collections.deque()
        self._all: set[Backend] = set()
        self._opening = 0
        self._closed = False
        self._bg: set[asyncio.Task[Any]] = set()
        self.waits_total = 0
        self._all_idle = asyncio.Event()
        self._all_idle.set()
        self.pipeline = Pipeline(name, address, db, self._settings)

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_use(self) -> int:
        return len(self._all) - len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def _connect(self) -> Backend:
        try:
            conn = await asyncpg.connect(
                host=self._db.host_for(self.address),
                port=self.address.port,
                database=self.address.database,
                user=self._db.user,
                password=self._db.password(),
                timeout=self._db.connect_timeout_seconds,
                # We keep our own per-connection statement cache, but asyncpg's must stay on:
                # with statement_cache_size=0 even an explicitly prepared statement runs
                # ~70% slower (measured: 157 vs 91 us per point read).
                statement_cache_size=max(self._db.statement_cache_size, 1),
                server_settings=self._settings,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise NodeUnavailableError(f"cannot connect to {self.name} ({self.address.label}): "
                                       f"{exc}") from exc
        backend = Backend(conn, self, self._db.statement_cache_size)
        self._all.add(backend)
        return backend

    async def start(self) -> None:
        """Open pool_min_size connections. Raises NodeUnavailableError if the node is down."""
        for _ in range(self._db.pool_min_size):
            self._idle.append(await self._connect())
        await self.pipeline.start()

    def try_acquire(self) -> Backend | None:
        """An idle connection without waiting, or None (then use `acquire`)."""
        idle = self._idle
        while idle:
            backend = idle.pop()
            if not backend.conn.is_closed():
                return backend
            self._all.discard(backend)
        return None

    async def acquire(self) -> Backend:
        if self._closed:
            raise NodeUnavailableError(f"{self.name}: pool is closed")
        while self._idle:
            backend = self._idle.pop()
            if not backend.conn.is_closed():
                return backend
            self._all.discard(backend)
        if len(self._all) + self._opening < self._db.pool_max_size:
            self._opening += 1
            try:
                return await self._connect()
            finally:
                self._opening -= 1
        self.waits_total += 1
        fut: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self._acquire_timeout):
                return await fut
        except BaseException as exc:
            # A connection handed over in the same turn as the timeout or cancellation must
            # go back, or the pool loses the slot for good.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            elif not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                raise PoolTimeoutError(
                    f"{self.name}: no free backend connection within {self._acquire_timeout}s"
                ) from exc
            raise

    async def drain(self, grace: float) -> None:
        """Wait (at most `grace` seconds) until no connection is borrowed."""
        self._all_idle.clear()
        if self.in_use:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_idle.wait(), grace)
        await self.pipeline.drain(grace)

    def _note_returned(self) -> None:
        if not self.in_use:
            self._all_idle.set()

    def release(self, backend: Backend, *, broken: bool = False) -> None:
        if broken or backend.conn.is_closed() or self._closed:
            self._discard(backend)
            return
        if backend.dirty:
            self._spawn(self._reset_and_release(backend))
            return
        self._hand_over(backend)

    def _hand_over(self, backend: Backend) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(backend)
                return
        self._idle.append(backend)
        self._note_returned()

    async def _reset_and_release(self, backend: Backend) -> None:
        try:
            await backend.conn.reset()
            backend.forget_statements()  # DISCARD/DEALLOCATE may have dropped them
            backend.dirty = False
        except Exception:
            self._discard(backend)
            return
        self._hand_over(backend)

    def _discard(self, backend: Backend) -> None:
        self._all.discard(backend)
        self._note_returned()
        if not backend.conn.is_closed():
            backend.conn.terminate()
        # Someone may be waiting for a slot that just opened up.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._spawn(self._open_for(fut))
                break

    async def _open_for(self, fut: asyncio.Future[Backend]) -> None:
        self._opening += 1
        try:
            backend = await self._connect()
        except NodeUnavailableError as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        finally:
            self._opening -= 1
        if fut.done():
            self._hand_over(backend)
        else:
            fut.set_result(backend)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def terminate_all(self) -> None:
        """The node is gone: drop every connection so none is handed out again."""
        for backend in list(self._idle):
            self._discard(backend)
        self._idle.clear()
        self.pipeline.terminate_all()

    async def close(self, grace: float = 5.0) -> None:
        self._closed = True
        await self.pipeline.close(grace)
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(NodeUnavailableError(f"{self.name}: pool is closing"))
        self._waiters.clear()
        conns = [b.conn for b in self._all]
        self._all.clear()
        self._idle.clear()
        for conn in conns:
            try:
                await asyncio.wait_for(conn.close(), grace)
            except Exception:
                conn.terminate()
