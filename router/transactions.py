"""Transactions pinned to one pooled connection on one shard's primary, from begin to commit
or rollback; a client that leaves has what it left open rolled back."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from protocol.messages import Hints, Isolation
from protocol.messages import Role as WireRole
from router.outcome import CONNECTION_ERRORS, Outcome
from router.pool import Backend, NodeUnavailableError
from router.routing import CrossShardError, MissingShardKeyError, UnknownShardError, resolve_shards
from router.session import Session, Transaction, TransactionError
from router.topology import NodeState

if TYPE_CHECKING:
    from router.executor import Executor

__all__ = ["Transactions"]

_ISOLATION = {
    Isolation.READ_COMMITTED: "READ COMMITTED",
    Isolation.REPEATABLE_READ: "REPEATABLE READ",
    Isolation.SERIALIZABLE: "SERIALIZABLE",
}


class Transactions:
    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        # Pinned transactions per client connection: leave most of the pool to everyone else.
        self._max_tx = max(1, executor.config.database.pool_max_size // 2)

    async def statement(
        self, session: Session, tx: Transaction, sql: str, params: Sequence[Any], hints: Hints
    ) -> Outcome:
        analysis = self._executor.classifier.analyze(sql)
        hint = hints.shard
        target = resolve_shards(analysis, params, hint, self._executor.config) if (
            hint or analysis.keys
        ) else None
        if target is not None and target.shard != tx.shard:
            raise CrossShardError(
                f"transaction {tx.id} is on shard {tx.shard}; this statement is for {target.shard}"
            )
        async with tx.lock:
            if tx.closed:  # a commit/rollback queued ahead of us finished it
                raise TransactionError("UNKNOWN_TRANSACTION", f"no open transaction {tx.id}")
            if tx.failed:
                raise TransactionError(
                    "TRANSACTION_ABORTED",
                    "an earlier statement failed; only rollback is accepted",
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
            except BaseException:
                # A failed, timed-out or cancelled statement may have left effects behind:
                # from here on the transaction can only be rolled back.
                tx.failed = True
                raise
            if not analysis.read_only:
                tx.wrote = True
        return Outcome(columns, rows, status, tx.shard, tx.node.name, WireRole.PRIMARY)

    async def begin(
        self, session: Session, hints: Hints, isolation: Isolation | None, read_only: bool
    ) -> Transaction:
        if hints.shard is not None:
            if hints.shard not in self._executor.config.shards:
                raise UnknownShardError(f"shard hint {hints.shard!r} is not a shard", hints.shard)
            shard_name = hints.shard
        elif hints.shard_key is not None:
            shard_name = self._executor.shard_for_key(hints.shard_key)
        else:
            raise MissingShardKeyError(["a shard or shard_key hint on begin"])
        session.check_room(self._max_tx)
        shard = self._executor.topology.shards[shard_name]
        node = shard.primary
        backend = await self._executor.acquire(node)
        sql = "BEGIN"
        if isolation is not None:
            sql += f" ISOLATION LEVEL {_ISOLATION[isolation]}"
        if read_only:
            sql += " READ ONLY"
        try:
            await backend.conn.execute(sql)
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        if session.closed:  # the client left while we were opening it: nobody will end it
            await self._end(node, backend, "ROLLBACK")
            raise TransactionError("UNKNOWN_TRANSACTION", "the client connection is closed")
        return session.open(shard_name, node, backend)

    async def commit(self, session: Session, tx_id: int) -> Outcome:
        tx = session.get(tx_id)
        async with tx.lock:
            self._close(session, tx)
            if tx.failed:
                await self._end(tx.node, tx.backend, "ROLLBACK")
                raise TransactionError(
                    "TRANSACTION_ABORTED", "the transaction failed earlier and was rolled back"
                )
            await self._end(tx.node, tx.backend, "COMMIT")
        shard = self._executor.topology.shards[tx.shard]
        token = await self._executor.token(session, shard) if tx.wrote else None
        return Outcome([], [], "COMMIT", tx.shard, tx.node.name, WireRole.PRIMARY, token)

    async def rollback(self, session: Session, tx_id: int) -> Outcome:
        tx = session.get(tx_id)
        async with tx.lock:
            self._close(session, tx)
            await self._end(tx.node, tx.backend, "ROLLBACK")
        return Outcome([], [], "ROLLBACK", tx.shard, tx.node.name, WireRole.PRIMARY)

    @staticmethod
    def _close(session: Session, tx: Transaction) -> None:
        """Called holding tx.lock: statements queued behind us see it closed and refuse."""
        if tx.closed:
            raise TransactionError("UNKNOWN_TRANSACTION", f"no open transaction {tx.id}")
        tx.closed = True
        session.transactions.pop(tx.id, None)

    async def _end(self, node: NodeState, backend: Backend, sql: str) -> None:
        """COMMIT or ROLLBACK on a pinned connection, then give it back to the pool."""
        try:
            await backend.conn.execute(sql)
        except CONNECTION_ERRORS as exc:
            node.pool.release(backend, broken=True)
            # Whether a COMMIT applied is unknown: never safe to retry blindly.
            raise NodeUnavailableError(
                f"{node.name}: connection lost during {sql}: {exc}", sent=True
            ) from exc
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)

    async def close_session(self, session: Session) -> None:
        """The client went away: roll back whatever it left open."""
        session.closed = True
        for tx in list(session.transactions.values()):
            async with tx.lock:
                if tx.closed:
                    continue
                tx.closed = True
                session.transactions.pop(tx.id, None)
                with contextlib.suppress(Exception):  # a failed rollback drops the connection
                    await self._end(tx.node, tx.backend, "ROLLBACK")

