"""Transactions pinned to one pooled connection on one shard's primary, from begin to commit
or rollback; a client that leaves has what it left open rolled back. A transaction begun
without a shard spans shards: router/engine/distributed.py runs it.

What they need of the rest of the engine comes in as ports (the Executor provides them, tests
give their own): a shard's primary, a pooled connection of a node and its return, the
read-your-writes token after a commit that wrote, and a word when a transaction ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from protocol.messages import Hints, Isolation
from router.backend.pool import Backend, NodeUnavailableError
from router.config import Config
from router.core.classify import Analysis
from router.core.routing import (
    SHARDS_HINT_ALONE,
    CrossShardError,
    MissingShardKeyError,
    UnknownShardError,
    check_writes,
    keyed_shard,
)
from router.engine.branches import DistributedTransaction, begin_sql
from router.engine.classifier import Classifier
from router.engine.distributed import DistributedTransactions
from router.engine.errors import (
    COMMIT_ANSWER_SECONDS,
    CommitOutcomeUnknown,
    NodeReadOnlyError,
    TransactionAborted,
    UnknownTransaction,
    is_read_only_refusal,
)
from router.engine.outcome import CONNECTION_ERRORS, Outcome
from router.engine.session import Session, Transaction
from router.ha.topology import NodeState
from router.types import Role

__all__ = ["Acquire", "Release", "Token", "Transactions"]

# A pooled connection of a node (raising NodeUnavailableError when it has none to give).
Acquire = Callable[[NodeState], Awaitable[Backend]]
# Give a connection back to its node's pool; broken: close it rather than reuse it.
Release = Callable[[NodeState, Backend, bool], None]
# The read-your-writes token after a write on a shard's primary, noted in the session.
Token = Callable[[Session, str], Awaitable[str]]

def _nothing() -> None:
    pass


class Transactions:
    def __init__(
        self,
        config: Config,
        classifier: Classifier,
        *,
        primary: Callable[[str], NodeState],
        shard_for_key: Callable[[Any], str],
        acquire: Acquire,
        release: Release,
        token: Token,
        ended: Callable[[], None] | None = None,
        distributed: DistributedTransactions | None = None,
    ) -> None:
        """`primary`: a shard's primary now; `shard_for_key`: the shard a shard_key hint
        names (or UnknownShardError); `ended`: called when a transaction is over, whoever
        ended it (a drain waits for that); `distributed`: runs the transactions begun with no
        shard (without it, such a begin is refused)."""
        self._config = config
        self._classifier = classifier
        self._primary = primary
        self._shard_for_key = shard_for_key
        self._acquire = acquire
        self._release = release
        self._token = token
        self._ended = ended or _nothing
        # Pinned transactions per client connection: leave most of the pool to everyone else.
        self._max_tx = max(1, config.database.pool_max_size // 2)
        self._idle_timeout = config.router.transaction_idle_timeout_seconds
        self._bg: set[asyncio.Task[None]] = set()
        self.distributed = distributed

    def _check_shard(self, tx: Transaction, analysis: Analysis, params: Sequence[Any],
                     hints: Hints) -> None:
        """A statement inside `tx` runs on its shard, which the transaction named when it began
        (as a hint does): it must not name another shard by its keys, and the rows it writes
        must belong to the transaction's shard."""
        config = self._config
        if hints.shard is not None and hints.shard != tx.shard:
            if hints.shard not in config.shards:
                raise UnknownShardError(f"shard hint {hints.shard!r} is not a shard", hints.shard)
            raise CrossShardError(
                f"transaction {tx.id} is on shard {tx.shard}; the hint says {hints.shard}")
        shard = keyed_shard(analysis, params, config)  # a hint does not silence the keys
        if shard is not None and shard != tx.shard:
            raise CrossShardError(
                f"transaction {tx.id} is on shard {tx.shard}; this statement is for {shard}"
            )
        check_writes(analysis, params, tx.shard, config)

    async def statement(
        self, session: Session, tx: Transaction | DistributedTransaction, sql: str,
        params: Sequence[Any], hints: Hints,
    ) -> Outcome:
        return await self.statements(session, tx, [(sql, params)], hints)

    async def statements(self, session: Session, tx: Transaction | DistributedTransaction,
                         statements: Sequence[tuple[str, Sequence[Any]]], hints: Hints
                         ) -> Outcome:
        """Statements inside `tx` (one, or a batch): every one checked first, then all run
        with the transaction held, so a commit sent meanwhile waits for the whole batch."""
        if isinstance(tx, DistributedTransaction):
            assert self.distributed is not None  # only it opens them
            return await self.distributed.statements(session, tx, statements, hints)
        tx.stop_idle_timer()  # its client is not idle: a long text may wait for the parser
        try:
            analyses = [await self._classifier.analyze_async(sql)
                        for sql, _ in statements]
            for analysis, (_, params) in zip(analyses, statements, strict=True):
                self._check_shard(tx, analysis, params, hints)
        except BaseException:
            self._arm_idle_timer(session, tx)
            raise
        last: Outcome | None = None
        async with tx.lock:
            for analysis, (sql, params) in zip(analyses, statements, strict=True):
                last = await self._run(session, tx, analysis, sql, params)
        assert last is not None
        return last

    async def _run(self, session: Session, tx: Transaction, analysis: Analysis, sql: str,
                   params: Sequence[Any]) -> Outcome:
        """One statement of `tx`, called holding tx.lock."""
        if tx.closed:  # a commit/rollback queued ahead of us finished it
            session.get(tx.id)  # says why (rolled back when idle, or simply unknown)
            raise UnknownTransaction(f"no open transaction {tx.id}")
        tx.stop_idle_timer()
        try:
            return await self._run_open(tx, analysis, sql, params)
        finally:
            if not tx.closed:
                self._arm_idle_timer(session, tx)

    async def _run_open(self, tx: Transaction, analysis: Analysis, sql: str,
                        params: Sequence[Any]) -> Outcome:
        if tx.failed:
            raise TransactionAborted("an earlier statement failed; only rollback is accepted",
            )
        if analysis.changes_session_state:
            # Before it runs: a session-level change (an advisory lock, SET) outlives a
            # failed statement and the transaction's rollback.
            tx.backend.dirty = True
        try:
            columns, rows, status = await tx.backend.run(sql, params)
        except CONNECTION_ERRORS as exc:
            tx.failed = True
            raise NodeUnavailableError(
                f"{tx.node.name}: connection lost inside transaction {tx.id}: {exc}", sent=True
            ) from exc
        except BaseException as exc:
            # A failed, timed-out or cancelled statement may have left effects behind:
            # from here on the transaction can only be rolled back.
            tx.failed = True
            if is_read_only_refusal(exc) and not tx.read_only:
                # Begun read-write, yet refused as read-only: its node is no longer the
                # primary. The transaction is lost (begin a new one); sent again as it is,
                # this statement could not succeed.
                raise NodeReadOnlyError(exc, retryable=False) from exc
            raise
        if not analysis.read_only:
            tx.wrote = True
        return Outcome(columns, rows, status, tx.shard, tx.node.name, Role.PRIMARY)

    async def begin(
        self, session: Session, hints: Hints, isolation: Isolation | None, read_only: bool
    ) -> Transaction | DistributedTransaction:
        if hints.shards is not None:
            raise CrossShardError(SHARDS_HINT_ALONE)
        if hints.shard is not None:
            if hints.shard not in self._config.shards:
                raise UnknownShardError(f"shard hint {hints.shard!r} is not a shard", hints.shard)
            shard_name = hints.shard
        elif hints.shard_key is not None:
            shard_name = self._shard_for_key(hints.shard_key)
        elif self.distributed is not None:  # no shard named: its statements' keys say where
            session.check_room(self._max_tx)
            return self.distributed.begin(session, begin_sql(isolation, read_only), read_only)
        else:
            raise MissingShardKeyError(["a shard or shard_key hint on begin"])
        session.check_room(self._max_tx)
        node = self._primary(shard_name)
        session.opening += 1  # counted until it is open: concurrent begins cannot pass the limit
        try:
            backend = await self._acquire(node)
            sql = begin_sql(isolation, read_only)
            try:
                await backend.conn.execute(sql)
            except BaseException:
                self._release(node, backend, True)
                raise
        finally:
            session.opening -= 1
        if session.closed:  # the client left while we were opening it: nobody will end it
            await self._end(node, backend, "ROLLBACK")
            raise UnknownTransaction("the client connection is closed")
        tx = session.open(shard_name, node, backend)
        tx.read_only = read_only
        self._arm_idle_timer(session, tx)
        return tx

    def _arm_idle_timer(self, session: Session, tx: Transaction) -> None:
        """PostgreSQL ends a session idle in a transaction this long; the router must too,
        or the pinned connection stays out of the pool until the client comes back (one
        whose Begin reply came after it had given up never does)."""
        tx.stop_idle_timer()  # at most one
        if self._idle_timeout > 0 and not tx.closed:
            tx.idle_timer = asyncio.get_running_loop().call_later(
                self._idle_timeout, self._expire_idle, session, tx)

    def _expire_idle(self, session: Session, tx: Transaction) -> None:
        tx.idle_timer = None
        task = asyncio.ensure_future(self._roll_back_idle(session, tx))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _roll_back_idle(self, session: Session, tx: Transaction) -> None:
        async with tx.lock:
            if tx.closed or tx.idle_timer is not None:  # ended, or busy again meanwhile
                return
            tx.closed = True
            tx.node.pool.idle_rollbacks += 1
            session.expire(tx, f"transaction {tx.id} was rolled back: its client sent nothing "
                               f"for {self._idle_timeout:g} s "
                               "(router.transaction_idle_timeout_seconds)")
            try:
                with contextlib.suppress(Exception):  # already ended by the server: dropped
                    await self._end(tx.node, tx.backend, "ROLLBACK")
            finally:
                self._ended()  # its connection is back (no request of its client says so)

    async def commit(self, session: Session, tx_id: int) -> Outcome:
        tx = session.get(tx_id)
        if isinstance(tx, DistributedTransaction):
            assert self.distributed is not None
            return await self.distributed.commit(session, tx)
        async with tx.lock:
            self._close(session, tx)
            tx.stop_idle_timer()
            if tx.failed:
                # As PostgreSQL answers COMMIT in a failed transaction: rolled back, and over.
                # Said as an error (a client that reads only errors must not take it for a
                # commit); a Rollback sent after it answers ROLLBACK.
                why = (f"transaction {tx.id} was rolled back, not committed: a statement in "
                       "it had failed; the transaction is over (a Rollback is not needed)")
                session.expire(tx, why)
                await self._end(tx.node, tx.backend, "ROLLBACK")
                raise TransactionAborted(why)
            await self._end(tx.node, tx.backend, "COMMIT", shard=tx.shard)
        token = await self._token(session, tx.shard) if tx.wrote else None
        return Outcome([], [], "COMMIT", tx.shard, tx.node.name, Role.PRIMARY, token)

    async def rollback(self, session: Session, tx_id: int) -> Outcome | None:
        """The transaction's Outcome; None when the router had already rolled it back."""
        if session.rolled_back(tx_id):
            return None
        tx = session.get(tx_id)
        if isinstance(tx, DistributedTransaction):
            assert self.distributed is not None
            return await self.distributed.rollback(session, tx)
        async with tx.lock:
            self._close(session, tx)
            tx.stop_idle_timer()
            await self._end(tx.node, tx.backend, "ROLLBACK")
        return Outcome([], [], "ROLLBACK", tx.shard, tx.node.name, Role.PRIMARY)

    def _close(self, session: Session, tx: Transaction) -> None:
        """Called holding tx.lock: statements queued behind us see it closed and refuse."""
        if tx.closed:
            session.get(tx.id)  # says why (rolled back when idle, or simply unknown)
            raise UnknownTransaction(f"no open transaction {tx.id}")
        tx.closed = True
        session.transactions.pop(tx.id, None)
        self._ended()

    async def _end(self, node: NodeState, backend: Backend, sql: str, *,
                   shard: str = "") -> None:
        """COMMIT or ROLLBACK on a pinned connection, then give it back to the pool. A COMMIT
        whose connection is lost, or that has no answer within COMMIT_ANSWER_SECONDS, may
        have applied: CommitOutcomeUnknown (asyncio's TimeoutError is an OSError, one of
        CONNECTION_ERRORS)."""
        try:
            if sql == "COMMIT":
                async with asyncio.timeout(COMMIT_ANSWER_SECONDS):
                    await backend.conn.execute(sql)
            else:
                await backend.conn.execute(sql)
        except CONNECTION_ERRORS as exc:
            self._release(node, backend, True)
            if sql == "COMMIT":
                raise CommitOutcomeUnknown(shard, node.name, exc) from exc
            # A lost ROLLBACK: the server rolls the transaction back as the connection ends.
            raise NodeUnavailableError(
                f"{node.name}: connection lost during {sql}: {exc}", sent=True
            ) from exc
        except BaseException:
            self._release(node, backend, True)
            raise
        self._release(node, backend, False)

    async def close_session(self, session: Session) -> None:
        """The client went away: roll back whatever it left open."""
        session.closed = True
        for tx in list(session.transactions.values()):
            if isinstance(tx, DistributedTransaction):
                assert self.distributed is not None
                await self.distributed.close(session, tx)
                continue
            tx.stop_idle_timer()
            async with tx.lock:
                if tx.closed:
                    continue
                tx.closed = True
                session.transactions.pop(tx.id, None)
                try:
                    with contextlib.suppress(Exception):  # a failed rollback drops the connection
                        await self._end(tx.node, tx.backend, "ROLLBACK")
                finally:
                    self._ended()

