"""Pipelined PostgreSQL connections for the router's hot path.

asyncpg runs one statement at a time per connection, so every request cost the router (and
PostgreSQL) its own write and read system calls: the router's largest single cost in the
bench profile. A `PipelinedConnection` speaks the extended query protocol itself and lets many
autocommit statements share one connection. Each request is Bind/Execute/Sync on a statement
prepared once per connection; requests queued in one event-loop turn leave in one write, and
replies are matched to requests in order. PostgreSQL answers a pipeline strictly in order, and
after an error it skips only to that request's own Sync, so a failing statement never touches
its neighbours.

It takes only what it can carry exactly as asyncpg would (router/backend/pgtypes.py): for anything
else it raises `Unsupported` before a byte is sent, and the caller runs the statement on an
asyncpg connection instead. Rows are decoded a run of DataRow messages at a time, in C where
the extension is built (router/backend/pgrows.py).

Authentication: trust, cleartext password, md5 and SCRAM-SHA-256 (router/backend/pgauth.py).
TLS is below this protocol: router/backend/pipeline.py opens the stream through
router/backend/tls.py's `open_stream`, per `database.sslmode`, as for the pooled connections.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from router.backend.errors import AuthError, PipelineError
from router.backend.pgauth import Authentication
from router.backend.pgrows import MAX_MESSAGE, decode_rows
from router.backend.pgtypes import (
    EXECUTE_ALL_SYNC,
    I16,
    I32,
    SYNC,
    U32,
    Decoder,
    Statement,
    Unsupported,
    cstr,
    error_fields,
    make_statement,
    message,
    row_description,
    statement_timeout_prefix,
)
from router.backend.wal import AFTER_WRITE_SQL
from router.backend.wirevalues import ResultValueError

__all__ = [
    "Callback",
    "PipelineError",
    "PipelinedConnection",
    "Statement",
    "Unsupported",
]

log = logging.getLogger("georoute.pgwire")

_i32_from = I32.unpack_from
_decode_rows = decode_rows  # compiled where built (router/backend/pgrows.py)
_monotonic = time.monotonic

_PROTOCOL_3_0 = 196608


def _postgres_error(fields: dict[str, str], query: str | None) -> asyncpg.PostgresError:
    """The asyncpg exception class asyncpg itself would raise for these error fields."""
    return asyncpg.PostgresError.new(fields, query=query)


def _failure(pending: _Pending) -> Exception:
    """Why a request failed: the server's error first (it may explain the bad value)."""
    if pending.error is not None:
        return _postgres_error(pending.error, pending.query)
    assert pending.value_error is not None
    pending.value_error.status = pending.status or None  # completed: the server's tag
    return pending.value_error


def _value_error(exc: Exception, pending: _Pending, index: int) -> ResultValueError:
    """The column `index` of this request's result could not be read."""
    stmt = pending.statement
    type_name = "?"
    column = None
    if stmt is not None and index < len(stmt.columns):
        column = stmt.columns[index]
        type_name = stmt.columns.types[index].removeprefix("text:")
    if isinstance(exc, ResultValueError):
        error = exc
    else:
        error = ResultValueError(type_name, str(exc))
    error.column = column
    return error


# ---- the connection ------------------------------------------------------------------------

_PREPARE, _EXECUTE, _IGNORE, _WAL = 0, 1, 2, 3
_COPY_MESSAGES = frozenset(b"GHWdc")  # CopyIn/Out/Both response, CopyData, CopyDone


# Called with (rows, status, seconds the server spent, None, WAL position) or
# (None, "", 0.0, the error, None). The WAL position is given only to writes that asked for
# one (`execute_then(..., wal_position=True)`), and is None when it could not be read.
Callback = Callable[[list[Any] | None, str, float, BaseException | None, int | None], None]


