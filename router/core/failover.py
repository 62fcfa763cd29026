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
Two nodes whose snapshots differ (a heartbeat in flight) can still name different promoters.
The promotion itself happens once because the promoter (router/ha/promoter.py) takes a lock on
every reachable replica of the shard, in name order, and then asks `decide_promotion` on a
fresh snapshot of the shard's nodes taken under those locks: a second promoter finds a node
already out of recovery and adopts it instead of promoting another. The new primary is then
agreed by its timeline (router/core/primary.py).

After a promotion the shard's other standbys still stream from the dead old primary:
`plan_followers` says, per standby, whether the promoter re-points it at the new primary
(router/core/conninfo.py rewrites its primary_conninfo) or why it cannot. One it could not
re-point then is found later from what it says (router/core/reconcile.py), not remembered.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from protocol.heartbeat import ReportedHealth
from router.core.membership import MemberView

__all__ = [
    "Adopt",
    "Decision",
    "FailoverView",
    "FollowAction",
    "FollowerPlan",
    "GiveUp",
    "NoAction",
    "NoActionReason",
    "Promote",
    "PromoteNow",
    "PromotionStep",
    "ReplicaView",
    "ShardNodeState",
    "decide_promotion",
    "plan_failover",
    "plan_followers",
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
                f"(LSN {self.replica_lsn})")


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
                        f"< {view.down_after_seconds:.2f}s")
    majority = view.cluster_size // 2 + 1
    alive = sorted(view.members)
    if len(alive) < majority:
        reason = NoActionReason.ISOLATED if len(alive) == 1 else NoActionReason.NO_QUORUM
        return NoAction(shard, reason, f"{len(alive)} of {view.cluster_size} router nodes "
                                       f"alive, {majority} needed")
    voters = tuple(name for name in alive if _sees_down(view.members[name], shard, primary))
    if len(voters) < majority:
        return NoAction(shard, NoActionReason.PRIMARY_SEEN_BY_MAJORITY,
                        f"{len(voters)} of {view.cluster_size} router nodes see {primary} "
                        f"down, {majority} needed")
    candidates = [(-r.replay_lsn, r.name) for r in view.replicas
                  if r.health is ReportedHealth.UP and r.in_recovery
                  and r.replay_lsn is not None]
    if not candidates:
        return NoAction(shard, NoActionReason.NO_HEALTHY_REPLICA,
                        f"no replica of {shard} is up, replaying and measured")
    negated_lsn, replica = min(candidates)  # the most advanced; the lowest name on a tie
    return Promote(shard, voters[0], replica, -negated_lsn, voters)


def _sees_down(member: MemberView, shard: str, primary: str) -> bool:
    # A node that names another primary for the shard (it has seen a failover this node has
    # not) is not agreeing about this one.
    return (member.primaries.get(shard) == primary
            and member.nodes.get(primary) is ReportedHealth.DOWN)



# ---- the promoter's last check, under its locks ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardNodeState:
    """One node of the shard as the promoter sees it, just before promoting."""

    name: str
    in_recovery: bool | None  # None: it did not answer
    received_lsn: int | None  # a standby's WAL received (pg_last_wal_receive_lsn), bytes
    replayed_lsn: int | None  # a standby's WAL replayed, or a writable node's current position
    timeline: int | None  # a writable node's timeline

    @property
    def advanced(self) -> int:
        """How far its data goes once promoted: a standby replays all it received first."""
        return max(self.received_lsn or 0, self.replayed_lsn or 0)


@dataclass(frozen=True, slots=True)
class PromoteNow:
    replica: str
    lsn: int
    reason: str


@dataclass(frozen=True, slots=True)
class Adopt:
    """Another node is already out of recovery: someone promoted it (another router, a
    person). Promote nothing; the monitor follows it by its timeline."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Nothing to promote now (the primary answers again, or no replica is reachable)."""

    reason: str


PromotionStep = PromoteNow | Adopt | GiveUp


