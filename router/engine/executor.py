"""Carries routing decisions out: pick the node, borrow a backend connection, run, give back.

`Executor.submit` (the pipelined fast path) and `Executor.query` (the pooled path) each take a
cached parse, a pure route (core/routing.py) and, for a read, the pure read decision
(core/reads.py `plan_read`), then run the statement in one round trip on a prepared
statement. Writes on a primary also read the primary's WAL position, which becomes the
session's read-your-writes token; reads carrying such a token go to a replica only once it
has replayed past it (waiting a bounded few milliseconds), else to the primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, assert_never

import asyncpg

from protocol.messages import Hints
from protocol.ryw import format_ryw_token
from router.backend.pgwire import Callback, PipelineError, Unsupported
from router.backend.pool import Backend, NodeUnavailableError, PoolTimeoutError
from router.backend.wal import REPLAY_POSITION_SQL
from router.config import Config, FailoverMode
from router.core.classify import Analysis
from router.core.health import HealthEvent
from router.core.reads import AwaitReplay, OnPrimary, OnReplica, ReadPlan, ReadPolicy, plan_read
from router.core.reference import one_copy_refusal
from router.core.routing import (
    SHARDS_HINT_ALONE,
    CrossShardError,
    EveryPrimary,
    MissingShardKeyError,
    OneShard,
    Route,
    RoutingError,
    Scatter,
    UnknownShardError,
    check_writes,
    resolve_shards,
    route,
    shard_of_value,
    statement_shard,
)
from router.engine import idempotency
from router.engine.classifier import Classifier
from router.engine.distributed import DistributedTransactions
from router.engine.errors import NodeReadOnlyError, is_read_only_refusal
from router.engine.outcome import (
    CONNECTION_ERRORS,
    Outcome,
    Routed,
    ScatterDone,
    bounded_transaction,
    connection_lost,
    returned_after,
)
from router.engine.scatter import ScatterRunner
from router.engine.session import Session
from router.engine.transactions import Transactions
from router.ha.topology import NodeState, ShardState, Topology
from router.types import Role

__all__ = ["Executor"]






def _release(node: NodeState, backend: Backend, broken: bool) -> None:
    node.pool.release(backend, broken=broken)


class Executor:
    def __init__(self, config: Config, topology: Topology, classifier: Classifier, *,
                 transaction_ended: Callable[[], None] | None = None) -> None:
        """`transaction_ended`: called whenever a transaction is over (a drain waits on it)."""
        self.config = config
        self.topology = topology
        self.classifier = classifier
        self._ryw_wait = config.router.read_your_writes_wait_ms / 1000
        self.read_policy = ReadPolicy(config.router.max_replica_lag_bytes, self._ryw_wait > 0)
        self.distributed = DistributedTransactions(config, topology, classifier, self.acquire,
                                                   self.token, ended=transaction_ended)
        self.transactions = Transactions(
            config, classifier, primary=lambda shard: self._shard(shard).primary,
            shard_for_key=self.shard_for_key, acquire=self.acquire, release=_release,
            token=lambda session, shard: self.token(session, self._shard(shard)),
            ended=transaction_ended, distributed=self.distributed,
        )
        # While a shard's primary is down and a failover may bring one (external or managed
        # mode), its writes wait this long for it ([failover] write_buffer_seconds).
        off = FailoverMode(config.failover.mode) is FailoverMode.OFF
        self.write_hold = 0.0 if off else config.failover.write_buffer_seconds
        self._routes: dict[NodeState, list[str]] = {}
        self.scatter = ScatterRunner(config, topology, self.plan_read, self._pick, self.acquire)

    # ---- choosing and borrowing ------------------------------------------------------------

    def _shard(self, name: str) -> ShardState:
        return self.topology.shards[name]

    def target_for(self, sql: str, params: Sequence[Any], hints: Hints) -> tuple[Analysis, Route]:
        analysis = self.classifier.analyze(sql)
        hint = hints.shard
        if hint is None and hints.shard_key is not None:
            hint = self.shard_for_key(hints.shard_key)
        return analysis, route(analysis, params, hint, self.config, hints.shards)

    def shard_for_key(self, key: Any) -> str:
        shard = shard_of_value(key, self.config)
        if shard is None:
            raise UnknownShardError(f"shard_key {key!r} is neither a region nor a georoute id")
        return shard

    async def acquire(self, node: NodeState) -> Backend:
        if not node.available:
            state = "fenced" if node.fenced else "down"
            raise NodeUnavailableError(f"{node.name} is {state} "
                                       f"({node.last_error or 'unreachable'})")
        if not node.pool.closed:
            backend = node.pool.try_acquire()
            if backend is not None:
                return backend
        try:
            return await node.pool.acquire()
        except NodeUnavailableError as exc:
            if not exc.refused:  # turned away by a live server (at its connection limit): up
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
            raise

    async def writable_primary(self, shard: ShardState) -> NodeState:
        """The shard's primary, for a write. While it is down (a failover under way, or a
        restart), the write is held up to `write_hold` seconds for a primary that can take
        it, woken by each monitor round; then it goes there, or fails with the retryable
        NODE_UNAVAILABLE if there is none. Reads do not wait: replicas keep serving them."""
        if not shard.primary.available and self.write_hold > 0:
            await shard.wait_for_primary(self.write_hold)
        return shard.primary

    def plan_read(self, session: Session, shard: ShardState, hints: Hints) -> ReadPlan[NodeState]:
        """Where a read of `shard` runs (core/reads.py), for this session and its hints."""
        return plan_read(shard, session.min_lsn(shard.name, hints.ryw), hints.consistency,
                         self.read_policy, shard.next_turn())

    async def _replica_past(
        self, node: NodeState, min_lsn: int, pipelined: bool
    ) -> tuple[NodeState, Backend | None] | None:
        """`node`, a fresh replica, once it has replayed past `min_lsn`, waiting up to the
        bounded wait. With `pipelined`, its replay position is asked on its pipelined
        connections and the read goes there too (None for the backend); else on a borrowed
        pooled connection."""
        try:  # the whole wait is bounded, a replica that stops answering included
            async with asyncio.timeout(self._ryw_wait):
                return await self._wait_for_replay(node, min_lsn, pipelined)
        except TimeoutError:
            return None  # the primary always has the session's writes

    async def _wait_for_replay(
        self, node: NodeState, min_lsn: int, pipelined: bool
    ) -> tuple[NodeState, Backend | None] | None:
        pause = 0.0005  # WAL replay is typically 1-2 ms behind; then back off to 4 ms
        if pipelined:
            try:
                while True:
                    _, rows, _ = await node.pool.pipeline.run(REPLAY_POSITION_SQL, ())
                    lsn = rows[0][0] if rows else None
                    if lsn is not None:
                        node.replay_lsn = max(node.replay_lsn or 0, lsn)
                        if lsn >= min_lsn:
                            return node, None
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.004)
            except Unsupported:
                pass  # the pipeline declined: ask on a pooled connection
            except PipelineError as exc:
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
                raise NodeUnavailableError(f"{node.name}: connection lost: {exc}") from exc
        backend = await self.acquire(node)
        querying = False
        try:
            while True:
                querying = True
                lsn = await backend.scalar(REPLAY_POSITION_SQL)
                querying = False
                if lsn is not None:
                    node.replay_lsn = max(node.replay_lsn or 0, lsn)
                    if lsn >= min_lsn:
                        return node, backend
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.004)
        except CONNECTION_ERRORS as exc:
            node.pool.release(backend, broken=True)
            node.record(HealthEvent.CONNECT_FAILED, str(exc))
            raise
        except BaseException:  # the bounded wait ran out (mid-statement: the connection goes)
            node.pool.release(backend, broken=querying)
            raise

    async def _pick(
        self, shard: ShardState, plan: ReadPlan[NodeState] | None, pipelined: bool
    ) -> tuple[NodeState, Backend | None]:
        """Carry out a read plan (None: a write, on the primary): the node to run on, and a
        borrowed backend; None for the backend means "try the node's pipeline first" (`_run`
        then borrows one only if the pipeline declines). A replica that cannot be had, or
        does not catch up in time, leaves the read to the primary."""
        match plan:
            case OnReplica(node=node):
                if pipelined and node.available:
                    return node, None
                try:
                    return node, await self.acquire(node)
                except (NodeUnavailableError, PoolTimeoutError):
                    pass  # the primary
            case AwaitReplay(node=node, min_lsn=min_lsn):
                try:
                    found = await self._replica_past(node, min_lsn, pipelined)
                except (NodeUnavailableError, PoolTimeoutError, *CONNECTION_ERRORS):
                    found = None  # the primary always has the session's writes
                if found is not None:
                    return found
            case None:  # a write
                await self.writable_primary(shard)
            case OnPrimary():
                pass
            case _:
                assert_never(plan)
        return shard.primary, await self._primary(shard, pipelined)

    async def _primary(self, shard: ShardState, pipelined: bool) -> Backend | None:
        primary = shard.primary
        if pipelined and primary.available:
            return None
        return await self.acquire(primary)

    # ---- running ---------------------------------------------------------------------------

    async def _run(
        self, node: NodeState, backend: Backend | None, sql: str, params: Sequence[Any],
        dirty: bool = False, timeout_ms: int | None = None,
    ) -> tuple[list[str], list[Any], str]:
        """Run on `backend`, or on the node's pipeline when it is None (a pooled backend if
        the pipeline declines). The backend is given back afterwards (dropped if broken).
        `timeout_ms` (the request's) is also enforced by the server on the pipeline, where a
        statement the router gave up on would hold up the requests behind it."""
        if backend is None:
            try:
                return await node.pool.pipeline.run(sql, params, timeout_ms=timeout_ms)
            except Unsupported:
                backend = await self.acquire(node)
            except PipelineError as exc:
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
                raise NodeUnavailableError(
                    f"{node.name}: connection lost: {exc}", sent=True
                ) from exc
        if dirty:  # before it runs: a session-level change outlives a failed statement
            backend.dirty = True
        with returned_after(node, backend):
            result = await backend.run(sql, params)
        return result

    def submit(
        self, session: Session, sql: str, params: Sequence[Any], hints: Hints,
        callback: Callback, scatter_done: ScatterDone | None = None,
    ) -> Routed | Scatter | None:
        """The synchronous fast path of `query`: route an autocommit statement and queue it
        on the chosen node's pipeline, with no task and no await; `callback` gets the result.
        A cross-shard read is queued on every shard's pipeline the same way (its route is
        returned) and `scatter_done` gets the merged outcome (ScatterRunner.submit).
        None means "use `query`": a transaction, an idempotency key, a statement that changes
        session state, a read that must wait for a replica to catch up, a node or pipeline
        that cannot take it, and every error (which `query` then reports)."""
        if hints.tx is not None or hints.idempotency_key is not None:
            return None
        try:
            analysis, target = self.target_for(sql, params, hints)
            if (len(params) != analysis.param_count or analysis.changes_session_state
                    or analysis.command == "UTILITY"):
                return None
            if type(target) is Scatter:
                if scatter_done is None or not self.scatter.submit(
                        session, sql, params, analysis, target, hints, scatter_done):
                    return None
                return target
            if type(target) is not OneShard:  # EveryPrimary: query() runs it
                return None
            shard = self.topology.shards[target.shard]
            if target.write:
                node = shard.primary
            else:
                plan = self.plan_read(session, shard, hints)
                if type(plan) is AwaitReplay:  # the bounded wait for a replica: query()
                    return None
                node = plan.node
        except Exception:
            return None
        if not node.available:
            return None
        # A write on the primary also gets the WAL position after it, for its token.
        wal = node is shard.primary and not analysis.read_only
        columns = node.pool.pipeline.submit(sql, params, callback, wal, hints.timeout_ms)
        if columns is None:
            return None
        return Routed(columns, node, shard, analysis)

    def route_of(self, node: NodeState) -> list[str]:
        """The reply's route in its wire form, [shard, node, role] (built once per node)."""
        route = self._routes.get(node)
        role = node.role._value_
        if route is None or route[2] != role:  # new, or its role changed (failover)
            route = self._routes[node] = [node.shard, node.name, role]
        return route

    def needs_token(self, routed: Routed, status: str) -> bool:
        """A write (run on the primary only): its reply carries a read-your-writes token,
        whatever its status says. (`UPDATE 0` may still have written: through a function
        it calls, a writable CTE or a statement trigger.)"""
        return not routed.analysis.read_only

    async def write_token(self, session: Session, routed: Routed) -> str:
        return await self.token(session, routed.shard)

    def token_at(self, session: Session, routed: Routed, lsn: int) -> str:
        """The token for a write whose WAL position was read on its own connection."""
        session.note_write(routed.shard.name, lsn)
        return format_ryw_token(routed.shard.name, lsn)

    async def query(
        self, session: Session, sql: str, params: Sequence[Any], hints: Hints
    ) -> Outcome:
        if hints.tx is not None:
            if hints.shards is not None:
                raise CrossShardError(SHARDS_HINT_ALONE)
            tx = session.get(hints.tx)
            return await self.transactions.statement(session, tx, sql, params, hints)
        await self.classifier.analyze_async(sql)  # a long text: parsed off the event loop
        analysis, target = self.target_for(sql, params, hints)  # (found in the cache now)
        if len(params) != analysis.param_count:
            raise RoutingError(
                f"the statement uses {analysis.param_count} parameters, {len(params)} were given"
            )
        match target:
            case Scatter():  # a read over several shards, merged (scatter.py)
                return await self.scatter.run(session, sql, params, analysis, target, hints)
            case EveryPrimary():  # a reference table's copies, in one two-phase commit
                return await self.distributed.reference_write(session, sql, params, hints,
                                                              analysis)
            case OneShard():
                pass
            case _:
                assert_never(target)
        shard = self._shard(target.shard)
        if hints.idempotency_key is not None and not analysis.read_only:
            try:
                return await self._idempotent(session, shard, hints.idempotency_key, sql, params)
            except asyncpg.PostgresError as exc:
                if is_read_only_refusal(exc):  # a demoted primary: nothing was applied
                    raise NodeReadOnlyError(exc, retryable=True) from exc
                raise
        # Autocommit statements that leave no session state behind may share a pipelined
        # connection; the rest get a pooled connection of their own.
        dirty = analysis.changes_session_state
        pipelined = not dirty and analysis.command != "UTILITY"
        plan = None if target.write else self.plan_read(session, shard, hints)
        node, backend = await self._pick(shard, plan, pipelined)
        try:
            columns, rows, status = await self._run(node, backend, sql, params, dirty,
                                                    hints.timeout_ms)
        except asyncpg.PostgresError as exc:
            # A write goes to the primary: refused as read-only, it found that node demoted
            # (nothing was applied). A read refused so wrote after all: its own error.
            if not analysis.read_only and is_read_only_refusal(exc):
                raise NodeReadOnlyError(exc, retryable=True) from exc
            raise
        except NodeUnavailableError:
            if node is shard.primary:
                raise
            # The replica went away under a read: reads are safe to run again, on the primary.
            node, backend = shard.primary, await self._primary(shard, pipelined)
            columns, rows, status = await self._run(node, backend, sql, params, dirty,
                                                    hints.timeout_ms)
        token = None  # (a write runs on the primary only)
        if not analysis.read_only:  # whatever its status says (needs_token)
            token = await self.token(session, shard)
        return Outcome(columns, rows, status, shard.name, node.name, node.role,
                       token)

    async def _idempotent(
        self, session: Session, shard: ShardState, key: str, sql: str, params: Sequence[Any]
    ) -> Outcome:
        """Apply a keyed write at most once: the key is claimed in the write's own transaction,
        and a retry of the same request gets the stored reply (columns, rows, status)."""
        node = await self.writable_primary(shard)
        request = idempotency.fingerprint("query", shard.name, [(sql, params)])
        backend = await self.acquire(node)
        if self.classifier.analyze(sql).changes_session_state:
            backend.dirty = True
        try:
            async with bounded_transaction(backend):
                stored = await idempotency.claim(backend, key, shard.name, request)
                if stored is None:
                    columns, rows, status = await backend.run(sql, params)
                    reply = idempotency.pack_reply(columns, rows,
                                                   self.config.router.max_frame_bytes)
                    await idempotency.store(backend, key, status, reply)
                else:
                    status, reply = stored.status, stored.reply
                    if reply is not None:
                        columns, rows = idempotency.unpack_reply(reply)
        except BaseException as exc:
            # First: asyncpg's ConnectionDoesNotExistError is a PostgresError too, and a loss
            # at COMMIT (which may have applied) must not read as the statement's own error.
            if connection_lost(exc, backend):
                node.pool.release(backend, broken=True)
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
                # sent=False on purpose: a retry with the same key cannot apply it twice.
                raise NodeUnavailableError(f"{node.name}: connection lost: {exc}") from exc
            if isinstance(exc, (asyncpg.PostgresError, idempotency.IdempotencyKeyReused)):
                node.pool.release(backend)  # rolled back; the connection is fine
                raise
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)
        token = await self.token(session, shard)
        if reply is None:  # applied, but its rows can never be sent, nor to a retry
            return Outcome([], [], status, shard.name, node.name, Role.PRIMARY, token,
                           rows_lost="its rows hold a value with no wire form, or exceed "
                                     "the frame limit (router.max_frame_bytes)")
        return Outcome(columns, rows, status, shard.name, node.name, Role.PRIMARY, token)

    async def token(self, session: Session, shard: ShardState) -> str:
        """The read-your-writes token after a write on `shard`'s primary (noted in session)."""
        lsn = await shard.lsn.after_write()
        session.note_write(shard.name, lsn)
        return format_ryw_token(shard.name, lsn)

    async def batch(
        self, session: Session, statements: Sequence[tuple[str, Sequence[Any]]], hints: Hints
    ) -> Outcome:
        """Run statements in order, atomically, on one shard's primary."""
        if not statements:
            raise RoutingError("empty batch")
        analyses = [await self.classifier.analyze_async(sql) for sql, _ in statements]
        if hints.tx is not None:
            tx = session.get(hints.tx)
            last = await self.transactions.statements(session, tx, statements, hints)
            return Outcome([], [], last.status, last.shard, last.node, last.role)
        shard_name = self._batch_shard(analyses, statements, hints)
        first_sql = statements[0][0]
        shard = self._shard(shard_name)
        node = await self.writable_primary(shard)
        backend = await self.acquire(node)
        if any(analysis.changes_session_state for analysis in analyses):
            backend.dirty = True  # closed, not reused (pool.py)
        key = hints.idempotency_key
        try:
            async with bounded_transaction(backend):
                # With a key, the batch applies at most once, as a keyed query does: the key is
                # claimed in the batch's own transaction; a retry gets the stored status.
                stored = None
                if key is not None:
                    request = idempotency.fingerprint("batch", shard.name, statements)
                    stored = await idempotency.claim(backend, key, shard.name, request)
                if stored is not None:
                    status = stored.status
                elif all(sql == first_sql for sql, _ in statements):
                    status = await backend.run_many(first_sql, [p for _, p in statements])
                else:
                    for sql, params in statements:
                        _, _, status = await backend.run(sql, params)
                    status = f"BATCH {len(statements)}"
                if key is not None and stored is None:
                    await idempotency.store(backend, key, status, idempotency.NO_ROWS)
        except BaseException as exc:
            if connection_lost(exc, backend):
                node.pool.release(backend, broken=True)
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
                # With a key a retry cannot apply it twice (sent=False); without, it may have.
                raise NodeUnavailableError(f"{node.name}: connection lost: {exc}",
                                           sent=key is None) from exc
            node.pool.release(backend, broken=backend.conn.is_in_transaction())
            raise
        node.pool.release(backend)
        token = await self.token(session, shard)
        return Outcome([], [], status, shard.name, node.name, Role.PRIMARY, token)

    def _batch_shard(self, analyses: Sequence[Analysis],
                     statements: Sequence[tuple[str, Sequence[Any]]], hints: Hints) -> str:
        """The one shard a batch runs on: its hint, or the shard every statement that touches
        sharded data is confined to (one without any, `SELECT 1`, runs there too). With a
        hint, every statement's written rows are still checked against it."""
        if hints.shards is not None:
            raise CrossShardError(SHARDS_HINT_ALONE)
        hint = hints.shard
        if hint is None and hints.shard_key is not None:
            hint = self.shard_for_key(hints.shard_key)
        if hint is not None:
            for analysis, (_, params) in zip(analyses, statements, strict=True):
                resolve_shards(analysis, params, hint, self.config)
            return hint
        shards: dict[str, int] = {}
        for number, (analysis, (_, params)) in enumerate(
            zip(analyses, statements, strict=True), 1
        ):
            shard = statement_shard(analysis, params, self.config)
            if shard is not None:
                shards.setdefault(shard, number)
            elif not analysis.read_only and analysis.tables:  # a reference table's copy
                if analysis.reference_writes:  # every copy, or none: not in a batch
                    raise CrossShardError(one_copy_refusal(analysis.reference_writes,
                                                           f"a batch (statement {number})"))
                raise MissingShardKeyError([f"{analysis.tables[0]} (statement {number}: "
                                            "a shard hint)"])
        if len(shards) > 1:
            detail = ", ".join(f"statement {n} -> {s}" for s, n in shards.items())
            raise CrossShardError(
                f"batch mixes shards ({detail}); two-phase commit is not supported yet")
        if not shards:
            raise MissingShardKeyError(["a shard hint (no statement of the batch names a shard)"])
        shard = next(iter(shards))
        for analysis, (_, params) in zip(analyses, statements, strict=True):
            check_writes(analysis, params, shard, self.config)
        return shard
