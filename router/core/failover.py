"""The failover decision for one shard, as a pure function of one snapshot (Patroni's shape:
a decision per cycle, returned as a value with its reason, carried out and logged by the
caller). Nothing here talks to a database or a socket; nothing here promotes.

`plan_failover(view)` answers: promote which replica, by which router node, or nothing and
why. Every router node runs it on its own snapshot; the rules make them agree:
- only a node that hears a majority of the configured router nodes (itself included) may
  decide, so a node cut off from its peers never promotes;
- the primary counts as down only when a majority of them, each naming the same node as the
  shard's primary, report it DOWN in their newest heartbeat (or in this node's own view);
- the promoter is the lowest-named node among those that agree, and the replica is the most
  advanced (highest replayed LSN; the lowest name on a tie) that this node sees UP and still
  replaying, so nodes that share a snapshot name the same pair.
Two nodes whose snapshots differ (a heartbeat in flight) can still name different promoters:
making the promotion itself happen once (the promoter's checks on the replicas, an agreed
record of the new primary) is the job of the part that acts, not built yet (README).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.heartbeat import ReportedHealth
from router.core.membership import MemberView

__all__ = [
    "Decision",
    "FailoverView",
    "NoAction",
    "NoActionReason",
    "Promote",
    "ReplicaView",
    "plan_failover",
]


class NoActionReason(enum.Enum):
    PRIMARY_UP = "primary_up"  # this node does not see the primary down
    NOT_DOWN_LONG_ENOUGH = "not_down_long_enough"  # down here for less than down_after
    ISOLATED = "isolated"  # this node hears none of its peers
    NO_QUORUM = "no_quorum"  # it hears some, but fewer than a majority are alive
    PRIMARY_SEEN_BY_MAJORITY = "primary_seen_by_majority"  # fewer than a majority see it down
    NO_HEALTHY_REPLICA = "no_healthy_replica"


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica as this node's monitor sees it."""

    name: str
    health: ReportedHealth
    in_recovery: bool  # still a standby (False: it was promoted, or is no replica at all)
    replay_lsn: int | None  # WAL replayed, in bytes from 0/0; None when not measured


@dataclass(frozen=True, slots=True)
class FailoverView:
    self_name: str
    cluster_size: int  # configured router nodes, this one included
    members: Mapping[str, MemberView]  # this node and its ALIVE peers (Membership)
    shard: str
    primary: str  # the shard's primary as this node knows it
    down_for_seconds: float  # how long this node has seen that primary DOWN (0: it does not)
    down_after_seconds: float  # [failover] down_after_seconds
    replicas: tuple[ReplicaView, ...]


@dataclass(frozen=True, slots=True)
class Promote:
    shard: str
    promoter: str  # the router node that runs pg_promote(); the others wait for it
    replica: str
    replica_lsn: int
    voters: tuple[str, ...]  # the router nodes that agree the primary is down, sorted

    @property
    def reason(self) -> str:
        return (f"{len(self.voters)} router nodes ({', '.join(self.voters)}) see {self.shard}'s "
                f"primary down; {self.replica} is the most advanced replica "
                f"(LSN {self.replica_lsn})")  # fmt: skip


@dataclass(frozen=True, slots=True)
class NoAction:
    shard: str
    reason: NoActionReason
    detail: str


Decision = Promote | NoAction


def plan_failover(view: FailoverView) -> Decision:
    shard, primary = view.shard, view.primary
    own = view.members.get(view.self_name)
    if own is None or own.nodes.get(primary) is not ReportedHealth.DOWN:
        return NoAction(shard, NoActionReason.PRIMARY_UP, f"{primary} is not down here")
    if view.down_for_seconds < view.down_after_seconds:
        return NoAction(shard, NoActionReason.NOT_DOWN_LONG_ENOUGH,
                        f"{primary} down for {view.down_for_seconds:.2f}s here, "
                        f"< {view.down_after_seconds:.2f}s")  # fmt: skip
    majority = view.cluster_size // 2 + 1
    alive = sorted(view.members)
    if len(alive) < majority:
        reason = NoActionReason.ISOLATED if len(alive) == 1 else NoActionReason.NO_QUORUM
        return NoAction(shard, reason, f"{len(alive)} of {view.cluster_size} router nodes "
                                       f"alive, {majority} needed")  # fmt: skip
    voters = tuple(name for name in alive if _sees_down(view.members[name], shard, primary))
    if len(voters) < majority:
        return NoAction(shard, NoActionReason.PRIMARY_SEEN_BY_MAJORITY,
                        f"{len(voters)} of {view.cluster_size} router nodes see {primary} "
                        f"down, {majority} needed")  # fmt: skip
    candidates = [(-r.replay_lsn, r.name) for r in view.replicas
                  if r.health is ReportedHealth.UP and r.in_recovery
                  and r.replay_lsn is not None]  # fmt: skip
    if not candidates:
        return NoAction(shard, NoActionReason.NO_HEALTHY_REPLICA,
                        f"no replica of {shard} is up, replaying and measured")  # fmt: skip
    negated_lsn, replica = min(candidates)  # the most advanced; the lowest name on a tie
    return Promote(shard, voters[0], replica, -negated_lsn, voters)


def _sees_down(member: MemberView, shard: str, primary: str) -> bool:
    # A node that names another primary for the shard (it has seen a failover this node has
    # not) is not agreeing about this one.
    return (member.primaries.get(shard) == primary
            and member.nodes.get(primary) is ReportedHealth.DOWN)  # fmt: skip

