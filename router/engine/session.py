"""Per-client-connection state: the session's read-your-writes positions and its open
transactions, each pinned to one backend connection on one shard's primary, or spanning
several shards (router/engine/branches.py)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from router.backend.pool import Backend
from router.engine.branches import DistributedTransaction
from router.engine.errors import (
    TooManyTransactions,
    TransactionAborted,
    TransactionError,
    UnknownTransaction,
)
from router.ha.topology import NodeState

__all__ = ["Session", "Transaction", "TransactionError"]

MAX_OPEN_TRANSACTIONS = 64


@dataclass(slots=True, eq=False)
class Transaction:
    id: int
    shard: str
    node: NodeState
    backend: Backend
    wrote: bool = False
    failed: bool = False
    read_only: bool = False  # begun READ ONLY by its client
    closed: bool = False  # committed or rolled back: its connection is back in the pool
    # Statements of one transaction run one at a time, in arrival order.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Ends it when its client sends nothing for router.transaction_idle_timeout_seconds.
    idle_timer: asyncio.TimerHandle | None = None

    def stop_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


@dataclass(slots=True, eq=False)
class Session:
    client_name: str = ""
    # {shard: WAL position} this session has written up to (merged with the client's token).
    written: dict[str, int] = field(default_factory=dict)
    transactions: dict[int, Transaction | DistributedTransaction] = field(default_factory=dict)
    closed: bool = False  # the client connection is gone
    opening: int = 0  # begins still waiting for a connection: they count against the limit
    # Transactions the router rolled back on its own (idle too long, or a Commit after a
    # failed statement): id -> why. Their statements and Commit are told why; a Rollback of
    # one answers ROLLBACK, as PostgreSQL answers a ROLLBACK of what is already over.
    expired: dict[int, str] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def note_write(self, shard: str, lsn: int) -> None:
        if lsn > self.written.get(shard, -1):
            self.written[shard] = lsn

    def min_lsn(self, shard: str, client_token: dict[str, int] | None) -> int | None:
        mine = self.written.get(shard)
        theirs = client_token.get(shard) if client_token else None
        if mine is None:
            return theirs
        if theirs is None:
            return mine
        return max(mine, theirs)

    def check_room(self, limit: int) -> None:
        if len(self.transactions) + self.opening >= min(limit, MAX_OPEN_TRANSACTIONS):
            raise TooManyTransactions(
                f"at most {min(limit, MAX_OPEN_TRANSACTIONS)} open transactions per connection",
            )

    def open(self, shard: str, node: NodeState, backend: Backend) -> Transaction:
        tx = Transaction(next(self._ids), shard, node, backend)
        self.transactions[tx.id] = tx
        return tx

    def open_distributed(self, begin_sql: str, read_only: bool) -> DistributedTransaction:
        tx = DistributedTransaction(next(self._ids), begin_sql, read_only)
        self.transactions[tx.id] = tx
        return tx

    def get(self, tx_id: int) -> Transaction | DistributedTransaction:
        tx = self.transactions.get(tx_id)
        if tx is None or tx.closed:
            why = self.expired.get(tx_id)
            if why is not None:
                raise TransactionAborted(why)
            raise UnknownTransaction(f"no open transaction {tx_id}")
        return tx

    def rolled_back(self, tx_id: int) -> bool:
        """The router rolled `tx_id` back on its own (see `expired`)."""
        return tx_id in self.expired and tx_id not in self.transactions

    def expire(self, tx: Transaction | DistributedTransaction, why: str) -> None:
        """`tx` was rolled back by the router: later requests for it are told why."""
        self.transactions.pop(tx.id, None)
        if len(self.expired) >= MAX_OPEN_TRANSACTIONS:  # a few recent ones are enough
            self.expired.pop(next(iter(self.expired)))
        self.expired[tx.id] = why
