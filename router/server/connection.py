"""The protocol server: one asyncio.Protocol per client connection.

Bytes go through protocol.FrameDecoder; each request runs as its own task so many can be in
flight on one connection and replies leave in completion order. Replies produced in one turn
of the event loop are written with a single write (loopback system calls dominate a proxy's
cost). The connection authenticates in its first message; a malformed frame gets a typed
error and closes only that connection.

A connection is given its Handler (what the router does with requests: handlers.py over the
engine) and its Limits, nothing else of the router node.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from protocol import (
    Admin,
    Batch,
    Begin,
    Commit,
    Doc,
    EncodeError,
    Encoder,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    HelloOk,
    Hints,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Query,
    QueryKind,
    Rejected,
    Rollback,
    choose_version,
)
from protocol.sockets import keep_alive
from router.backend.pgwire import Callback
from router.config import Config
from router.core.classify import INLINE_PARSE_MAX
from router.core.routing import Scatter
from router.engine.errors import RequestTimeout, ShuttingDown
from router.engine.outcome import Outcome, Routed, ScatterDone
from router.engine.session import Session
from router.engine.undelivered import ResultUndeliverable, rowcount_of
from router.ha.topology import NodeState
from router.logs import current_request_id
from router.server import requestlog
from router.server.failures import Failure, failure_for
from router.server.fastpath import FastRequest
from router.server.replies import encode_rows, route_of_outcome

__all__ = ["ClientConnection", "Handler", "Limits"]

log = logging.getLogger("georoute.server")

# Pause reading from a client whose replies pile up unsent beyond this many bytes (and run
# none of its requests already read until they drain).
_HIGH_WATER = 4 * 1024 * 1024
# A client with more replies unsent than this (at least 4 frames, 64 MiB) has stopped reading:
# it is disconnected, as Redis's client-output-buffer-limit does. The requests it had in
# flight still make their replies, and pausing alone left them all in memory: a client that
# sent 2,000 requests for 256 KiB replies and read none grew the router by 369 MiB.
_MIN_OUTPUT_LIMIT = 64 * 1024 * 1024

# What a Handler's `handle` takes; anything else is answered here (a Ping) or refused.
_REQUESTS = frozenset({Query, Batch, Begin, Commit, Rollback, Doc, Admin})


@dataclass(frozen=True, slots=True)
class Limits:
    """A client connection's limits, fixed when it is accepted (HelloOk tells them, so the
    client keeps to what this connection enforces, whatever a reload changes meanwhile)."""

    node_name: str
    shards: tuple[str, ...]
    max_frame_bytes: int
    max_sql_bytes: int
    max_in_flight: int  # requests outstanding before reading pauses
    reply_batch: int  # replies of one turn written together, at most
    max_client_connections: int
    handshake_timeout_seconds: float
    # A request answered in this many seconds or more is logged (inf: none).
    log_min_duration_seconds: float = float("inf")

    @classmethod
    def of(cls, config: Config) -> Limits:
        r = config.router
        log_after = (float("inf") if r.log_min_duration_ms < 0
                     else r.log_min_duration_ms / 1000)
        return cls(r.node_name, tuple(config.shards), r.max_frame_bytes, r.max_sql_bytes,
                   r.max_in_flight_per_connection, r.reply_batch, r.max_client_connections,
                   r.handshake_timeout_seconds, log_after)


class Handler(Protocol):
    """What a client connection asks of the router: server/handlers.py's RequestHandler
    carries requests to the engine; tests give their own."""

    encoder: Encoder
    draining: bool  # new requests outside a transaction are refused

    def opened(self, conn: ClientConnection) -> int:
        """`conn` was accepted: how many client connections are open now, it included."""
        ...

    def closed(self, conn: ClientConnection) -> None:
        """`conn` is gone: what its session left open is rolled back."""
        ...

    def authenticate(self, token: str) -> bool: ...

    def record(self, kind: str, shard: str, role: str, outcome: str, seconds: float) -> None:
        """One request answered (its metrics)."""
        ...

    def count_error(self, code: ErrorCode) -> None: ...

    # The fast path (fastpath.py): an autocommit statement queued on a pipelined backend
    # connection, answered from its callback, with no task.

    def parsed(self, sql: str) -> bool:
        """Whether `sql` is parsed already (a long text is parsed off the loop, in a task)."""
        ...

    def submit(self, session: Session, sql: str, params: Sequence[Any], hints: Hints,
               callback: Callback, scatter_done: ScatterDone | None) -> Routed | Scatter | None:
        """Route a statement and queue it; None: nothing was sent, use `handle`. A
        cross-shard read queued so returns its Scatter, and answers through
        `scatter_done`."""
        ...

    def route_of(self, node: NodeState) -> list[str]:
        """The reply's route in its wire form, [shard, node, role]."""
        ...

    def needs_token(self, routed: Routed, status: str) -> bool:
        """Whether the reply carries a read-your-writes token (a write that changed rows)."""
        ...

    def token_at(self, session: Session, routed: Routed, lsn: int) -> str:
        """The token of a write whose WAL position came with its result (noted in session)."""
        ...

    async def write_token(self, session: Session, routed: Routed) -> str:
        """The token of a write whose position did not come with it: read apart."""
        ...

    # Every other request runs as a task of its own.

    async def handle(self, session: Session, message: Message) -> tuple[bytes, Outcome | None]:
        """The reply to `message`, and where it ran (None: nowhere in particular)."""
        ...

    def read_only(self, message: Message) -> bool:
        """Whether a failed `message` can have written nothing (for its error's retryable)."""
        ...


