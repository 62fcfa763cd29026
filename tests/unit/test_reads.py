"""The read decision (router/core/reads.py) on plain node views: no topology, pool or socket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from router.core.reads import (
    AwaitReplay,
    OnPrimary,
    OnReplica,
    ReadPolicy,
    choose_replica,
    plan_read,
)
from router.types import UNKNOWN_LSN, Consistency


@dataclass
class Node:
    name: str
    available: bool = True
    lag_bytes: int | None = 0
    replay_lsn: int | None = 1000
    in_flight: int = 0


@dataclass
class Shard:
    primary: Node
    replicas: Sequence[Node] = field(default_factory=list)


POLICY = ReadPolicy(max_lag_bytes=100, wait_for_replay=True)
NO_WAIT = ReadPolicy(max_lag_bytes=100, wait_for_replay=False)


def shard(*replicas: Node) -> Shard:
    return Shard(Node("p", replay_lsn=5000), list(replicas))


# ---- choose_replica ------------------------------------------------------------------------


def test_the_least_busy_fresh_replica_that_is_up() -> None:
    nodes = [Node("a", in_flight=3), Node("b", in_flight=1), Node("c", in_flight=0)]
    nodes[2].available = False
    chosen = choose_replica(nodes, max_lag_bytes=100)
    assert chosen is not None and chosen.name == "b"


def test_a_lagging_or_unmeasured_replica_is_skipped() -> None:
    nodes = [Node("a", lag_bytes=5000), Node("b", lag_bytes=10, in_flight=9)]
    chosen = choose_replica(nodes, max_lag_bytes=100)
    assert chosen is not None and chosen.name == "b"
    assert choose_replica([Node("a", lag_bytes=5000)], max_lag_bytes=100) is None
    assert choose_replica([Node("a", lag_bytes=None)], max_lag_bytes=100) is None


def test_a_token_needs_a_replica_replayed_past_it() -> None:
    nodes = [Node("a", replay_lsn=900), Node("b", replay_lsn=1200, in_flight=5)]
    chosen = choose_replica(nodes, 100, min_lsn=1000)
    assert chosen is not None and chosen.name == "b"
    assert choose_replica(nodes, 100, min_lsn=5000) is None
    assert choose_replica([Node("a", replay_lsn=None)], 100, min_lsn=1) is None


def test_equally_idle_replicas_take_turns() -> None:
    nodes = [Node("a"), Node("b"), Node("c")]
    picked = [choose_replica(nodes, 100, None, turn) for turn in range(6)]
    assert [n.name for n in picked if n is not None] == ["a", "b", "c", "a", "b", "c"]


# ---- plan_read -----------------------------------------------------------------------------


@pytest.mark.parametrize("min_lsn", [None, 10, UNKNOWN_LSN])
def test_strong_reads_go_to_the_primary_whatever_the_replicas(min_lsn: int | None) -> None:
    view = shard(Node("r1"))
    assert plan_read(view, min_lsn, Consistency.STRONG, POLICY) == OnPrimary(view.primary)


@pytest.mark.parametrize("consistency", [Consistency.SESSION, Consistency.REPLICA])
def test_a_read_with_no_session_writes_goes_to_a_fresh_replica(
    consistency: Consistency,
) -> None:
    r1, r2 = Node("r1", in_flight=2), Node("r2", in_flight=1)
    assert plan_read(shard(r1, r2), None, consistency, POLICY) == OnReplica(r2)


def test_a_session_read_goes_to_a_replica_that_has_its_writes() -> None:
    behind, past = Node("r1", replay_lsn=900), Node("r2", replay_lsn=1500, in_flight=7)
    assert plan_read(shard(behind, past), 1000, Consistency.SESSION, POLICY) == OnReplica(past)


def test_a_session_read_waits_for_a_fresh_replica_to_catch_up() -> None:
    behind = Node("r1", replay_lsn=900)
    plan = plan_read(shard(behind), 1000, Consistency.SESSION, POLICY)
    assert plan == AwaitReplay(behind, 1000)


def test_a_session_read_goes_to_the_primary_when_waiting_cannot_help() -> None:
    behind = Node("r1", replay_lsn=900)
    view = shard(behind)
    # The router is told not to wait (read_your_writes_wait_ms = 0).
    assert plan_read(view, 1000, Consistency.SESSION, NO_WAIT) == OnPrimary(view.primary)
    # The session's write position is unknown: no replica will ever be past it.
    assert plan_read(view, UNKNOWN_LSN, Consistency.SESSION, POLICY) == OnPrimary(view.primary)
    # No replica is fresh enough to wait for: lagging, unmeasured, or down.
    for stale in (Node("r", replay_lsn=900, lag_bytes=10_000),
                  Node("r", replay_lsn=900, lag_bytes=None),
                  Node("r", replay_lsn=900, available=False)):
        only = shard(stale)
        assert plan_read(only, 1000, Consistency.SESSION, POLICY) == OnPrimary(only.primary)


def test_a_replica_read_ignores_the_sessions_writes() -> None:
    behind = Node("r1", replay_lsn=900)
    assert plan_read(shard(behind), 1000, Consistency.REPLICA, POLICY) == OnReplica(behind)


def test_with_no_replica_up_every_read_goes_to_the_primary() -> None:
    for view in (shard(), shard(Node("r1", available=False))):
        for consistency in Consistency:
            assert plan_read(view, None, consistency, POLICY) == OnPrimary(view.primary)


def test_the_turn_rotates_the_replica_chosen() -> None:
    view = shard(Node("r1"), Node("r2"))
    chosen = {plan_read(view, None, Consistency.SESSION, POLICY, turn).node.name
              for turn in range(4)}
    assert chosen == {"r1", "r2"}


def test_the_primary_is_never_chosen_as_a_replica() -> None:
    """The primary's own lag is 0 and its position is the newest: it is still not a replica."""
    view = Shard(Node("p", replay_lsn=10**9), [Node("r1", lag_bytes=None)])
    assert plan_read(view, 1000, Consistency.SESSION, POLICY) == OnPrimary(view.primary)