def decide_promotion(old_primary: str, nodes: Sequence[ShardNodeState],
                     stale: Set[str] = frozenset(), timeline_floor: int = 0) -> PromotionStep:
    """Idempotent: the same snapshot gives the same step, and after a promotion every snapshot
    gives Adopt, so a promoter that runs twice, or two that run one after the other, promote
    once. The replica is the most advanced by WAL received (then replayed; the lowest name on
    a tie), which may differ from the plan's choice on replay alone: the data decides.

    A writable node that is `stale` (fenced by the monitor) or on a timeline older than
    `timeline_floor` (router/core/primary.py) is an old primary back, not a promotion to
    adopt: adopting one re-pointed the standbys at it, which cannot follow an older timeline,
    and promoted nothing (found with a router restarted after a failover)."""
    old = next((n for n in nodes if n.name == old_primary), None)
    if old is not None and old.in_recovery is False:
        return GiveUp(f"{old_primary} answers and is writable again: no failover")
    promoted = sorted((n for n in nodes if n.name != old_primary and n.in_recovery is False
                       and n.name not in stale and (n.timeline or 0) >= timeline_floor),
                      key=lambda n: (-(n.timeline or 0), n.name))
    if promoted:
        first = promoted[0]
        return Adopt(first.name, f"{first.name} is already out of recovery (timeline "
                                 f"{first.timeline}): promoted before, nothing to do")
    standbys = [n for n in nodes if n.name != old_primary and n.in_recovery is True]
    if not standbys:
        return GiveUp(f"no replica of {old_primary}'s shard answers")
    best = min(standbys, key=lambda n: (-n.advanced, n.name))
    return PromoteNow(best.name, best.advanced,
                      f"{best.name} is the most advanced replica (WAL to {best.advanced})")


# ---- after the promotion: the shard's other standbys ------------------------------------------


class FollowAction(enum.Enum):
    REPOINT = "repoint"  # a standby at or behind the promotion point: it can follow
    CANNOT_FOLLOW = "cannot_follow"  # it has WAL past the promotion point: pg_rewind first
    UNREACHABLE = "unreachable"  # it did not answer the promoter: re-point it by hand
    NOT_A_STANDBY = "not_a_standby"  # writable: fenced by the monitors, rejoined by a person


@dataclass(frozen=True, slots=True)
class FollowerPlan:
    replica: str
    action: FollowAction
    reason: str


def plan_followers(old_primary: str, new_primary: str, promotion_lsn: int | None,
                   nodes: Sequence[ShardNodeState]) -> tuple[FollowerPlan, ...]:
    """What becomes of each node of the shard other than the old and the new primary, by
    name. `promotion_lsn` is where the new primary's timeline forks (None: not known, as when
    the promoter adopts someone else's promotion; then every standby is re-pointed, and one
    that cannot follow says so in its own log). A standby whose WAL goes past the fork cannot
    stream the new timeline: PostgreSQL refuses it, so it is left alone and named."""
    plans: list[FollowerPlan] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name in (old_primary, new_primary):
            continue
        if node.in_recovery is None:
            plans.append(FollowerPlan(node.name, FollowAction.UNREACHABLE,
                                      f"{node.name} did not answer: it still streams from "
                                      f"{old_primary}, if at all; re-point it at {new_primary}"))
        elif node.in_recovery is False:
            plans.append(FollowerPlan(node.name, FollowAction.NOT_A_STANDBY,
                                      f"{node.name} is writable, not a standby"))
        elif promotion_lsn is not None and node.advanced > promotion_lsn:
            plans.append(FollowerPlan(
                node.name, FollowAction.CANNOT_FOLLOW,
                f"{node.name} has WAL to {node.advanced}, past {new_primary}'s promotion at "
                f"{promotion_lsn}: it needs pg_rewind (georoute cluster rejoin {node.name})"))
        else:
            at = "" if promotion_lsn is None else f" (WAL to {node.advanced} <= {promotion_lsn})"
            plans.append(FollowerPlan(node.name, FollowAction.REPOINT,
                                      f"{node.name} is a standby{at}: it follows {new_primary}"))
    return tuple(plans)