class _Pending:
    """One request in flight: its replies fill it in order until it completes."""

    __slots__ = ("callback", "columns", "decoders", "error", "future", "kind", "param_oids",
                 "query", "rows", "seconds", "started", "statement", "status", "value_error",
                 "wants_wal")

    def __init__(self, kind: int, future: asyncio.Future[Any] | None,
                 decoders: tuple[Decoder, ...] = (), query: str | None = None,
                 callback: Callback | None = None,
                 statement: Statement | None = None) -> None:
        self.kind = kind
        self.future = future
        self.decoders = decoders
        self.query = query
        self.callback = callback  # instead of the future: called as soon as it is done
        self.statement = statement  # to name a column whose value cannot be returned
        self.rows: list[Any] = []
        self.status = ""
        self.error: dict[str, str] | None = None
        # A value the wire cannot give the client: the statement ran, the request fails.
        self.value_error: ResultValueError | None = None
        self.param_oids: list[int] = []
        self.columns: list[tuple[str, int]] = []
        self.started = 0.0  # when it reached the head of the queue (the server works on it)
        self.seconds = 0.0  # how long the server worked on it
        self.wants_wal = False  # a write whose callback waits for the WAL position after it


class PipelinedConnection(asyncio.Protocol):
    """One PostgreSQL connection carrying many autocommit statements at once."""

    def __init__(
        self, name: str, *, user: str, database: str, password: str | None,
        settings: dict[str, str], cache_size: int,
    ) -> None:
        self.name = name
        self._user, self._database = user, database
        self._settings = settings
        self._cache_size = max(1, cache_size)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._out: list[bytes] = []
        self._flush_pending = False
        self._stmts: collections.OrderedDict[str, Statement] = collections.OrderedDict()
        self._preparing: dict[str, asyncio.Task[Statement]] = {}
        self._names = itertools.count(1)
        self._enums: dict[int, str] = {}  # enum type oid -> name
        self._startup: asyncio.Future[None] = self._loop.create_future()
        self._ready = False  # the session has started
        self._wal_stmt: Statement | None = None
        self._wal_wanted = False  # a write queued since the last position read was queued
        self._wal_waiting: list[_Pending] = []  # writes done, waiting for the position read
        self._auth = Authentication(user, password)
        self.backend_pid: int | None = None  # the server process serving this session
        self.closed = False
        self.error: Exception | None = None
        self.on_idle: Callable[[], None] | None = None

    # ---- state ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    @property
    def usable(self) -> bool:
        return not self.closed and self._startup.done()

    @property
    def waiting_since(self) -> float | None:
        """Since when (time.monotonic) the request at the head of the queue has waited for
        its reply (each completed request restarts it), or None when nothing is in flight.
        Read by the sweeper of silent connections (router/ha/liveness.py): the hot path
        keeps no timer of its own."""
        queue = self._queue
        return queue[0].started if queue else None

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        params = {"user": self._user, "database": self._database, "client_encoding": "UTF8",
                  "DateStyle": "ISO", **self._settings}
        body = I32.pack(_PROTOCOL_3_0) + b"".join(
            cstr(k) + cstr(v) for k, v in params.items()
        ) + b"\x00"
        transport.write(I32.pack(len(body) + 4) + body)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(PipelineError(f"{self.name}: connection lost" + (f": {exc}" if exc else "")))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        size = len(buf)
        pos = 0
        queue = self._queue
        ready = self._ready
        try:
            while size - pos >= 5:
                kind = buf[pos]
                length = _i32_from(buf, pos + 1)[0]
                if not 4 <= length <= MAX_MESSAGE:  # -1 would never advance: the loop hangs
                    raise ValueError(f"message {chr(kind)!r} of length {length}")
                end = pos + 1 + length
                if end > size:
                    break
                # The messages of every request, handled in place: DataRow, BindComplete,
                # CommandComplete, ReadyForQuery. The rest go through _on_message.
                if kind == 68 and queue:  # 'D' DataRow: this one and any that follow it
                    pending = queue[0]
                    got = _decode_rows(buf, pos, pending.decoders, pending.rows)
                    if isinstance(got, int):
                        pos = got
                    else:
                        # A value Python cannot hold (e.g. the year 10000): this request
                        # fails, naming the column; the connection is fine.
                        pos, index, exc = got
                        if pending.value_error is None:
                            pending.value_error = _value_error(exc, pending, index)
                    continue
                elif kind == 50:  # '2' BindComplete
                    pass
                elif kind == 67 and queue:  # 'C' CommandComplete
                    queue[0].status = buf[pos + 5 : end - 1].decode()
                elif kind == 90 and ready:  # 'Z' ReadyForQuery: the head request is complete
                    now = _monotonic()
                    self._complete(queue.popleft(), now)
                    if queue:
                        queue[0].started = now
                    elif self.on_idle is not None:
                        self.on_idle()
                    if self.closed:  # a callback closed us (e.g. the node went down)
                        return
                else:
                    self._on_message(kind, bytes(buf[pos + 5 : end]))
                    if self.closed:
                        return
                    ready = self._ready
                pos = end
        except Exception as exc:  # a decoding bug or a protocol violation: the stream is lost
            self._fail(PipelineError(f"{self.name}: bad reply from server: {exc!r}"))
            return
        if pos:
            del buf[:pos]

    # ---- messages in -----------------------------------------------------------------------

    def _on_message(self, kind: int, body: bytes) -> None:
        if not self._startup.done():
            self._startupmessage(kind, body)
            return
        queue = self._queue
        if kind == 69:  # 'E' ErrorResponse
            fields = error_fields(body)
            # V: the severity, never translated (S follows lc_messages).
            if fields.get("V", fields.get("S")) in ("FATAL", "PANIC") or not queue:
                self._fail(PipelineError(f"{self.name}: {fields.get('M', 'server error')} "
                                         f"({fields.get('C', '?')})"))
                return
            if queue[0].error is None:
                queue[0].error = fields
        elif kind == 116:  # 't' ParameterDescription
            count = I16.unpack_from(body, 0)[0]
            queue[0].param_oids = [U32.unpack_from(body, 2 + 4 * i)[0] for i in range(count)]
        elif kind == 84:  # 'T' RowDescription
            queue[0].columns = row_description(body)
        elif kind in _COPY_MESSAGES:  # never sent COPY: replies no longer match requests
            self._fail(PipelineError(f"{self.name}: unexpected COPY message {chr(kind)!r}"))
        # '1' ParseComplete, '2' BindComplete, '3' CloseComplete, 'n' NoData, 'I' empty query,
        # 'N' notices, 'S' parameter status and 'A' notifications need nothing.

    def _complete(self, pending: _Pending, now: float) -> None:
        kind = pending.kind
        if kind == _IGNORE:
            return
        if kind == _WAL:
            self._wal_read(pending)
            return
        callback = pending.callback
        if callback is not None:
            if pending.error is not None or pending.value_error is not None:
                error = _failure(pending)
                self._call(callback, None, "", now - pending.started, error, None)
            elif pending.wants_wal:
                pending.seconds = now - pending.started
                self._wal_waiting.append(pending)  # answered by the position read after it
            else:
                self._call(callback, pending.rows, pending.status, now - pending.started, None,
                           None)
            return
        fut = pending.future
        assert fut is not None
        if fut.done():  # the requester gave up (timeout or cancellation)
            return
        if pending.error is not None or pending.value_error is not None:
            fut.set_exception(_failure(pending))
        elif pending.kind == _EXECUTE:
            fut.set_result((pending.rows, pending.status, now - pending.started))
        else:
            fut.set_result(pending)

    def _startupmessage(self, kind: int, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if kind == 82:  # 'R' authentication
            try:
                reply = self._auth.answer(body)
            except AuthError as exc:
                self._fail_startup(str(exc))
                return
            if reply is not None:
                transport.write(reply)
        elif kind == 75 and len(body) >= 4:  # 'K' BackendKeyData: the server process's pid
            self.backend_pid = _i32_from(body, 0)[0]
        elif kind == 69:  # 'E'
            fields = error_fields(body)
            self._fail_startup(f"{fields.get('M', 'refused')} ({fields.get('C', '?')})")
        elif kind == 90:  # 'Z': ready, which only an authenticated session may say
            if not self._auth.done:
                self._fail_startup("the server said ready before authentication was done")
                return
            self._ready = True
            self._startup.set_result(None)

    @staticmethod
    def _call(callback: Callback, rows: list[Any] | None, status: str, seconds: float,
              error: BaseException | None, wal: int | None) -> None:
        try:
            callback(rows, status, seconds, error, wal)
        except Exception:  # the requester's bug must not cost everyone the connection
            log.exception("pipelined request callback failed")

    def _wal_read(self, pending: _Pending) -> None:
        """The WAL position read after some writes: it answers every write done before it."""
        position: int | None = None
        if pending.error is None and pending.rows and pending.rows[0][0] is not None:
            position = int(pending.rows[0][0])
        waiting, self._wal_waiting = self._wal_waiting, []
        for write in waiting:
            assert write.callback is not None
            self._call(write.callback, write.rows, write.status, write.seconds, None, position)

    def _fail_startup(self, why: str) -> None:
        self._fail(PipelineError(f"{self.name}: cannot start a session: {why}"))

    def _fail(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        if not self._startup.done():
            self._startup.set_exception(error)
        queue, self._queue = self._queue, collections.deque()
        waiting, self._wal_waiting = self._wal_waiting, []
        for write in waiting:  # done, but the position after them is unknown
            assert write.callback is not None
            self._call(write.callback, write.rows, write.status, write.seconds, None, None)
        for pending in queue:
            if pending.kind in (_IGNORE, _WAL):
                continue
            if pending.callback is not None:
                self._call(pending.callback, None, "", 0.0, error, None)
            elif pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()
        if self.on_idle is not None:
            self.on_idle()

    # ---- messages out ----------------------------------------------------------------------

    def _send(self, data: bytes, pending: _Pending) -> None:
        if self.closed:
            raise self.error or PipelineError(f"{self.name}: closed")
        if not self._queue:
            pending.started = _monotonic()
        self._queue.append(pending)
        self._out.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._wal_wanted and not self.closed:
            self._wal_wanted = False
            stmt = self._wal_stmt
            assert stmt is not None
            self._queue.append(_Pending(_WAL, None, stmt.decoders, stmt.sql))
            self._out.append(stmt.bind(()) + EXECUTE_ALL_SYNC)
        self._flush_pending = False
        out, self._out = self._out, []
        if out and not self.closed and self._transport is not None:
            self._transport.write(b"".join(out))

    # ---- the API ---------------------------------------------------------------------------

    async def started(self) -> None:
        await self._startup
        rows, _ = await self.run(
            "SELECT oid, typname FROM pg_catalog.pg_type WHERE typtype = 'e'", ()
        )
        self._enums = {row[0]: row[1] for row in rows}
        # A write's WAL position is read on its own connection right after it: PostgreSQL runs
        # a connection's messages in order, so this is at or past the write's commit record.
        # Kept out of the statement LRU: evicted (and closed) it would fail every write's read.
        self._wal_stmt = await self.prepare(AFTER_WRITE_SQL)  # on a replica, fails if run
        self._stmts.pop(AFTER_WRITE_SQL, None)

    def cached(self, sql: str) -> Statement | None:
        stmt = self._stmts.get(sql)
        if stmt is not None:
            self._stmts.move_to_end(sql)
        return stmt

    async def prepare(self, sql: str) -> Statement:
        """The statement for `sql` on this connection, prepared once (Parse + Describe).
        Concurrent requests for one new statement share one prepare, which runs as its own
        task: a requester that is cancelled does not cancel it for the others."""
        stmt = self.cached(sql)
        if stmt is not None:
            return stmt
        task = self._preparing.get(sql)
        if task is None:
            task = self._loop.create_task(self._prepare(sql))
            self._preparing[sql] = task
            task.add_done_callback(self._prepared)
        return await asyncio.shield(task)

    def _prepared(self, task: asyncio.Task[Statement]) -> None:
        for sql, t in list(self._preparing.items()):
            if t is task:
                del self._preparing[sql]
        if not task.cancelled():
            task.exception()  # retrieved here: every requester may have given up

    async def _prepare(self, sql: str) -> Statement:
        name = f"georoute_{next(self._names)}"
        body = cstr(name) + cstr(sql) + b"\x00\x00"
        pending = _Pending(_PREPARE, self._loop.create_future(), query=sql)
        self._send(message(b"P", body) + message(b"D", b"S" + cstr(name)) + SYNC, pending)
        done: _Pending = await pending.future  # type: ignore[misc]
        stmt = make_statement(name, sql, done.param_oids, done.columns, self._enums,
                              self._enums)
        self._stmts[sql] = stmt
        if len(self._stmts) > self._cache_size:
            _, old = self._stmts.popitem(last=False)
            self._close_statement(old)
        return stmt

    def _close_statement(self, stmt: Statement) -> None:
        if not self.closed:
            self._send(message(b"C", b"S" + cstr(stmt.name)) + SYNC,
                       _Pending(_IGNORE, self._loop.create_future()))

    def execute(self, stmt: Statement, params: Sequence[Any],
                timeout_ms: int | None = None) -> asyncio.Future[Any]:
        """Queue Bind/Execute/Sync; the future gives (rows, status, seconds the server spent on
        it). Raises Unsupported (and sends nothing) when these parameters are not carried.
        With `timeout_ms`, PostgreSQL stops the statement after that long (the pipelined
        statements behind it wait no longer), with SQLSTATE 57014."""
        if not stmt.supported:
            raise Unsupported
        data = stmt.bind(params)
        if timeout_ms:
            data = statement_timeout_prefix(timeout_ms) + data
        pending = _Pending(_EXECUTE, self._loop.create_future(), stmt.decoders, stmt.sql,
                           statement=stmt)
        self._send(data + EXECUTE_ALL_SYNC, pending)
        return pending.future  # type: ignore[return-value]

    def execute_then(self, stmt: Statement, params: Sequence[Any], callback: Callback,
                     wal_position: bool = False,
                     timeout_ms: int | None = None) -> None:
        """Like `execute`, but `callback` is called from the reply itself, with no future and
        no extra turn of the event loop. With `wal_position` (a write on a primary), the
        callback waits for the WAL position read queued after this turn's writes, one read
        for all of them. `timeout_ms` as for `execute`."""
        if not stmt.supported or (wal_position and self._wal_stmt is None):
            raise Unsupported
        data = stmt.bind(params)
        if timeout_ms:
            data = statement_timeout_prefix(timeout_ms) + data
        pending = _Pending(_EXECUTE, None, stmt.decoders, stmt.sql, callback=callback,
                           statement=stmt)
        if wal_position:
            pending.wants_wal = True
            self._wal_wanted = True
        self._send(data + EXECUTE_ALL_SYNC, pending)

    async def run(self, sql: str, params: Sequence[Any]) -> tuple[list[Any], str]:
        stmt = self.cached(sql) or await self.prepare(sql)
        rows, status, _ = await self.execute(stmt, params)
        return rows, status

    def forget(self, sql: str) -> None:
        """Drop a cached statement (e.g. after 'cached plan must not change result type')."""
        old = self._stmts.pop(sql, None)
        if old is not None:
            self._close_statement(old)

    def abort(self) -> None:
        self._fail(PipelineError(f"{self.name}: closed by the router"))

    def declare_lost(self, why: str) -> None:
        """The connection is known to be dead although no error came (a half-open link):
        close it, failing its requests in flight, whose outcome is unknown."""
        self._fail(PipelineError(f"{self.name}: connection lost: {why}"))

    async def close(self) -> None:
        """Terminate politely once nothing is in flight (the caller waits for that)."""
        if self.closed:
            return
        transport = self._transport
        self.closed = True
        self.error = PipelineError(f"{self.name}: closed by the router")
        if transport is not None and not transport.is_closing():
            transport.write(b"X\x00\x00\x00\x04")
            transport.close()
