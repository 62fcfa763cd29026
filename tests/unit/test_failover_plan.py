"""plan_failover: promote exactly when a majority agrees, by a node and to a replica that every
node with the same snapshot names; otherwise no action, with the reason."""

from __future__ import annotations

from dataclasses import replace

from protocol.heartbeat import ReportedHealth
from router.core.failover import (
    FailoverView,
    NoAction,
    NoActionReason,
    Promote,
    ReplicaView,
    plan_failover,
)
from router.core.membership import MemberView

UP, SUSPECT, DOWN = ReportedHealth.UP, ReportedHealth.SUSPECT, ReportedHealth.DOWN
PRIMARIES = {"europe": "europe-primary"}


def sees(primary_health: ReportedHealth, primary: str = "europe-primary") -> MemberView:
    return MemberView({"europe-primary": primary_health}, {"europe": primary})


REPLICAS = (
    ReplicaView("europe-replica1", UP, True, 1000),
    ReplicaView("europe-replica2", UP, True, 1500),
)


def view(members: dict[str, MemberView], self_name: str = "r2", size: int = 3,
         **changes: object) -> FailoverView:
    base = FailoverView(self_name=self_name, cluster_size=size, members=members, shard="europe",
                        primary="europe-primary", down_for_seconds=3.0, down_after_seconds=1.0,
                        replicas=REPLICAS)
    return replace(base, **changes)  # type: ignore[arg-type]


def no_action(decision: object, reason: NoActionReason) -> None:
    assert isinstance(decision, NoAction), decision
    assert decision.reason is reason, decision


def test_a_majority_promotes_the_most_advanced_replica_by_its_lowest_named_node() -> None:
    members = {"r2": sees(DOWN), "r3": sees(DOWN)}  # r1 is not alive here
    decision = plan_failover(view(members))
    assert decision == Promote("europe", "r2", "europe-replica2", 1500, ("r2", "r3"))
    assert "europe-replica2" in decision.reason
    # r3, with the same snapshot, names the same promoter and replica.
    assert plan_failover(view(members, self_name="r3")) == decision


def test_every_node_names_the_same_promoter_whatever_its_own_name() -> None:
    members = {name: sees(DOWN) for name in ("r1", "r2", "r3", "r4", "r5")}
    decisions = {plan_failover(view(members, self_name=n, size=5)) for n in members}
    assert decisions == {Promote("europe", "r1", "europe-replica2", 1500,
                                 ("r1", "r2", "r3", "r4", "r5"))}


def test_an_isolated_node_never_promotes() -> None:
    no_action(plan_failover(view({"r2": sees(DOWN)})), NoActionReason.ISOLATED)
    members = {n: sees(DOWN) for n in ("r1", "r2")}
    no_action(plan_failover(view(members, self_name="r1", size=5)), NoActionReason.NO_QUORUM)


def test_no_promotion_while_a_majority_still_sees_the_primary() -> None:
    members = {"r1": sees(UP), "r2": sees(DOWN), "r3": sees(SUSPECT)}
    no_action(plan_failover(view(members)), NoActionReason.PRIMARY_SEEN_BY_MAJORITY)
    # A peer that names another primary (it has seen a failover) does not vote for this one.
    members = {"r2": sees(DOWN), "r3": MemberView({"europe-primary": DOWN},
                                                  {"europe": "europe-replica1"})}
    no_action(plan_failover(view(members)), NoActionReason.PRIMARY_SEEN_BY_MAJORITY)


def test_nothing_while_the_primary_is_up_here_or_not_down_long_enough() -> None:
    members = {"r1": sees(DOWN), "r2": sees(SUSPECT), "r3": sees(DOWN)}
    no_action(plan_failover(view(members)), NoActionReason.PRIMARY_UP)
    members["r2"] = sees(DOWN)
    decision = plan_failover(view(members, down_for_seconds=0.5))
    no_action(decision, NoActionReason.NOT_DOWN_LONG_ENOUGH)


def test_only_an_up_replaying_measured_replica_is_promoted() -> None:
    members = {"r2": sees(DOWN), "r3": sees(DOWN)}
    unfit = (
        ReplicaView("europe-replica1", SUSPECT, True, 9000),  # not surely up
        ReplicaView("europe-replica2", UP, False, 9000),  # already a primary: not a standby
        ReplicaView("europe-replica3", UP, True, None),  # lag unknown
        ReplicaView("europe-replica4", DOWN, True, 9000),
    )
    no_action(plan_failover(view(members, replicas=unfit)), NoActionReason.NO_HEALTHY_REPLICA)
    tied = (ReplicaView("europe-replica9", UP, True, 700),
            ReplicaView("europe-replica3", UP, True, 700))
    decision = plan_failover(view(members, replicas=unfit + tied))
    assert isinstance(decision, Promote) and decision.replica == "europe-replica3"
