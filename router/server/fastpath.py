"""One request on the fast path (server/connection.py `_submit`): routed with no task, queued on
a pipelined backend connection, and answered from the reply's callback, or by its timeout.
Whatever the pipeline could not finish (a lost connection under a read, a stale statement,
a lock wait) runs again through the connection's ordinary path. A request answers through
FastPathConnection, which the client connection implements."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from protocol import Query
from router.backend.pgwire import PipelineError
from router.backend.pipeline import is_lock_timeout, is_stale_statement
from router.backend.pool import NodeUnavailableError
from router.core.health import HealthEvent
from router.engine.errors import NodeReadOnlyError, RequestTimeout, is_read_only_refusal
from router.engine.outcome import Outcome, Routed
from router.engine.session import Session

__all__ = ["FastPathConnection", "FastRequest"]


class FastPathConnection(Protocol):
    """What a fast-path request needs of its client connection."""

    session: Session
    closing: bool  # the client has gone (or is going): nothing to answer, nothing to run again

    def fast_request_done(self) -> None:
        """The request no longer counts against the client (answered, or timed out)."""
        ...

    def reply_result(self, m: Query, routed: Routed, rows: list[Any], status: str,
                     wal: int | None, started: float) -> None:
        """Answer with the statement's result (`wal`: the WAL position after a write, if the
        pipeline read it)."""
        ...

    def reply_outcome(self, m: Query, o: Outcome, started: float) -> None:
        """Answer with a cross-shard read's merged outcome."""
        ...

    def reply_failed(self, m: Query, exc: BaseException, read_only: bool,
                     started: float) -> None:
        """Answer with the error `exc` maps to."""
        ...

    def run_again(self, m: Query) -> bool:
        """Run `m` again on the ordinary path; False while draining (then answer it here)."""
        ...


class FastRequest:
    """One request on the fast path, answered once: by its result, or by its timeout."""

    __slots__ = ("answered", "conn", "message", "routed", "started", "timer")

    def __init__(self, conn: FastPathConnection, message: Query, started: float) -> None:
        self.conn = conn
        self.message = message
        self.started = started
        self.routed: Routed | None = None  # None for a cross-shard read (`scattered`)
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False

    def time_out(self) -> None:
        # The statement runs on (its connection is shared); its result will be dropped. It no
        # longer counts against the client: its node may take long to answer, or never.
        self.timer = None
        self.answered = True
        conn = self.conn
        conn.fast_request_done()
        if conn.closing:
            return
        m = self.message
        exc = RequestTimeout(f"request took longer than {m.hints.timeout_ms} ms")
        read_only = self.routed is None or self.routed.analysis.read_only
        conn.reply_failed(m, exc, read_only, self.started)

    def scattered(self, outcome: Outcome | None, exc: BaseException | None,
                  again: bool) -> None:
        """A cross-shard read queued on every shard's pipeline is done (ScatterDone): its
        merged outcome, its error, or parts the pipeline could not finish (`again`: the
        whole read runs again the ordinary way, safe for a read)."""
        if self.answered:  # timed out already; the result is dropped
            return
        self.answered = True
        if self.timer is not None:
            self.timer.cancel()
        conn, m = self.conn, self.message
        conn.fast_request_done()
        if conn.closing:
            return
        if again and conn.run_again(m):
            return
        try:
            if outcome is not None:
                conn.reply_outcome(m, outcome, self.started)
                return
        except Exception as error:  # e.g. a reply over the frame limit: still a typed reply
            exc = error
        conn.reply_failed(m, exc or RuntimeError("cross-shard read without an outcome"), True,
                          self.started)

    def done(self, rows: list[Any] | None, status: str, server_seconds: float,
             exc: BaseException | None, wal: int | None) -> None:
        conn, m, routed = self.conn, self.message, self.routed
        assert routed is not None
        # Failed statements count too: one that waits on a lock is as slow for its neighbours.
        routed.node.pool.pipeline.finished(m.sql, server_seconds)
        if self.answered:  # timed out already (and no longer counted); the result is dropped
            if exc is None and wal is not None and not conn.closing:
                # The client was told the outcome is unknown, but the write did apply: the
                # session's later reads must see it, like any of its writes.
                conn.session.note_write(routed.shard.name, wal)
            return
        self.answered = True
        if self.timer is not None:
            self.timer.cancel()
        conn.fast_request_done()
        if conn.closing:  # the client has gone: nothing to answer, nothing to run again
            return
        try:
            self._answer(rows, status, exc, wal)
        except Exception as error:  # e.g. a reply over the frame limit: still a typed reply
            conn.reply_failed(m, error, routed.analysis.read_only, self.started)

    def _answer(self, rows: list[Any] | None, status: str, exc: BaseException | None,
                wal: int | None) -> None:
        conn, m, routed = self.conn, self.message, self.routed
        assert routed is not None
        if exc is None:
            assert rows is not None
            conn.reply_result(m, routed, rows, status, wal, self.started)
            return
        read_only = routed.analysis.read_only
        if isinstance(exc, PipelineError):
            node = routed.node
            node.record(HealthEvent.CONNECT_FAILED, str(exc))
            if read_only and conn.run_again(m):  # safe to run again, another way
                return
            exc = NodeUnavailableError(f"{node.name}: connection lost: {exc}", sent=True)
        elif not read_only and is_read_only_refusal(exc):
            # A write, sent to the primary, refused as read-only: that node was demoted
            # (nothing was applied); the request may go again.
            exc = NodeReadOnlyError(exc, retryable=True)
        elif is_stale_statement(exc) or is_lock_timeout(exc):
            # Nothing was applied. A stale statement is prepared again; one that waited on a
            # lock longer than the pipeline's lock_timeout runs on a pooled connection.
            if is_stale_statement(exc):
                routed.node.pool.pipeline.forget(m.sql)
            if conn.run_again(m):
                return
        conn.reply_failed(m, exc, read_only, self.started)
