"""Backend connections to one PostgreSQL node, managed by the router itself.

asyncpg's Pool runs a reset query on every release, which halved a proxy's throughput; here a
connection goes back to the idle list untouched unless the statement it ran changed session
state. Such a connection is closed, not reset: no reset clears everything (asyncpg's leaves
temporary tables, prepared statements and SET ROLE behind; DISCARD ALL would drop the cached
statements under asyncpg), and the next client must find a clean session. Each connection
keeps its own LRU of prepared statements, so a hot statement costs one round trip (bind +
execute). Its values are read and written as the wire carries them (pgcodecs.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from router.backend.errors import NodeUnavailableError, PoolTimeoutError
from router.backend.pgcodecs import columns_of, install_codecs, name_failed_column, wire_params
from router.backend.pipeline import Pipeline
from router.backend.tls import connect_asyncpg
from router.backend.wirevalues import Columns, ResultValueError
from router.config import DatabaseConfig, NodeAddress

__all__ = [
    "Backend",
    "BackendPool",
    "NodeUnavailableError",
    "PoolTimeoutError",
    "QueryResult",
]

log = logging.getLogger("georoute.pool")

_RETRY_ONCE = (asyncpg.exceptions.InvalidCachedStatementError,
               asyncpg.exceptions.OutdatedSchemaCacheError)


_SERVER_IDLE_MARGIN_S = 5.0


QueryResult = tuple[list[str], list[Any], str]  # (columns, rows as tuples, command status)


class Backend:
    """One connection to a node with its own prepared-statement cache."""

    __slots__ = ("_stmts", "cache_size", "conn", "dirty", "pool")

    def __init__(self, conn: asyncpg.Connection, pool: BackendPool, cache_size: int) -> None:
        self.conn = conn
        self.pool = pool
        self.cache_size = cache_size
        self.dirty = False  # ran something that changed session state: closed on release
        self._stmts: collections.OrderedDict[str, Any] = collections.OrderedDict()

    async def _prepare(self, sql: str) -> tuple[Any, Columns]:
        stmt = await self.conn.prepare(sql)
        entry = (stmt, columns_of(stmt.get_attributes()))
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
            records = await stmt.fetch(*wire_params(params))
        except ResultValueError as exc:
            name_failed_column(exc, columns)
            raise
        except _RETRY_ONCE:
            # The schema changed under a cached statement (e.g. a migration): re-prepare once.
            self._stmts.pop(sql, None)
            if not retry_stale:
                raise
            return await self.run(sql, params, retry_stale=False)
        return columns, list(map(tuple, records)), stmt.get_statusmsg()

    async def attributes(self, sql: str) -> tuple[Any, ...]:
        """The result columns (names and types) of `sql`, prepared once on this connection."""
        return tuple((await self._statement(sql)).get_attributes())

    async def run_many(self, sql: str, args: Sequence[Sequence[Any]]) -> str:
        stmt = await self._statement(sql)
        await stmt.executemany([wire_params(a) for a in args])
        return f"BATCH {len(args)}"

    async def scalar(self, sql: str) -> Any:
        stmt = await self._statement(sql)
        return await stmt.fetchval()


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
            # The router rolls an idle transaction back itself (transactions.py); the server's
            # own limit, a little later, covers a router that cannot.
            self._settings["idle_in_transaction_session_timeout"] = str(
                int((transaction_idle_timeout + _SERVER_IDLE_MARGIN_S) * 1000)
            )
        self._idle: collections.deque[Backend] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Backend]] = collections.deque()
        self._all: set[Backend] = set()
        self._opening = 0
        self._closing = 0  # closed politely, not gone yet: they still count against max_size
        # Connections given up on mid-statement whose cancel is still being sent, beside the
        # pool: they no longer hold a slot (at most pool_max_size of them, see release()).
        self._cancelling: set[asyncio.Task[None]] = set()
        self._closed = False
        self._bg: set[asyncio.Task[Any]] = set()
        self.waits_total = 0
        # Connections closed: their session changed (never reused), they broke, or they were
        # found silent with their server sessions gone (router/ha/sweeper.py: pooled and
        # pipelined ones).
        self.closed_total = {"session_changed": 0, "broken": 0, "lost": 0}
        self.idle_rollbacks = 0  # transactions rolled back by the router for idleness
        self._all_idle = asyncio.Event()
        self._all_idle.set()
        self.pipeline = Pipeline(name, address, db, self._settings)

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def database(self) -> DatabaseConfig:
        return self._db

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_use(self) -> int:
        return len(self._all) - len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def free_slots(self) -> int:
        """How many more connections `acquire` may open now (pool_max_size less those open,
        opening or closing)."""
        return self._db.pool_max_size - len(self._all) - self._opening - self._closing

    @property
    def cancelling(self) -> int:
        """Connections given up on mid-statement whose cancel is still on its way."""
        return len(self._cancelling)

    async def _connect(self) -> Backend:
        try:
            # We keep our own per-connection statement cache, but asyncpg's must stay on:
            # with statement_cache_size=0 even an explicitly prepared statement runs ~70%
            # slower (measured: 157 vs 91 us per point read).
            conn = await connect_asyncpg(self._db, self.address, self._settings,
                                         max(self._db.statement_cache_size, 1))
            await install_codecs(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise NodeUnavailableError(f"cannot connect to {self.name} ({self.address.label}): "
                                       f"{exc}", refused=isinstance(exc, asyncpg.PostgresError)
                                       ) from exc
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
        if len(self._all) + self._opening + self._closing < self._db.pool_max_size:
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

    def release(self, backend: Backend, *, broken: bool = False,
                abandoned: bool = False) -> None:
        """Give `backend` back: kept for the next borrower, or closed when `broken`.
        `abandoned`: a statement on it was given up on mid-flight (cancelled by the request's
        timeout, say). Closed too, but only once the server has stopped that statement:
        PostgreSQL notices a closed connection only when it next writes to it, so a sort
        left behind would run on for up to the session's statement_timeout.
        Its slot opens at once and the cancel goes on beside the pool (bounded by
        connect_timeout_seconds): while the node does not answer, a slot held for the
        cancel's whole wait starved the next requests of connections. At most pool_max_size
        connections are cancelled that way at once (so the node sees at most twice
        pool_max_size from this pool); past that, one holds its slot until its cancel ends."""
        if abandoned and not backend.conn.is_closed() and not self._closed:
            self._all.discard(backend)
            self._note_returned()
            self.closed_total["broken"] += 1
            if len(self._cancelling) < self._db.pool_max_size:
                task = self._spawn(self._stop_then_close(backend.conn, holds_slot=False))
                self._cancelling.add(task)
                task.add_done_callback(self._cancelling.discard)
                self._slot_freed()
            else:
                self._closing += 1  # its slot opens once it is gone
                self._spawn(self._stop_then_close(backend.conn, holds_slot=True))
            return
        if broken or abandoned or backend.conn.is_closed() or self._closed:
            self._discard(backend)
            return
        if backend.dirty:  # its session changed: closed politely, and replaced on demand
            self._discard(backend, polite=True)
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

    def _discard(self, backend: Backend, *, polite: bool = False) -> None:
        self._all.discard(backend)
        self._note_returned()
        self.closed_total["session_changed" if polite else "broken"] += 1
        if not backend.conn.is_closed():
            if polite:  # a Terminate message, so the server logs no lost connection
                self._closing += 1
                self._spawn(self._close_politely(backend.conn))
                return  # its slot opens once it is gone
            backend.conn.terminate()
        self._slot_freed()

    def _slot_freed(self) -> None:
        """Someone may be waiting for a slot that just opened up."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._spawn(self._open_for(fut))
                break

    async def _close_politely(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.close(timeout=self._db.connect_timeout_seconds)
        except Exception:
            conn.terminate()
        finally:
            self._closing -= 1
            self._slot_freed()

    async def _stop_then_close(self, conn: asyncpg.Connection, *, holds_slot: bool) -> None:
        """Close a connection whose statement was given up on, once the server has stopped
        it. asyncpg sends a cancel request for a query whose caller was cancelled and makes
        the connection's next query wait for it (the cancelled one ends with 57014 first),
        so one trivial query both waits for the cancel and shows it landed; closing at once
        would drop that request. Bounded by connect_timeout_seconds (a node that does not
        answer: closed anyway)."""
        try:
            async with asyncio.timeout(self._db.connect_timeout_seconds):
                await conn.execute("SELECT 1")
        except Exception as exc:  # expected when the cancel arrived late or the link is gone
            log.debug("%s: after a statement given up on: %s", self.name, exc)
        finally:
            conn.terminate()
            if holds_slot:
                self._closing -= 1
                self._slot_freed()

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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def sessions(self) -> dict[int, bool]:
        """The server pid of each open pooled connection, and whether it is borrowed."""
        idle = set(self._idle)
        found: dict[int, bool] = {}
        for backend in self._all:
            if not backend.conn.is_closed():
                found[backend.conn.get_server_pid()] = backend not in idle
        return found

    def drop_lost(self, pids: set[int]) -> int:
        """Close the connections whose server sessions are gone (`pids`): an idle one leaves
        the pool now; a borrowed one is aborted, so the statement waiting on it fails at once
        as a lost connection (its outcome unknown) instead of waiting for a reply that cannot
        come. Returns how many."""
        lost = [b for b in self._all if not b.conn.is_closed()
                and b.conn.get_server_pid() in pids]
        for backend in lost:
            if backend in self._idle:
                self._idle.remove(backend)
                self._discard(backend)
            else:
                backend.conn.terminate()  # its borrower releases it as broken
        return len(lost)

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
        if self._cancelling:  # cancels on their way: let them land (each is bounded too)
            _, late = await asyncio.wait(list(self._cancelling), timeout=grace)
            for task in late:
                task.cancel()  # its connection is closed on the way out