def _ends_or_continues_transaction(message: Message) -> bool:
    """While draining, requests of an open transaction still run so it can finish."""
    if isinstance(message, (Commit, Rollback)):
        return True
    hints = getattr(message, "hints", None)
    return hints is not None and hints.tx is not None


class ClientConnection(asyncio.Protocol):
    """One client: framing, the handshake, flow control and the writing of replies. Requests go
    to its handler; fast-path requests answer through the FastPathConnection interface
    (fastpath.py), which this class implements."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self._handler = handler
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(limits.max_frame_bytes)
        self._encoder: Encoder = handler.encoder
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_pending = False
        self._reply_batch = limits.reply_batch
        self._output_limit = max(_MIN_OUTPUT_LIMIT, 4 * limits.max_frame_bytes)
        self._hello_timer: asyncio.TimerHandle | None = None
        # Flow control: reading pauses while the client's replies back up (pause_writing) or
        # while it has max_in_flight_per_connection requests outstanding.
        self._max_in_flight = limits.max_in_flight
        self._fast_in_flight = 0  # fast-path requests whose result has not come back yet
        self._paused_for_writes = False
        self._paused_for_load = False
        self._reading_paused = False
        self._backlog: collections.deque[Message | Rejected] = collections.deque()  # not run yet
        self._backlog_scheduled = False
        self._authed = False
        self.closing = False  # closed, or closing: nothing more is read, run or answered
        self.session = Session()
        self.tasks: set[asyncio.Task[None]] = set()
        self.peer = "?"

    # ---- transport callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=_HIGH_WATER)
        keep_alive(transport)  # a client host that vanished is noticed (protocol/sockets.py)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        limits = self._limits
        if self._handler.opened(self) > limits.max_client_connections:
            self._fatal(0, ErrorCode.TOO_MANY_CONNECTIONS,
                        f"router node {limits.node_name} has {limits.max_client_connections} "
                        "client connections open (router.max_client_connections); try another",
                        retryable=True)
            return
        self._hello_timer = self._loop.call_later(limits.handshake_timeout_seconds,
                                                  self._hello_overdue)

    def _hello_overdue(self) -> None:
        self._hello_timer = None
        if not self._authed and not self.closing:
            timeout = self._limits.handshake_timeout_seconds
            self._fatal(0, ErrorCode.HANDSHAKE_REQUIRED, f"no Hello within {timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self.closing = True
        self.session.closed = True  # a Begin still in flight rolls itself back
        for task in self.tasks:
            task.cancel()
        self._handler.closed(self)

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        self._paused_for_writes = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_for_writes = False
        self._update_reading()
        if self._backlog and not self._backlog_scheduled:  # held while the replies backed up
            self._backlog_scheduled = True
            self._loop.call_soon(self._resume_after_load)

    @property
    def in_flight(self) -> int:
        return self._fast_in_flight + len(self.tasks)

    def _update_reading(self) -> None:
        pause = self._paused_for_writes or self._paused_for_load
        if pause == self._reading_paused or self._transport is None or self.closing:
            return
        self._reading_paused = pause
        if pause:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _request_done(self) -> None:
        if (self._paused_for_load and not self._backlog_scheduled
                and self.in_flight <= self._max_in_flight // 2):
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
        if (not self._backlog and not self._paused_for_writes
                and self.in_flight + len(messages) < self._max_in_flight):
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
        while (backlog and not self.closing and not self._paused_for_writes
               and self.in_flight < self._max_in_flight):
            self._dispatch(backlog.popleft())
        if self.closing:
            backlog.clear()
        full = self.in_flight >= self._max_in_flight
        if full != self._paused_for_load:
            self._paused_for_load = full
            self._update_reading()

    # ---- writing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closing or self._transport is None:
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
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            if self._paused_for_writes and transport.get_write_buffer_size() > self._output_limit:
                self._stopped_reading(transport)

    def _stopped_reading(self, transport: asyncio.Transport) -> None:
        """The client has stopped reading its replies: drop it (and what it has not read)."""
        log.warning("closing connection %s: %d bytes of replies unread (it stopped reading)",
                    self.peer, transport.get_write_buffer_size())
        self.closing = True
        self._backlog.clear()
        transport.abort()

    def _send_failure(self, request_id: int, failure: Failure) -> None:
        self._handler.count_error(failure.code)
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
               retryable: bool = False) -> None:
        """Reply with an error, then close this connection (others are unaffected)."""
        log.info("closing connection %s: %s", self.peer, message)
        self._send_failure(request_id, Failure(code, message, retryable=retryable))
        self._flush()
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    # ---- dispatch --------------------------------------------------------------------------

    def _dispatch(self, message: Message | Rejected) -> None:
        if self.closing:
            return
        if not self._authed:
            self._handshake(message)
            return
        if message.id == 0:  # an Error with id 0 speaks for the connection: no request has it
            self._fatal(0, ErrorCode.MALFORMED_FRAME, "request id 0 is reserved; ids start at 1")
            return
        if type(message) not in _REQUESTS:
            self._answer_other(message)
            return
        message = cast(Message, message)  # a request a handler takes
        if self._handler.draining and not _ends_or_continues_transaction(message):
            shutting_down = ShuttingDown("router node is shutting down")
            self._send_failure(message.id, failure_for(shutting_down))
            return
        if type(message) is Query and (len(message.sql) <= INLINE_PARSE_MAX
                                       or self._handler.parsed(message.sql)) and (
            self._submit(message)
        ):
            return
        self._spawn_handle(message)

    def _answer_other(self, message: Message | Rejected) -> None:
        """What is not a request for a handler: a Ping, or something refused alone (the
        frame itself was read, so the connection goes on)."""
        if isinstance(message, Ping):
            self.send(self._encoder.encode(Pong(message.id)))
        elif isinstance(message, Rejected):  # a request with bad fields, an unknown type
            requestlog.log.info("request %d from %s refused: %s: %s", message.id, self.peer,
                                message.code.name, message.message)
            self._send_failure(message.id, Failure(message.code, message.message))
        elif isinstance(message, Hello):
            self._send_failure(message.id, Failure(ErrorCode.INVALID_REQUEST,
                                                   "handshake already done"))
        elif isinstance(message, Pong):
            pass  # either side may send Ping; a Pong answers one and needs no answer
        elif isinstance(message, Error):
            # Never answered: two peers that answer each other's errors never stop.
            log.info("client %s sent an Error (%s); ignored", self.peer, message.message)
        else:  # a reply type (HelloOk, Rows, ...): only the router sends those
            name = type(message).__name__
            why = f"{name} is a reply, not a request"
            self._send_failure(message.id, Failure(ErrorCode.UNKNOWN_MESSAGE_TYPE, why))

    def _spawn_handle(self, message: Message) -> None:
        self._track(self._loop.create_task(self._handle(message)))

    # ---- the fast path: autocommit statements on a pipelined backend connection ------------

    def _submit(self, m: Query) -> bool:
        """Route `m` and queue it on a pipelined connection; the reply is sent from the
        pipeline's callback, with no task. False: nothing was sent, use `_handle`."""
        request = FastRequest(self, m, time.perf_counter())
        routed = self._handler.submit(self.session, m.sql, m.params, m.hints, request.done,
                                      request.scattered)
        if routed is None:
            return False
        if not isinstance(routed, Scatter):
            request.routed = routed
        self._fast_in_flight += 1
        timeout_ms = m.hints.timeout_ms
        if timeout_ms:
            request.timer = self._loop.call_later(timeout_ms / 1000, request.time_out)
        return True

    # FastPathConnection (fastpath.py): how a fast-path request is answered.

    def fast_request_done(self) -> None:
        self._fast_in_flight -= 1
        if self._paused_for_load:  # (tested here first: the usual case costs no call)
            self._request_done()

    def run_again(self, m: Query) -> bool:
        if self._handler.draining:
            return False
        self._spawn_handle(m)
        return True

    def reply_result(self, m: Query, routed: Routed, rows: list[Any], status: str,
                     wal: int | None, started: float,
                     token: str | None = None) -> None:
        """Answer with a statement's result (`token`: a write's, when `_finish_write` read it
        apart)."""
        handler = self._handler
        if token is None and handler.needs_token(routed, status):
            if wal is None:  # the position is unknown: read it apart, then reply
                self._track(self._loop.create_task(
                    self._finish_write(m, routed, rows, status, started)))
                return
            token = handler.token_at(self.session, routed, wal)
        route = handler.route_of(routed.node)
        try:
            if m.kind is QueryKind.FETCH and m.hints.want_rows:
                self.send(encode_rows(self._encoder, m.id, routed.columns, rows, status, route,
                                      token))
            else:
                last = status.rsplit(" ", 1)[-1]
                count = int(last) if last.isdigit() else len(rows)
                self.send(self._encoder.encode_status(m.id, status, count, route, token))
        except EncodeError as exc:
            if routed.analysis.read_only:
                raise
            undelivered = ResultUndeliverable(status, rowcount_of(status, rows), list(route),
                                              token, None, exc.message)
            self.reply_failed(m, undelivered, False, started)
            return
        elapsed = time.perf_counter() - started
        handler.record("query", routed.node.shard, route[2], "ok", elapsed)
        if elapsed >= self._limits.log_min_duration_seconds:
            requestlog.slow(self.peer, m, elapsed, f"{route[0]} {route[1]}")

    def reply_outcome(self, m: Query, o: Outcome, started: float) -> None:
        """Answer with a cross-shard read's merged outcome."""
        if m.kind is QueryKind.FETCH and m.hints.want_rows:
            data = encode_rows(self._encoder, m.id, o.columns, o.rows, o.status,
                               route_of_outcome(o), o.ryw_token, o.ryw_tokens)
        else:
            data = self._encoder.encode_status(m.id, o.status, o.rowcount, route_of_outcome(o),
                                               o.ryw_token, o.ryw_tokens)
        self.send(data)
        self._handler.record("query", o.shard, o.role.value, "ok", time.perf_counter() - started)

    def reply_failed(self, m: Query, exc: BaseException, read_only: bool,
                     started: float) -> None:
        failure = failure_for(exc, read_only=read_only, request_id=m.hints.request_id)
        self._send_failure(m.id, failure)
        elapsed = time.perf_counter() - started
        self._handler.record("query", "", "", failure.code.name, elapsed)
        requestlog.failed(self.peer, m, elapsed, failure)

    async def _finish_write(self, m: Query, routed: Routed, rows: list[Any], status: str,
                            started: float) -> None:
        token = await self._handler.write_token(self.session, routed)
        try:
            self.reply_result(m, routed, rows, status, None, started, token)
        except Exception as error:  # e.g. a reply over the frame limit: still a typed reply
            self.reply_failed(m, error, routed.analysis.read_only, started)

    # ---- the handshake, then every other request in a task of its own ----------------------

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
        if not self._handler.authenticate(message.token or ""):
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
        limits = self._limits
        # The limits a client must keep within (PROTOCOL.md section 2.3).
        info = {"server": "georoute", "shards": list(limits.shards),
                "max_frame_bytes": limits.max_frame_bytes, "max_sql_bytes": limits.max_sql_bytes,
                "max_in_flight": limits.max_in_flight}
        self.send(self._encoder.encode(HelloOk(message.id, version, limits.node_name, info)))

    async def _handle(self, message: Message) -> None:
        started = time.perf_counter()
        kind = type(message).__name__.lower()
        handler = self._handler
        request_id = requestlog.request_id_of(message)
        if request_id is not None:  # in this task's context alone: every line it logs
            current_request_id.set(request_id)
        try:
            timeout_ms = getattr(getattr(message, "hints", None), "timeout_ms", None)
            if timeout_ms:
                try:
                    async with asyncio.timeout(timeout_ms / 1000):
                        reply, outcome = await handler.handle(self.session, message)
                except TimeoutError as exc:
                    raise RequestTimeout(f"request took longer than {timeout_ms} ms") from exc
            else:
                reply, outcome = await handler.handle(self.session, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes a typed error reply
            failure = failure_for(exc, read_only=handler.read_only(message))  # logs our bugs
            self._send_failure(message.id, failure)
            elapsed = time.perf_counter() - started
            handler.record(kind, "", "", failure.code.name, elapsed)
            requestlog.failed(self.peer, message, elapsed, failure)
            return
        self.send(reply)
        elapsed = time.perf_counter() - started
        if outcome is not None:
            handler.record(kind, outcome.shard, outcome.role.value, "ok", elapsed)
        else:
            handler.record(kind, "", "", "ok", elapsed)
        if elapsed >= self._limits.log_min_duration_seconds:
            where = "" if outcome is None else f"{outcome.shard} {outcome.node}"
            requestlog.slow(self.peer, message, elapsed, where)
