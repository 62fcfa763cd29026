"""A transaction over several shards, as data: one branch (a pinned backend transaction) per
shard its statements reached, opened when the first of them arrives. Carried out by
router/engine/distributed.py; committed by router/engine/twophase.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from protocol.messages import Isolation
from router.backend.pool import Backend
from router.ha.topology import NodeState

__all__ = ["Branch", "DistributedTransaction", "begin_sql"]

_ISOLATION = {
    Isolation.READ_COMMITTED: "READ COMMITTED",
    Isolation.REPEATABLE_READ: "REPEATABLE READ",
    Isolation.SERIALIZABLE: "SERIALIZABLE",
}


def begin_sql(isolation: Isolation | None, read_only: bool) -> str:
    """The BEGIN that opens a transaction (each branch of one) as its client asked."""
    sql = "BEGIN"
    if isolation is not None:
        sql += f" ISOLATION LEVEL {_ISOLATION[isolation]}"
    if read_only:
        sql += " READ ONLY"
    return sql


@dataclass(slots=True, eq=False)
class Branch:
    """One shard's part: a transaction on a pooled connection to that shard's primary."""

    shard: str
    node: NodeState
    backend: Backend
    wrote: bool = False
    done: bool = False  # committed, prepared, or rolled back: its backend is no longer pinned


@dataclass(slots=True, eq=False)
class DistributedTransaction:
    """Begun without a shard: its statements go where their keys send them."""

    id: int
    begin_sql: str  # "BEGIN" with the isolation and READ ONLY its client asked for
    read_only: bool = False
    branches: dict[str, Branch] = field(default_factory=dict)  # in the order they opened
    failed: bool = False
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle_timer: asyncio.TimerHandle | None = None

    @property
    def serializable(self) -> bool:
        return "SERIALIZABLE" in self.begin_sql

    def stop_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
