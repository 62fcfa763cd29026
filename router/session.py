"""Per-client-connection state: the session's read-your-writes positions and its open
transactions, each pinned to one backend connection on one shard's primary."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from router.pool import Backend
from router.topology import NodeState

__all__ = ["Session", "Transaction", "TransactionError"]

MAX_OPEN_TRANSACTIONS = 64


class TransactionError(Exception):
    """Unknown or failed transaction. `code_name` picks the protocol error code."""

    def __init__(self, code_name: str, message: str) -> None:
        super().__init__(message)
        self.code_name = code_name


@dataclass(slots=True, eq=False)
class Transaction:
    id: int
    shard: str
    node: NodeState
    backend: Backend
    wrote: bool = False
    failed: bool = False
    closed: bool = False  # committed or rolled back: its connection is back in the pool
    # Statements of one transaction run one at a time, in arrival order.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True, eq=False)
class Session:
    client_name: str = ""
    # {shard: WAL position} this session has written up to (merged with the client's token).
    written: dict[str, int] = field(default_factory=dict)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    closed: bool = False  # the client connection is gone
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
        if len(self.transactions) >= min(limit, MAX_OPEN_TRANSACTIONS):
            raise TransactionError(
                "TOO_MANY_TRANSACTIONS",
                f"at most {min(limit, MAX_OPEN_TRANSACTIONS)} open transactions per connection",
            )

    def open(self, shard: str, node: NodeState, backend: Backend) -> Transaction:
        tx = Transaction(next(self._ids), shard, node, backend)
        self.transactions[tx.id] = tx
        return tx

    def get(self, tx_id: int) -> Transaction:
        tx = self.transactions.get(tx_id)
        if tx is None or tx.closed:
            raise TransactionError("UNKNOWN_TRANSACTION", f"no open transaction {tx_id}")
        return tx
