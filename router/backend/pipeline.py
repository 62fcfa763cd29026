"""The pipelined connections to one node: the fast path for autocommit statements.

`Pipeline` keeps `database.pipeline_connections` PostgreSQL connections (backend/pgwire.py) per
node and spreads statements over them; `BackendPool` (pool.py) owns one next to its pooled
asyncpg connections, which take whatever the pipeline declines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from router.backend.pgwire import Callback, PipelinedConnection, Unsupported
from router.backend.tls import open_stream
from router.config import DatabaseConfig, NodeAddress

__all__ = [
    "Pipeline",
    "QueryResult",
    "connect_pipelined",
    "is_lock_timeout",
    "is_stale_statement",
]

log = logging.getLogger("georoute.pipeline")

QueryResult = tuple[list[str], list[Any], str]  # (columns, rows, command status)
_MAX_STATEMENT_TIMEOUT_MS = 2**31 - 1  # PostgreSQL's largest statement_timeout


def is_lock_timeout(exc: BaseException) -> bool:
    """A pipelined statement gave up waiting for a lock (the pipeline's lock_timeout): it was
    rolled back, and may run again on a pooled connection, which waits as long as it takes."""
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == "55P03"


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

    A statement that kept the server busy longer than `database.pipeline_slow_ms`
    `SLOW_STREAK` times in a row goes to pooled connections for the next `SLOW_COOL_DOWN`
    seconds: on a shared connection it would hold up every request queued behind it. The
    measure is taken on the router's side (the time between its reply and the one before),
    so a stalled or descheduled event loop makes the first reply it reads look slow: at 256
    clients one look at a time demoted the hottest statement. A loop stall makes one reply of
    a batch look slow, its neighbours fast; a slow statement is slow every time. Hence the
    streak, and a cool-down rather than a verdict for good.

    Until a statement has once been seen to finish quickly, only one copy of it at a time runs
    on the pipeline (the others on pooled connections): a hundred copies of a new, slow
    statement sent at once must not all queue up here before the first is judged."""

    SLOW_STREAK = 3
    SLOW_COOL_DOWN = 10.0
    _SLOW_MEMORY = 4096  # statements remembered as slow (forgotten all at once beyond that)
    _FAST_MEMORY = 4096  # statements remembered as fast (likewise)

    def __init__(self, name: str, address: NodeAddress, db: DatabaseConfig,
                 settings: dict[str, str]) -> None:
        self.name = name
        self._address = address
        self._db = db
        # A statement waiting on a row lock would hold up everything queued behind it (and
        # could wait on a transaction whose next statement is queued behind it): it gives up
        # after pipeline_slow_ms and runs again on a pooled connection (see is_lock_timeout).
        self._settings = {**settings, "lock_timeout": str(max(1, int(db.pipeline_slow_ms)))}
        # A request's timeout_ms below the sessions' own statement_timeout (0: none) is
        # given to its statement on the server (pgtypes.statement_timeout_prefix).
        self._statement_timeout_ms = int(settings.get("statement_timeout", "0"))
        # TLS as database.sslmode says, like the pooled connections (router/backend/tls.py).
        self._size = db.pipeline_connections if db.statement_cache_size > 0 else 0
        self._max_in_flight = db.pipeline_max_in_flight
        self._slow_after = db.pipeline_slow_ms / 1000
        self._conns: list[PipelinedConnection] = []
        self._opening = 0
        self._retry_at = 0.0
        self._closed = False
        self._retiring: list[PipelinedConnection] = []  # closing once their work is done
        self._slow: dict[str, float] = {}  # sql -> until when it stays off the pipeline
        self._streaks: dict[str, int] = {}  # sql -> how many slow runs in a row so far
        self._fast: set[str] = set()  # seen to finish quickly: any number of copies at once
        self._trying: set[str] = set()  # not judged yet, and its one copy is in flight
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
        n = sum(c.in_flight for c in self._conns)
        return n + sum(c.in_flight for c in self._retiring) if self._retiring else n

    def open_connections(self) -> list[PipelinedConnection]:
        """Every connection not closed yet: those taking requests and those retiring."""
        return [c for c in (*self._conns, *self._retiring) if not c.closed]

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
                timeout=self._db.connect_timeout_seconds, db=self._db,
            )
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
                and time.monotonic() >= self._retry_at):
            task = asyncio.ensure_future(self._open())
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        if best is None or best.in_flight >= self._max_in_flight or not best.usable:
            return None
        return best

    def _server_timeout(self, timeout_ms: int | None) -> int | None:
        """The timeout a statement gets on the server, if it is below the session's own:
        PostgreSQL stops a statement past its client's timeout_ms, and a statement that the
        router alone gave up on does not hold up, for as long as it runs on, every request
        pipelined behind it on the same connection."""
        default = self._statement_timeout_ms
        if timeout_ms and (not default or timeout_ms < default):
            return min(timeout_ms, _MAX_STATEMENT_TIMEOUT_MS)
        return None

    def submit(self, sql: str, params: Sequence[Any], callback: Callback,
               wal_position: bool = False,
               timeout_ms: int | None = None) -> list[str] | None:
        """Queue a statement already prepared on the least busy connection; `callback` gets
        its result (see pgwire.Callback). Returns the column names, or None when the pipeline
        declines (nothing was sent; `run` also prepares)."""
        if sql in self._slow and self._still_slow(sql):
            return None
        judged = sql in self._fast
        if not judged and sql in self._trying:
            return None
        conn = self._pick()
        if conn is None:
            return None
        stmt = conn.cached(sql)
        if stmt is None:
            return None
        try:
            conn.execute_then(stmt, params, callback, wal_position,
                              self._server_timeout(timeout_ms))
        except Unsupported:
            return None
        if not judged:
            self._trying.add(sql)
        self._idle.clear()
        return stmt.columns

    def _submit(
        self, conn: PipelinedConnection, sql: str, params: Sequence[Any],
        timeout_ms: int | None = None,
    ) -> Submitted | None:
        judged = sql in self._fast
        if not judged and sql in self._trying:
            return None
        stmt = conn.cached(sql)
        if stmt is None:
            return None
        try:
            fut = conn.execute(stmt, params, self._server_timeout(timeout_ms))
        except Unsupported:
            return None
        if not judged:
            self._trying.add(sql)
        self._idle.clear()
        return fut, stmt.columns

    def finished(self, sql: str, server_seconds: float) -> None:
        """Note a statement done on the pipeline (one that took long stays off it)."""
        self.statements += 1
        if self._trying:
            self._trying.discard(sql)
        if server_seconds <= self._slow_after:
            if self._streaks:
                self._streaks.pop(sql, None)
            if server_seconds > 0 and sql not in self._fast:  # 0: the connection failed
                if len(self._fast) >= self._FAST_MEMORY:
                    self._fast.clear()
                self._fast.add(sql)
            return
        self._fast.discard(sql)  # slow now: judged again, one copy at a time
        streak = self._streaks.get(sql, 0) + 1
        if streak < self.SLOW_STREAK:
            if len(self._streaks) >= self._SLOW_MEMORY:
                self._streaks.clear()
            self._streaks[sql] = streak
            return
        del self._streaks[sql]
        if len(self._slow) >= self._SLOW_MEMORY:
            self._slow.clear()
        self._slow[sql] = time.monotonic() + self.SLOW_COOL_DOWN
        log.info("%s: statement kept off the pipeline (took %.0f ms): %.200s",
                 self.name, server_seconds * 1000, sql)

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
        self, sql: str, params: Sequence[Any], *, retry_stale: bool = True,
        timeout_ms: int | None = None,
    ) -> QueryResult:
        """Run one autocommit statement on the pipeline, preparing it first if need be.
        Raises Unsupported when it cannot (nothing was sent), PipelineError when the
        connection failed under it, or the statement's PostgresError. `timeout_ms`: the
        request's, which the server then enforces too (see `_server_timeout`)."""
        conn = None if sql in self._slow and self._still_slow(sql) else self._pick()
        sent = None if conn is None else self._submit(conn, sql, params, timeout_ms)
        if sent is None and conn is not None and conn.cached(sql) is None:
            await conn.prepare(sql)
            if not conn.closed:
                sent = self._submit(conn, sql, params, timeout_ms)
        if sent is None:
            self.fallbacks += 1
            raise Unsupported
        fut, columns = sent
        try:
            rows, status, server_seconds = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The statement runs on: it is judged (and its slot freed) when it completes.
            fut.add_done_callback(lambda done: self._settled(sql, done))
            raise
        except BaseException as exc:
            self._trying.discard(sql)  # not judged: the next copy may try
            if not isinstance(exc, asyncpg.PostgresError):
                raise
            if is_lock_timeout(exc):  # rolled back: it may run again, on a pooled connection
                self.fallbacks += 1
                raise Unsupported from exc
            if not is_stale_statement(exc) or not retry_stale:
                raise
            self.forget(sql)
            return await self.run(sql, params, retry_stale=False, timeout_ms=timeout_ms)
        self.finished(sql, server_seconds)
        return columns, rows, status

    def _settled(self, sql: str, fut: asyncio.Future[Any]) -> None:
        """A statement whose caller gave up has completed."""
        if fut.cancelled() or fut.exception() is not None:
            self._trying.discard(sql)
        else:
            self.finished(sql, fut.result()[2])

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
        """The node looks gone: nothing new goes to these connections. An idle one closes now;
        a busy one once its statements are answered. Aborting those would turn writes that
        may well have committed into errors of unknown outcome; if the node is really gone,
        they fail by themselves."""
        conns, self._conns = self._conns, []
        for conn in conns:
            if conn.closed or not conn.in_flight:
                conn.abort()
                continue
            self._retiring.append(conn)

            def retire(conn: PipelinedConnection = conn) -> None:
                conn.abort()
                if conn in self._retiring:
                    self._retiring.remove(conn)
                self._note_idle()

            conn.on_idle = retire

    async def close(self, grace: float) -> None:
        self._closed = True
        await self.drain(grace)
        conns, self._conns = self._conns, []
        for conn in conns:
            if conn.in_flight:
                conn.abort()
            else:
                await conn.close()


async def connect_pipelined(
    name: str, *, host: str, port: int, user: str, database: str, password: str | None,
    settings: dict[str, str], cache_size: int, timeout: float,  # noqa: ASYNC109
    db: DatabaseConfig | None = None,
) -> PipelinedConnection:
    """Open and start a pipelined connection (a Unix socket when `host` is a directory;
    TLS as `db.sslmode` says, prefer by default)."""

    def factory() -> PipelinedConnection:
        return PipelinedConnection(name, user=user, database=database, password=password,
                                   settings=settings, cache_size=cache_size)

    async with asyncio.timeout(timeout):
        _, conn = await open_stream(host, port, db or DatabaseConfig(), factory)
        try:
            await conn.started()
        except BaseException:
            conn.abort()
            raise
    return conn
