"""Transactions over several shards. Begun without a shard, a transaction's statements go
where their keys route them (a statement whose shard cannot be told is refused, as outside a
transaction); the first statement for a shard opens that shard's branch on its primary. A
write to a reference table runs on every shard's branch. At the commit, one shard that wrote
commits as any transaction does; several commit in two phases (router/engine/twophase.py).
Also here: a reference-table write sent outside a transaction, which is such a transaction
of one statement."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, assert_never

from protocol.messages import Hints
from protocol.messages import Role as WireRole
from router.backend.pool import Backend, NodeUnavailableError
from router.config import Config
from router.core.classify import Analysis
from router.core.reference import WRITTEN_ROW, compared_write, one_copy_refusal
from router.core.routing import (
    SCATTER_HINT,
    CrossShardError,
    EveryPrimary,
    OneShard,
    RoutingError,
    Scatter,
    UnknownShardError,
    route,
    shard_of_value,
)
from router.engine.branches import Branch, DistributedTransaction
from router.engine.classifier import Classifier
from router.engine.errors import (
    NodeReadOnlyError,
    ReferenceCopiesDiffer,
    TransactionAborted,
    UnknownTransaction,
    is_read_only_refusal,
)
from router.engine.outcome import CONNECTION_ERRORS, Outcome
from router.engine.session import Session
from router.engine.twophase import CommitResult, Coordinator, fault_point_from_env
from router.ha.topology import NodeState, ShardState, Topology

__all__ = ["DistributedTransactions", "ReferenceCopiesDiffer"]

Result = tuple[list[str], list[Any], str]


def _written_apart(result: Result, own_returning: bool) -> tuple[Result, list[str]]:
    """A reference write's result (compared_write's) apart: its own (RETURNING rows, or
    none), and the rows it wrote, whole, in an order of their own (shards store rows in
    their own order)."""
    columns, rows, status = result
    if not columns or columns[0] != WRITTEN_ROW:  # a TRUNCATE: nothing to compare
        return result, []
    written = sorted(repr(row[0]) for row in rows)
    if not own_returning:
        return ([], [], status), written
    return (columns[1:], [tuple(row[1:]) for row in rows], status), written


def _first_error(results: list[Any]) -> list[Any]:
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class DistributedTransactions:
    def __init__(
        self,
        config: Config,
        topology: Topology,
        classifier: Classifier,
        acquire: Callable[[NodeState], Awaitable[Backend]],
        token: Callable[[Session, ShardState], Awaitable[str]],
        ended: Callable[[], None] | None = None,
    ) -> None:
        """`ended`: called whenever a transaction is over, whoever ended it (a drain waits
        for that)."""
        self._config = config
        self._topology = topology
        self._classifier = classifier
        self._acquire = acquire
        self._token = token
        self._ended = ended or (lambda: None)
        self._idle_timeout = config.router.transaction_idle_timeout_seconds
        # The fault point is read once, here, at start-up (README, "Testing two-phase commit").
        self.coordinator = Coordinator(acquire, config.router.node_name,
                                       config.router.twophase_grace_seconds,
                                       fault_point_from_env(os.environ))
        self._bg: set[asyncio.Task[None]] = set()

    # ---- begin, statements ------------------------------------------------------------------

    def begin(self, session: Session, sql: str, read_only: bool) -> DistributedTransaction:
        """Opens nothing yet: each shard's branch opens with its first statement."""
        if session.closed:
            raise UnknownTransaction("the client connection is closed")
        tx = session.open_distributed(sql, read_only)
        self._arm_idle_timer(session, tx)
        return tx

    async def statements(self, session: Session, tx: DistributedTransaction,
                         statements: Sequence[tuple[str, Sequence[Any]]], hints: Hints
                         ) -> Outcome:
        """Statements inside `tx` (one, or a batch), each placed by its keys; all checked
        before any runs, then run in order holding the transaction."""
        tx.stop_idle_timer()  # its client is not idle: a long text may wait for the parser
        try:
            analyses = [await self._classifier.analyze_async(sql) for sql, _ in statements]
            placed = [self._placement(tx, analysis, params, hints)
                      for analysis, (_, params) in zip(analyses, statements, strict=True)]
        except BaseException:
            self._arm_idle_timer(session, tx)
            raise
        last: Outcome | None = None
        async with tx.lock:
            if tx.closed:  # a commit/rollback queued ahead of us finished it
                session.get(tx.id)  # says why (rolled back when idle, or simply unknown)
                raise UnknownTransaction(f"no open transaction {tx.id}")
            tx.stop_idle_timer()
            try:
                for analysis, shards, (sql, params) in zip(analyses, placed, statements,
                                                           strict=True):
                    last = await self._run(tx, analysis, shards, sql, params)
            finally:
                if not tx.closed:
                    self._arm_idle_timer(session, tx)
        assert last is not None
        return last

    def _placement(self, tx: DistributedTransaction, analysis: Analysis,
                   params: Sequence[Any], hints: Hints) -> tuple[str, ...]:
        """The shards one statement of `tx` runs on: the one its keys (or its hint) name; every
        shard for a reference-table write; for a read of reference tables only, a shard the
        transaction has open already (any shard has them)."""
        config = self._config
        if len(params) != analysis.param_count:
            raise RoutingError(f"the statement uses {analysis.param_count} parameters, "
                               f"{len(params)} were given")
        hint = hints.shard
        if hint is None and hints.shard_key is not None:
            hint = shard_of_value(hints.shard_key, config)
            if hint is None:
                raise UnknownShardError(f"shard_key {hints.shard_key!r} is neither a region nor "
                                        "a georoute id")
        if hint == SCATTER_HINT:
            raise CrossShardError('shard "*" asks every shard: inside a transaction each '
                                  "statement runs on one shard (its keys, or a hint, say which)")
        conf = analysis.confinement
        if hint is None and analysis.read_only and not conf.refs and not conf.rows:
            return (next(iter(tx.branches), next(iter(config.shards))),)
        match route(analysis, params, hint, config):
            case OneShard(shard=shard):
                return (shard,)
            case EveryPrimary(shards=shards):  # a reference table: every copy, or none
                return shards
            case Scatter():
                raise CrossShardError(
                    "a read over several shards inside a transaction is not supported: read "
                    "them outside it (a cross-shard read), or one shard at a time by key or "
                    "hint")
            case other:
                assert_never(other)

    async def _run(self, tx: DistributedTransaction, analysis: Analysis,
                   shards: Sequence[str], sql: str, params: Sequence[Any]) -> Outcome:
        """One statement on the branches of `shards` (opened as needed), holding tx.lock."""
        if tx.failed:
            raise TransactionAborted("an earlier statement failed; only rollback is accepted")
        own_returning = True
        if analysis.reference_writes:  # its written rows come first, to compare the copies
            sql, own_returning = compared_write(sql, self._config.tables)
        try:
            if len(shards) == 1:  # the common case: no tasks
                if shards[0] not in tx.branches:
                    await self._open(tx, shards[0])
                branches = [tx.branches[shards[0]]]
                results = [await self._run_on(tx, branches[0], analysis, sql, params)]
            else:  # each to its end, so no branch is busy when the transaction rolls back
                _first_error(await asyncio.gather(
                    *(self._open(tx, s) for s in shards if s not in tx.branches),
                    return_exceptions=True))
                branches = [tx.branches[s] for s in shards]
                results = _first_error(await asyncio.gather(
                    *(self._run_on(tx, b, analysis, sql, params) for b in branches),
                    return_exceptions=True))
        except BaseException:
            # A failed, timed-out or cancelled statement may have left effects behind: from
            # here on the transaction can only be rolled back.
            tx.failed = True
            raise
        written: list[list[str]] = []
        if analysis.reference_writes:
            apart = [_written_apart(result, own_returning) for result in results]
            results, written = [r for r, _ in apart], [w for _, w in apart]
        first = results[0]
        if (any(result[1:] != first[1:] for result in results[1:])
                or any(rows != written[0] for rows in written[1:])):
            tx.failed = True
            said = "; ".join(f"{b.shard}: {r[2]}" for b, r in zip(branches, results, strict=True))
            raise ReferenceCopiesDiffer(
                f"the write to {', '.join(analysis.reference_writes)} did not do the same on "
                f"every shard ({said}), so it was not applied: its copies already differ "
                "(`georoute health` names them), or the statement computes its rows on each "
                "shard")
        if not analysis.read_only:
            # Whatever the status says: `DELETE 0` may still have written, through a
            # function it calls, a writable CTE or a statement trigger. A branch counted as a
            # reader would be committed apart from the two-phase commit.
            for branch in branches:
                branch.wrote = True
        columns, rows, status = first
        return Outcome(columns, rows, status, ",".join(b.shard for b in branches),
                       ",".join(b.node.name for b in branches), WireRole.PRIMARY)

    async def _open(self, tx: DistributedTransaction, shard: str) -> None:
        node = self._topology.shards[shard].primary
        backend = await self._acquire(node)
        try:
            await backend.conn.execute(tx.begin_sql)
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        tx.branches[shard] = Branch(shard, node, backend)

    @staticmethod
    async def _run_on(tx: DistributedTransaction, branch: Branch, analysis: Analysis, sql: str,
                      params: Sequence[Any]) -> Result:
        if analysis.changes_session_state:
            # Before it runs: a session-level change (an advisory lock, SET) outlives a failed
            # statement and the transaction's rollback.
            branch.backend.dirty = True
        try:
            return await branch.backend.run(sql, params)
        except CONNECTION_ERRORS as exc:
            raise NodeUnavailableError(
                f"{branch.node.name}: connection lost inside transaction {tx.id}: {exc}",
                sent=True) from exc
        except BaseException as exc:
            if is_read_only_refusal(exc) and not tx.read_only:
                # Begun read-write, yet refused as read-only: its node is no longer the
                # primary. The transaction is lost (begin a new one).
                raise NodeReadOnlyError(exc, retryable=False) from exc
            raise

    # ---- commit, rollback, the client leaving -----------------------------------------------

    async def commit(self, session: Session, tx: DistributedTransaction) -> Outcome:
        try:
            return await self._commit(session, tx)
        finally:
            self._ended()

    async def _commit(self, session: Session, tx: DistributedTransaction) -> Outcome:
        async with tx.lock:
            self._close(session, tx)
            branches = list(tx.branches.values())
            if tx.failed:
                why = (f"transaction {tx.id} was rolled back, not committed: a statement in "
                       "it had failed; the transaction is over (a Rollback is not needed)")
                session.expire(tx, why)
                await self.coordinator.rollback(branches)
                raise TransactionAborted(why)
            # Shielded: a commit under way finishes (or is settled) whatever becomes of its
            # request.
            result = await asyncio.shield(self.coordinator.commit(
                branches, serializable=tx.serializable))
        return await self._committed(session, branches, result, "COMMIT")

    async def rollback(self, session: Session, tx: DistributedTransaction) -> Outcome | None:
        """The transaction's Outcome; None when it had opened no branch (nothing to say)."""
        async with tx.lock:
            self._close(session, tx)
            branches = list(tx.branches.values())
            try:
                await self.coordinator.rollback(branches)
            finally:
                self._ended()
        if not branches:
            return None
        return Outcome([], [], "ROLLBACK", ",".join(b.shard for b in branches),
                       ",".join(b.node.name for b in branches), WireRole.PRIMARY)

    async def close(self, session: Session, tx: DistributedTransaction) -> None:
        """Its client went away: roll back whatever it left open."""
        tx.stop_idle_timer()
        async with tx.lock:
            if tx.closed:
                return
            tx.closed = True
            session.transactions.pop(tx.id, None)
            try:
                await self.coordinator.rollback(list(tx.branches.values()))
            finally:
                self._ended()

    @staticmethod
    def _close(session: Session, tx: DistributedTransaction) -> None:
        """Called holding tx.lock: statements queued behind us see it closed and refuse."""
        if tx.closed:
            session.get(tx.id)  # says why (rolled back when idle, or simply unknown)
            raise UnknownTransaction(f"no open transaction {tx.id}")
        tx.closed = True
        tx.stop_idle_timer()
        session.transactions.pop(tx.id, None)

    async def _committed(self, session: Session, branches: Sequence[Branch],
                         result: CommitResult, status: str, columns: list[str] | None = None,
                         rows: list[Any] | None = None) -> Outcome:
        """The reply's Outcome: where it ran, and a read-your-writes token for every shard
        whose writes are committed (PROTOCOL.md section 5)."""
        shards = self._topology.shards
        if len(result.committed) <= 1:  # no tasks for one
            tokens = [await self._token(session, shards[name]) for name in result.committed]
        else:
            tokens = await asyncio.gather(*(self._token(session, shards[name])
                                            for name in result.committed))
        return Outcome(columns or [], rows or [], status, ",".join(b.shard for b in branches),
                       ",".join(b.node.name for b in branches), WireRole.PRIMARY,
                       tokens[0] if tokens else None, ryw_tokens=tuple(tokens))

    # ---- a reference-table write outside a transaction ---------------------------------------

    async def reference_write(self, session: Session, sql: str, params: Sequence[Any],
                              hints: Hints, analysis: Analysis) -> Outcome:
        """Run `sql` on every shard's primary, committed on all of them in one two-phase
        commit, or on none."""
        if hints.shard is not None or hints.shard_key is not None:
            raise CrossShardError(one_copy_refusal(analysis.reference_writes, "a shard hint"))
        if hints.idempotency_key is not None:
            raise RoutingError("an idempotency key is not supported on a write to a reference "
                               "table yet: send it without one")
        tx = DistributedTransaction(0, "BEGIN")  # the session never sees it
        shards = self._placement(tx, analysis, params, hints)
        try:
            ran = await self._run(tx, analysis, shards, sql, params)
        except BaseException:
            await self.coordinator.rollback(list(tx.branches.values()))
            raise
        branches = list(tx.branches.values())
        result = await asyncio.shield(self.coordinator.commit(
                branches, serializable=tx.serializable))
        return await self._committed(session, branches, result, ran.status, ran.columns,
                                     ran.rows)

    # ---- idle transactions ------------------------------------------------------------------

    def _arm_idle_timer(self, session: Session, tx: DistributedTransaction) -> None:
        """As for a transaction on one shard (transactions.py): an idle one is rolled back."""
        tx.stop_idle_timer()
        if self._idle_timeout > 0 and not tx.closed:
            tx.idle_timer = asyncio.get_running_loop().call_later(
                self._idle_timeout, self._expire_idle, session, tx)

    def _expire_idle(self, session: Session, tx: DistributedTransaction) -> None:
        tx.idle_timer = None
        task = asyncio.ensure_future(self._roll_back_idle(session, tx))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _roll_back_idle(self, session: Session, tx: DistributedTransaction) -> None:
        async with tx.lock:
            if tx.closed or tx.idle_timer is not None:  # ended, or busy again meanwhile
                return
            tx.closed = True
            for branch in tx.branches.values():
                branch.node.pool.idle_rollbacks += 1
            session.expire(tx, f"transaction {tx.id} was rolled back: its client sent nothing "
                               f"for {self._idle_timeout:g} s "
                               "(router.transaction_idle_timeout_seconds)")
            try:
                await self.coordinator.rollback(list(tx.branches.values()))
            finally:
                self._ended()
