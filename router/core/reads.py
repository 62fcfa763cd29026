"""The read decision, written once: which node of one shard serves a read, and what that node
must have replayed first.

Pure: `plan_read` reads a snapshot of a shard's nodes (any objects with the `NodeView`
attributes: the live `NodeState`s, or plain values in a test) and returns a `ReadPlan`, which
its callers carry out: the pipelined fast path and the pooled path of a one-shard read
(router/engine/executor.py) and each shard's part of a cross-shard read
(router/engine/scatter.py). Writes and transactions always go to the shard's primary and do
not ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from router.types import UNKNOWN_LSN, Consistency

__all__ = [
    "AwaitReplay",
    "NodeView",
    "OnPrimary",
    "OnReplica",
    "ReadPlan",
    "ReadPolicy",
    "ShardView",
    "choose_replica",
    "plan_read",
]


class NodeView(Protocol):
    """What the read decision needs to know of a node (a snapshot; see ha/topology.py)."""

    @property
    def name(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def lag_bytes(self) -> int | None: ...
    @property
    def replay_lsn(self) -> int | None: ...
    @property
    def in_flight(self) -> int: ...


N = TypeVar("N", bound=NodeView)
N_co = TypeVar("N_co", bound=NodeView, covariant=True)


class ShardView(Protocol[N_co]):
    """One shard's nodes: the primary (where its writes go) and its replicas."""

    @property
    def primary(self) -> N_co: ...
    @property
    def replicas(self) -> Sequence[N_co]: ...


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """The router's settings the decision reads (router.toml)."""

    max_lag_bytes: int  # router.max_replica_lag_bytes: a replica further behind serves nothing
    wait_for_replay: bool  # router.read_your_writes_wait_ms > 0


@dataclass(frozen=True, slots=True)
class OnPrimary(Generic[N]):
    """Read on the shard's primary: asked for (strong), or no replica will do."""

    node: N


@dataclass(frozen=True, slots=True)
class OnReplica(Generic[N]):
    """Read on `node`, a replica that is up, fresh enough and past the session's writes."""

    node: N


@dataclass(frozen=True, slots=True)
class AwaitReplay(Generic[N]):
    """No replica has replayed the session's writes yet: wait a bounded few milliseconds
    (router.read_your_writes_wait_ms) for `node`, a fresh replica, to replay past `min_lsn`,
    and read there; on the primary if it does not in time."""

    node: N
    min_lsn: int


ReadPlan = OnPrimary[N] | OnReplica[N] | AwaitReplay[N]


def choose_replica(
    replicas: Sequence[N], max_lag_bytes: int, min_lsn: int | None = None, start: int = 0
) -> N | None:
    """The least-busy replica that is up, fresh enough, and (with a token) past `min_lsn`.
    Ties go to the first such one from `start` on: callers turn `start`, so equally idle
    replicas take turns rather than the first one taking every read."""
    best: N | None = None
    count = len(replicas)
    if count > 1 and start % count:
        first = start % count
        replicas = [*replicas[first:], *replicas[:first]]
    for node in replicas:
        if not node.available or node.lag_bytes is None or node.lag_bytes > max_lag_bytes:
            continue
        if min_lsn is not None and (node.replay_lsn is None or node.replay_lsn < min_lsn):
            continue
        if best is None or node.in_flight < best.in_flight:
            best = node
    return best


def plan_read(
    view: ShardView[N], min_lsn: int | None, consistency: Consistency, policy: ReadPolicy,
    turn: int = 0,
) -> ReadPlan[N]:
    """Where a read of one shard runs. `min_lsn` is the WAL position the session has written
    up to on this shard (its own writes and the client's token; None: none), which only
    `Consistency.SESSION` reads must see; `turn` rotates equally idle replicas.

    - STRONG: the primary.
    - SESSION and REPLICA: the least-busy fresh replica (for SESSION, one past `min_lsn`);
      with none, SESSION waits for a fresh replica to replay past `min_lsn` when the policy
      allows and the position is known, else the primary, which always has the writes.
    """
    if consistency is Consistency.STRONG:
        return OnPrimary(view.primary)
    wanted = min_lsn if consistency is Consistency.SESSION else None
    replica = choose_replica(view.replicas, policy.max_lag_bytes, wanted, turn)
    if replica is not None:
        return OnReplica(replica)
    if wanted is None or wanted >= UNKNOWN_LSN or not policy.wait_for_replay:
        return OnPrimary(view.primary)
    fresh = choose_replica(view.replicas, policy.max_lag_bytes, None, turn)
    if fresh is None:
        return OnPrimary(view.primary)
    return AwaitReplay(fresh, wanted)
