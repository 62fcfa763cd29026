"""What the router does with each client request: the Handler that every ClientConnection is
given. It carries requests to the engine of the current Runtime (swapped whole on SIGHUP and
read where a request starts) or to the document store, makes their replies, and keeps the
register of open client connections that a drain and the topology report read."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import asyncpg
from prometheus_client import Counter

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
    ErrorCode,
    Hints,
    Message,
    Query,
    QueryKind,
    Rollback,
    RouteInfo,
    TxStarted,
)
from protocol.codec import route_wire_of
from protocol.requests import DOC_READ_OPS
from router.backend.docstore import DocStore
from router.backend.pgwire import Callback
from router.core.routing import SHARDS_HINT_ALONE, CrossShardError, Scatter
from router.engine.branches import DistributedTransaction
from router.engine.errors import NodeReadOnlyError, is_read_only_refusal
from router.engine.outcome import Outcome, Routed, ScatterDone
from router.engine.runtime import Runtime
from router.engine.session import Session
from router.engine.undelivered import ResultUndeliverable
from router.engine.usermove import move_request
from router.ha.topology import NodeState
from router.server.connection import ClientConnection
from router.server.errors import UnsupportedRequest
from router.server.replies import encode_rows, route_of_outcome
from router.types import Role

__all__ = ["RequestHandler", "RequestMetrics"]


class RequestMetrics(Protocol):
    """What the client edge counts (router/metrics.py's Metrics is the real one)."""

    errors: Counter  # error replies by code name
    connections: Counter  # client connections accepted

    def record(self, kind: str, shard: str, role: str, outcome: str, seconds: float) -> None: ...


def _nothing() -> None:
    pass


Answer = tuple[bytes, Outcome | None]  # a reply frame, and where it ran


class RequestHandler:
    """The connections' Handler (server/connection.py) over the engine and the document store."""

    # The fast path's calls into the engine, bound once per runtime rather than looked up
    # on every point read (and with no call of their own in between).
    submit: Callable[[Session, str, Sequence[Any], Hints, Callback, ScatterDone | None],
                     Routed | Scatter | None]
    route_of: Callable[[NodeState], list[str]]
    needs_token: Callable[[Routed, str], bool]
    token_at: Callable[[Session, Routed, int], str]
    write_token: Callable[[Session, Routed], Coroutine[Any, Any, str]]
    record: Callable[[str, str, str, str, float], None]  # the metrics'

    def __init__(
        self,
        runtime: Runtime,
        *,
        encoder: Encoder,
        metrics: RequestMetrics,
        docstore: DocStore,
        auth_token: str,
        report: Callable[[], dict[str, Any]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        closed: Callable[[], None] | None = None,
    ) -> None:
        """`report`: the topology report an Admin request asks for; `spawn`: runs a background
        task (a gone client's transactions rolled back); `closed`: called when a client
        connection has gone (a drain waits on it)."""
        self.runtime = runtime  # the node swaps it whole on SIGHUP (see the setter)
        self.encoder = encoder
        self.draining = False
        self.connections: set[ClientConnection] = set()
        self._metrics = metrics
        self.record = metrics.record
        self._docstore = docstore
        self._auth_token = auth_token.encode()
        self._report = report
        self._spawn = spawn
        self._closed = closed or _nothing
        self._requests: dict[type, Callable[[Runtime, Session, Any], Awaitable[Answer]]] = {
            Query: self._query,
            Batch: self._batch,
            Begin: self._begin,
            Commit: self._commit,
            Rollback: self._rollback,
            Doc: self._doc,
            Admin: self._admin,
        }

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        """Swap the runtime whole: every request from here on uses the new one."""
        self._runtime = runtime
        executor = runtime.executor
        self.submit = executor.submit
        self.route_of = executor.route_of
        self.needs_token = executor.needs_token
        self.token_at = executor.token_at
        self.write_token = executor.write_token

    # ---- the connection's lifecycle --------------------------------------------------------

    def opened(self, conn: ClientConnection) -> int:
        self.connections.add(conn)
        self._metrics.connections.inc()
        return len(self.connections)

    def closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if conn.session.transactions:
            self._spawn(self.runtime.executor.transactions.close_session(conn.session))
        self._closed()

    def authenticate(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._auth_token)

    def count_error(self, code: ErrorCode) -> None:
        self._metrics.errors.labels(code.name).inc()

    def parsed(self, sql: str) -> bool:
        return self.runtime.classifier.cached(sql) is not None

    # ---- every other request ---------------------------------------------------------------

    async def handle(self, session: Session, message: Message) -> Answer:
        return await self._requests[type(message)](self.runtime, session, message)

    def read_only(self, message: Message) -> bool:
        if isinstance(message, Query):  # parsed by now, unless it could not be
            analysis = self.runtime.classifier.cached(message.sql)
            return analysis is not None and analysis.read_only
        if isinstance(message, Doc):
            return message.op in DOC_READ_OPS
        return False

    def _reply_for(self, m: Query, o: Outcome) -> bytes:
        if m.kind is QueryKind.FETCH and m.hints.want_rows:
            if o.rows_lost is not None:
                raise EncodeError(o.rows_lost)
            return encode_rows(self.encoder, m.id, o.columns, o.rows, o.status,
                               route_of_outcome(o), o.ryw_token, o.ryw_tokens)
        return self.encoder.encode_status(m.id, o.status, o.rowcount, route_of_outcome(o),
                                          o.ryw_token, o.ryw_tokens)

    async def _query(self, rt: Runtime, session: Session, m: Query) -> Answer:
        o = await rt.executor.query(session, m.sql, m.params, m.hints)
        try:
            return self._reply_for(m, o), o
        except EncodeError as exc:
            # After a statement that may have written, the error says that it applied, with
            # its status and token. (Batch and Commit replies are a Status: they always fit.)
            analysis = rt.classifier.cached(m.sql)  # None: evicted
            if analysis is not None and analysis.read_only:
                raise
            raise ResultUndeliverable(o.status, o.rowcount, route_wire_of(route_of_outcome(o)),
                                      o.ryw_token, m.hints.tx, exc.message) from exc

    async def _batch(self, rt: Runtime, session: Session, m: Batch) -> Answer:
        try:
            o = await rt.executor.batch(session, m.statements, m.hints)
        except asyncpg.PostgresError as exc:
            if m.hints.tx is None and is_read_only_refusal(exc):
                # Outside a transaction a batch runs on the primary, in a transaction of its
                # own: refused as read-only, it found that node demoted; nothing applied.
                raise NodeReadOnlyError(exc, retryable=True) from exc
            raise
        # "BATCH <n>", in a transaction or not (PROTOCOL.md 2.1): executemany reports no
        # statement's own status.
        status = f"BATCH {len(m.statements)}"
        return self.encoder.encode_status(
            m.id, status, len(m.statements), route_of_outcome(o), o.ryw_token
        ), o

    async def _begin(self, rt: Runtime, session: Session, m: Begin) -> Answer:
        tx = await rt.executor.transactions.begin(session, m.hints, m.isolation, m.read_only)
        # A transaction over shards has no route until its statements choose them.
        route = (None if isinstance(tx, DistributedTransaction)
                 else RouteInfo(tx.shard, tx.node.name, Role.PRIMARY))
        return self.encoder.encode(TxStarted(m.id, tx.id, route)), None

    async def _commit(self, rt: Runtime, session: Session, m: Commit) -> Answer:
        o = await rt.executor.transactions.commit(session, m.tx)
        return self.encoder.encode_status(m.id, o.status, 0, route_of_outcome(o), o.ryw_token,
                                          o.ryw_tokens), o

    async def _rollback(self, rt: Runtime, session: Session, m: Rollback) -> Answer:
        o = await rt.executor.transactions.rollback(session, m.tx)
        if o is None:  # the router had rolled it back already (idle, or a failed Commit)
            return self.encoder.encode_status(m.id, "ROLLBACK", 0, None), None
        return self.encoder.encode_status(m.id, o.status, 0, route_of_outcome(o)), o

    async def _doc(self, rt: Runtime, session: Session, m: Doc) -> Answer:
        if m.hints.shards is not None:
            raise CrossShardError(SHARDS_HINT_ALONE)
        if m.hints.idempotency_key is not None and m.op not in DOC_READ_OPS:
            # Not kept for document writes (yet): accepting the key would promise what a
            # retry cannot keep, and a client would send the write again.
            raise UnsupportedRequest("idempotency keys are not supported for document writes yet")
        result = await self._docstore.run(m.collection, m.op, m.args)
        return self.encoder.encode(DocReply(m.id, result)), None

    async def _admin(self, rt: Runtime, session: Session, m: Admin) -> Answer:
        if m.op == "move_user":  # router/engine/usermove.py
            moved = await move_request(rt.config, rt.executor.distributed, self._docstore, m.args)
            return self.encoder.encode(AdminReply(m.id, moved)), None
        if m.op != "topology":
            raise UnsupportedRequest(f"unknown admin op {m.op!r} (known: topology, move_user)")
        return self.encoder.encode(AdminReply(m.id, self._report())), None
