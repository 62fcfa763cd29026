"""The protocol server: one asyncio.Protocol per client connection.

Bytes go through protocol.FrameDecoder; each request runs as its own task so many can be in
flight on one connection and replies leave in completion order. Replies produced in one turn
of the event loop are written with a single write (loopback system calls dominate a proxy's
cost). The connection authenticates in its first message; a malformed frame gets a typed
error and closes only that connection.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from protocol import (
    Admin,
    AdminReply,
    Batch,
    Begin,
    Commit,
    Doc,
    DocReply,
    EncodeError,
    Encoder,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Query,
    QueryKind,
    Rejected,
    Rollback,
    RouteInfo,
    TxStarted,
    choose_version,
)
from protocol.codec import route_wire_of
from protocol.requests import DOC_READ_OPS
from protocol.sockets import keep_alive
from router.backend.wirevalues import name_unencodable, types_of
from router.core.classify import INLINE_PARSE_MAX
from router.engine.errors import (
    NodeReadOnlyError,
    RequestTimeout,
    ShuttingDown,
    is_read_only_refusal,
)
from router.engine.outcome import Outcome, Routed
from router.engine.session import Session, Transaction
from router.engine.undelivered import ResultUndeliverable, rowcount_of
from router.server.errors import UnsupportedRequest
from router.server.failures import Failure, failure_for
from router.server.fastpath import FastRequest
from router.types import Role

if TYPE_CHECKING:
    from router.node import RouterNode

__all__ = ["ClientConnection"]

log = logging.getLogger("georoute.server")

# Pause reading from a client whose replies pile up unsent beyond this many bytes.
_HIGH_WATER = 4 * 1024 * 1024


def _ends_or_continues_transaction(message: Message) -> bool:
    """While draining, requests of an open transaction still run so it can finish."""
    if isinstance(message, (Commit, Rollback)):
        return True
    hints = getattr(message, "hints", None)
    return hints is not None and hints.tx is not None


class ClientConnection(asyncio.Protocol):
    def __init__(self, node: RouterNode) -> None:
        self._node = node
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(node.config.router.max_frame_bytes)
        self._encoder: Encoder = node.encoder
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_pending = False
        self._reply_batch = node.config.router.reply_batch
        self._hello_timer: asyncio.TimerHandle | None = None
        # Flow control: reading pauses while the client's replies back up (pause_writing) or
        # while it has max_in_flight_per_connection requests outstanding.
        self._max_in_flight = node.config.router.max_in_flight_per_connection
        self._fast_in_flight = 0  # fast-path requests whose result has not come back yet
        self._paused_for_writes = False
        self._paused_for_load = False
        self._reading_paused = False
        self._backlog: collections.deque[Message | Rejected] = collections.deque()  # not run yet
        self._backlog_scheduled = False
        self._authed = False
        self._closing = False
        self.session = Session()
        self.tasks: set[asyncio.Task[None]] = set()
        self.peer = "?"
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Query: self._query,
            Batch: self._batch,
            Begin: self._begin,
            Commit: self._commit,
            Rollback: self._rollback,
            Doc: self._doc,
            Admin: self._admin,
        }

    # ---- transport callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=_HIGH_WATER)
        keep_alive(transport)  # a client host that vanished is noticed (protocol/sockets.py)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._node.connections.add(self)
        self._node.metrics.connections.inc()
        r = self._node.config.router
        if len(self._node.connections) > r.max_client_connections:
            self._fatal(0, ErrorCode.TOO_MANY_CONNECTIONS,
                        f"router node {r.node_name} has {r.max_client_connections} client "
                        "connections open (router.max_client_connections); try another",
                        retryable=True)  # fmt: skip
            return
        self._hello_timer = self._loop.call_later(r.handshake_timeout_seconds, self._hello_overdue)

    def _hello_overdue(self) -> None:
        self._hello_timer = None
        if not self._authed and not self._closing:
            timeout = self._node.config.router.handshake_timeout_seconds
            self._fatal(0, ErrorCode.HANDSHAKE_REQUIRED, f"no Hello within {timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._closing = True
        self.session.closed = True  # a Begin still in flight rolls itself back
        self._node.connections.discard(self)
        for task in self.tasks:
            task.cancel()
        if self.session.transactions:
            self._node.spawn(self._node.executor.transactions.close_session(self.session))

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        self._paused_for_writes = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_for_writes = False
        self._update_reading()

    @property
    def in_flight(self) -> int:
        return self._fast_in_flight + len(self.tasks)

    def _update_reading(self) -> None:
        pause = self._paused_for_writes or self._paused_for_load
        if pause == self._reading_paused or self._transport is None or self._closing:
            return
        self._reading_paused = pause
        if pause:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _request_done(self) -> None:
        if (self._paused_for_load and not self._backlog_scheduled
                and self.in_flight <= self._max_in_flight // 2):  # fmt: skip
            # Not from here: this runs inside a backend connection's reply callbacks.
            self._backlog_scheduled = True
            self._loop.call_soon(self._resume_after_load)

    def _resume_after_load(self) -> None:
        self._backlog_scheduled = False
        self._dispatch_backlog()

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._request_done()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            for message in getattr(exc, "messages", []):
                self._dispatch(message)
            self._fatal(exc.request_id or 0, exc.code, exc.message)
            return
        if not self._backlog and self.in_flight + len(messages) < self._max_in_flight:
            for message in messages:  # room for all of them (the usual case)
                self._dispatch(message)
            return
        self._backlog.extend(messages)  # after any still waiting: the order is kept
        if not self._paused_for_load:
            self._dispatch_backlog()

    def _dispatch_backlog(self) -> None:
        """Dispatch what has been read, up to max_in_flight_per_connection outstanding; the
        rest waits (and reading pauses) until half of those are answered."""
        backlog = self._backlog
        while backlog and not self._closing and self.in_flight < self._max_in_flight:
            self._dispatch(backlog.popleft())
        if self._closing:
            backlog.clear()
        full = self.in_flight >= self._max_in_flight
        if full != self._paused_for_load:
            self._paused_for_load = full
            self._update_reading()

    # ---- writing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._closing or self._transport is None:
            return
        out = self._out
        out.append(data)
        if len(out) >= self._reply_batch:
            # Not all at the turn's end: the client works on these while the rest are made.
            self._write_out()
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._write_out()

    def _write_out(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _send_failure(self, request_id: int, failure: Failure, kind: str) -> None:
        self._node.metrics.errors.labels(failure.code.name).inc()
        self.send(
            self._encoder.encode_error(
                request_id,
                failure.code,
                failure.message,
                sqlstate=failure.sqlstate,
                retryable=failure.retryable,
                detail=failure.detail,
            )
        )

    def _fatal(self, request_id: int, code: ErrorCode, message: str,
               retryable: bool = False) -> None:  # fmt: skip
        """Reply with an error, then close this connection (others are unaffected)."""
        log.info("closing connection %s: %s", self.peer, message)
        self._send_failure(request_id, Failure(code, message, retryable=retryable), "connection")
        self._flush()
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # ---- dispatch --------------------------------------------------------------------------

    def _dispatch(self, message: Message | Rejected) -> None:
        if self._closing:
            return
        if not self._authed:
            self._handshake(message)
            return
        if message.id == 0:  # an Error with id 0 speaks for the connection: no request has it
            self._fatal(0, ErrorCode.MALFORMED_FRAME, "request id 0 is reserved; ids start at 1")
            return
        if type(message) not in self._handlers:
            self._answer_other(message)
            return
        message = cast(Message, message)  # a request a handler takes
        if self._node.draining and not _ends_or_continues_transaction(message):
            self._send_failure(
                message.id, failure_for(ShuttingDown("router node is shutting down")), "any"
            )
            return
        if type(message) is Query and (len(message.sql) <= INLINE_PARSE_MAX
                                       or self._node.classifier.cached(message.sql)) and (
            self._submit(message)
        ):  # fmt: skip
            return
        self._spawn_handle(message)

    def _answer_other(self, message: Message | Rejected) -> None:
        """What is not a request for a handler: a Ping, or something refused alone (the
        frame itself was read, so the connection goes on)."""
        if isinstance(message, Ping):
            self.send(self._encoder.encode(Pong(message.id)))
        elif isinstance(message, Rejected):  # a request with bad fields, an unknown type
            self._send_failure(message.id, Failure(message.code, message.message), "request")
        elif isinstance(message, Hello):
            self._send_failure(message.id, Failure(ErrorCode.INVALID_REQUEST,
                                                   "handshake already done"), "hello")  # fmt: skip
        elif isinstance(message, Pong):
            pass  # either side may send Ping; a Pong answers one and needs no answer
        elif isinstance(message, Error):
            # Never answered: two peers that answer each other's errors never stop.
            log.info("client %s sent an Error (%s); ignored", self.peer, message.message)
        else:  # a reply type (HelloOk, Rows, ...): only the router sends those
            name = type(message).__name__
            self._send_failure(message.id, Failure(ErrorCode.UNKNOWN_MESSAGE_TYPE,
                                                   f"{name} is a reply, not a request"),
                               "request")  # fmt: skip

    def _spawn_handle(self, message: Message) -> None:
        self._track(self._loop.create_task(self._handle(message)))

    # ---- the fast path: autocommit statements on a pipelined backend connection ------------

    def _submit(self, m: Query) -> bool:
        """Route `m` and queue it on a pipelined connection; the reply is sent from the
        pipeline's callback, with no task. False: nothing was sent, use `_handle`."""
        request = FastRequest(self, m, time.perf_counter())
        routed = self._node.executor.submit(self.session, m.sql, m.params, m.hints,
                                            request.done)  # fmt: skip
        if routed is None:
            return False
        request.routed = routed
        self._fast_in_flight += 1
        timeout_ms = m.hints.timeout_ms
        if timeout_ms:
            request.timer = self._loop.call_later(timeout_ms / 1000, request.time_out)
        return True

    def _reply_rows(self, m: Query, routed: Routed, rows: list[Any], status: str,
                    token: str | None, started: float) -> None:  # fmt: skip
        node = routed.node
        route = self._node.executor.route_of(node)
        enc = self._encoder
        try:
            if m.kind is QueryKind.FETCH and m.hints.want_rows:
                self.send(self._encode_rows(m.id, routed.columns, rows, status, route, token))
            else:
                last = status.rsplit(" ", 1)[-1]
                count = int(last) if last.isdigit() else len(rows)
                self.send(enc.encode_status(m.id, status, count, route, token))
        except EncodeError as exc:
            if routed.analysis.read_only:
                raise
            undelivered = ResultUndeliverable(status, rowcount_of(status, rows), list(route),
                                              token, None, exc.message)  # fmt: skip
            self._reply_failed(m, undelivered, False, started)
            return
        self._node.metrics.record("query", node.shard, route[2], "ok",
                                  time.perf_counter() - started)  # fmt: skip

    def _reply_failed(self, m: Query, exc: BaseException, read_only: bool,
                      started: float) -> None:  # fmt: skip
        failure = failure_for(exc, read_only=read_only)
        self._send_failure(m.id, failure, "query")
        self._node.metrics.record("query", "", "", failure.code.name,
                                  time.perf_counter() - started)  # fmt: skip

    async def _finish_write(self, m: Query, routed: Routed, rows: list[Any], status: str,
                            started: float) -> None:  # fmt: skip
        token = await self._node.executor.write_token(self.session, routed)
        try:
            self._reply_rows(m, routed, rows, status, token, started)
        except Exception as error:  # e.g. a reply over the frame limit: still a typed reply
            self._reply_failed(m, error, routed.analysis.read_only, started)

    def _handshake(self, message: Message | Rejected) -> None:
        if isinstance(message, Rejected):  # a Hello (or anything) that could not be read
            self._fatal(message.id, message.code, message.message)
            return
        if not isinstance(message, Hello):
            self._fatal(message.id, ErrorCode.HANDSHAKE_REQUIRED, "send Hello first")
            return
        if message.id == 0:
            self._fatal(0, ErrorCode.MALFORMED_FRAME, "request id 0 is reserved; ids start at 1")
            return
        expected = self._node.auth_token
        given = message.token or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self._fatal(message.id, ErrorCode.AUTH_FAILED, "authentication failed: bad token")
            return
        try:
            version = choose_version(message.versions)
        except ProtocolError as exc:
            self._fatal(message.id, exc.code, exc.message)
            return
        self._authed = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self.session.client_name = message.client_name
        r = self._node.config.router
        # The limits a client must keep within (PROTOCOL.md section 2.3).
        info = {"server": "georoute", "shards": list(self._node.config.shards),
                "max_frame_bytes": r.max_frame_bytes, "max_sql_bytes": r.max_sql_bytes,
                "max_in_flight": r.max_in_flight_per_connection}  # fmt: skip
        self.send(
            self._encoder.encode(HelloOk(message.id, version, self._node.config.router.node_name,
                                         info))
        )

    async def _handle(self, message: Any) -> None:
        started = time.perf_counter()
        kind = type(message).__name__.lower()
        read_only = False
        try:
            timeout_ms = getattr(getattr(message, "hints", None), "timeout_ms", None)
            handler = self._handlers[type(message)]
            if timeout_ms:
                try:
                    async with asyncio.timeout(timeout_ms / 1000):
                        reply, outcome = await handler(message)
                except TimeoutError as exc:
                    raise RequestTimeout(f"request took longer than {timeout_ms} ms") from exc
            else:
                reply, outcome = await handler(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes a typed error reply
            if isinstance(message, Query):  # parsed by now, unless it could not be
                analysis = self._node.executor.classifier.cached(message.sql)
                read_only = analysis is not None and analysis.read_only
            elif isinstance(message, Doc):
                read_only = message.op in DOC_READ_OPS
            failure = failure_for(exc, read_only=read_only)  # logs our own bugs
            self._send_failure(message.id, failure, kind)
            elapsed = time.perf_counter() - started
            self._node.metrics.record(kind, "", "", failure.code.name, elapsed)
            return
        self.send(reply)
        elapsed = time.perf_counter() - started
        if outcome is not None:
            self._node.metrics.record(kind, outcome.shard, outcome.role.value, "ok", elapsed)
        else:
            self._node.metrics.record(kind, "", "", "ok", elapsed)

    @staticmethod
    def _route(outcome: Outcome) -> RouteInfo | None:
        if not outcome.shard:  # a transaction over shards that opened none
            return None
        return RouteInfo(outcome.shard, outcome.node, outcome.role)

    def _encode_rows(self, request_id: int, columns: list[str], rows: list[Any], status: str,
                     route: RouteInfo | list[str] | None, token: str | None,
                     tokens: tuple[str, ...] = ()) -> bytes:  # fmt: skip
        try:
            return self._encoder.encode_rows(request_id, columns, rows, status, route, token,
                                             types_of(columns), tokens)  # fmt: skip
        except EncodeError as exc:
            named = name_unencodable(exc, columns, rows)
            if named is None:
                raise
            raise named from exc

    def _reply_for(self, m: Query, o: Outcome) -> bytes:
        enc = self._encoder
        if m.kind is QueryKind.FETCH and m.hints.want_rows:
            if o.rows_lost is not None:
                raise EncodeError(o.rows_lost)
            return self._encode_rows(m.id, o.columns, o.rows, o.status, self._route(o),
                                     o.ryw_token, o.ryw_tokens)  # fmt: skip
        return enc.encode_status(m.id, o.status, o.rowcount, self._route(o), o.ryw_token,
                                 o.ryw_tokens)  # fmt: skip

    async def _query(self, m: Query) -> tuple[bytes, Outcome]:
        o = await self._node.executor.query(self.session, m.sql, m.params, m.hints)
        try:
            return self._reply_for(m, o), o
        except EncodeError as exc:
            # After a statement that may have written, the error says that it applied, with
            # its status and token. (Batch and Commit replies are a Status: they always fit.)
            analysis = self._node.executor.classifier.cached(m.sql)  # None: evicted
            if analysis is not None and analysis.read_only:
                raise
            raise ResultUndeliverable(o.status, o.rowcount, route_wire_of(self._route(o)),
                                      o.ryw_token, m.hints.tx, exc.message) from exc  # fmt: skip

    async def _batch(self, m: Batch) -> tuple[bytes, Outcome]:
        try:
            o = await self._node.executor.batch(self.session, m.statements, m.hints)
        except asyncpg.PostgresError as exc:
            if m.hints.tx is None and is_read_only_refusal(exc):
                # Outside a transaction a batch runs on the primary, in a transaction of its
                # own: refused as read-only, it found that node demoted; nothing applied.
                raise NodeReadOnlyError(exc, retryable=True) from exc
            raise
        # "BATCH <n>", in a transaction or not (PROTOCOL.md 2.1): executemany reports no
        # statement's own status.
        status = f"BATCH {len(m.statements)}"
        return self._encoder.encode_status(
            m.id, status, len(m.statements), self._route(o), o.ryw_token
        ), o

    async def _begin(self, m: Begin) -> tuple[bytes, None]:
        transactions = self._node.executor.transactions
        tx = await transactions.begin(self.session, m.hints, m.isolation, m.read_only)
        # A transaction over shards has no route until its statements choose them.
        route = (RouteInfo(tx.shard, tx.node.name, Role.PRIMARY)
                 if isinstance(tx, Transaction) else None)  # fmt: skip
        return self._encoder.encode(TxStarted(m.id, tx.id, route)), None

    async def _commit(self, m: Commit) -> tuple[bytes, Outcome]:
        o = await self._node.executor.transactions.commit(self.session, m.tx)
        return self._encoder.encode_status(m.id, o.status, 0, self._route(o), o.ryw_token,
                                           o.ryw_tokens), o  # fmt: skip

    async def _rollback(self, m: Rollback) -> tuple[bytes, Outcome | None]:
        o = await self._node.executor.transactions.rollback(self.session, m.tx)
        if o is None:  # the router had rolled it back already (idle, or a failed Commit)
            return self._encoder.encode_status(m.id, "ROLLBACK", 0, None), None
        return self._encoder.encode_status(m.id, o.status, 0, self._route(o)), o

    async def _doc(self, m: Doc) -> tuple[bytes, None]:
        if m.hints.idempotency_key is not None and m.op not in DOC_READ_OPS:
            # Not kept for document writes (yet): accepting the key would promise what a
            # retry cannot keep, and a client would send the write again.
            raise UnsupportedRequest("idempotency keys are not supported for document writes yet")
        result = await self._node.docstore.run(m.collection, m.op, m.args)
        return self._encoder.encode(DocReply(m.id, result)), None

    async def _admin(self, m: Admin) -> tuple[bytes, None]:
        if m.op != "topology":
            raise UnsupportedRequest(f"unknown admin op {m.op!r} (known: topology)")
        return self._encoder.encode(AdminReply(m.id, self._node.topology_report())), None
