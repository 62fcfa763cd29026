"""One request on the fast path (server/connection.py `_submit`): routed with no task, queued on
a pipelined backend connection, and answered from the reply's callback, or by its timeout.
Whatever the pipeline could not finish (a lost connection under a read, a stale statement,
a lock wait) runs again through the connection's ordinary path."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from protocol import Query
from router.backend.pgwire import PipelineError
from router.backend.pipeline import is_lock_timeout, is_stale_statement
from router.backend.pool import NodeUnavailableError
from router.core.health import HealthEvent
from router.engine.errors import NodeReadOnlyError, RequestTimeout, is_read_only_refusal
from router.engine.outcome import Routed

if TYPE_CHECKING:
    from router.server.connection import ClientConnection

__all__ = ["FastRequest"]

class FastRequest:
    """One request on the fast path, answered once: by its result, or by its timeout."""

    __slots__ = ("answered", "conn", "message", "routed", "started", "timer")

    def __init__(self, conn: ClientConnection, message: Query, started: float) -> None:
        self.conn = conn
        self.message = message
        self.started = started
        self.routed: Routed | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False

    def time_out(self) -> None:
        # The statement runs on (its connection is shared); its result will be dropped. It no
        # longer counts against the client: its node may take long to answer, or never.
        self.timer = None
        self.answered = True
        conn = self.conn
        conn._fast_in_flight -= 1
        conn._request_done()
        if conn._closing:
            return
        m = self.message
        exc = RequestTimeout(f"request took longer than {m.hints.timeout_ms} ms")
        assert self.routed is not None
        self.conn._reply_failed(m, exc, self.routed.analysis.read_only, self.started)

    def done(self, rows: list[Any] | None, status: str, server_seconds: float,
             exc: BaseException | None, wal: int | None) -> None:  # fmt: skip
        conn, m, routed = self.conn, self.message, self.routed
        assert routed is not None
        # Failed statements count too: one that waits on a lock is as slow for its neighbours.
        routed.node.pool.pipeline.finished(m.sql, server_seconds)
        if self.answered:  # timed out already (and no longer counted); the result is dropped
            if exc is None and wal is not None and not conn._closing:
                # The client was told the outcome is unknown, but the write did apply: the
                # session's later reads must see it, like any of its writes.
                conn.session.note_write(routed.shard.name, wal)
            return
        self.answered = True
        if self.timer is not None:
            self.timer.cancel()
        conn._fast_in_flight -= 1
        conn._request_done()
        if conn._closing:  # the client has gone: nothing to answer, nothing to run again
            return
        try:
            self._answer(rows, status, exc, wal)
        except Exception as error:  # e.g. a reply over the frame limit: still a typed reply
            conn._reply_failed(m, error, routed.analysis.read_only, self.started)

    def _answer(self, rows: list[Any] | None, status: str, exc: BaseException | None,
                wal: int | None) -> None:  # fmt: skip
        conn, m, routed = self.conn, self.message, self.routed
        assert routed is not None
        if exc is None:
            assert rows is not None
            executor = conn._node.executor
            if executor.needs_token(routed, status):
                if wal is not None:
                    token = executor.token_at(conn.session, routed, wal)
                    conn._reply_rows(m, routed, rows, status, token, self.started)
                    return
                conn._track(conn._loop.create_task(  # the position is unknown: read it apart
                    conn._finish_write(m, routed, rows, status, self.started)
                ))  # fmt: skip
                return
            conn._reply_rows(m, routed, rows, status, None, self.started)
            return
        read_only = routed.analysis.read_only
        if isinstance(exc, PipelineError):
            node = routed.node
            node.record(HealthEvent.CONNECT_FAILED, str(exc))
            if read_only and not conn._node.draining:  # safe to run again, another way
                conn._spawn_handle(m)
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
            if not conn._node.draining:
                conn._spawn_handle(m)
                return
        conn._reply_failed(m, exc, read_only, self.started)
