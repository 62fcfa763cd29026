"""External failover mode in the monitor's rounds (router/ha/monitor.py), over stand-in probe
connections: the shard's primary moves to the node that says it is no standby once it is
confirmed, the old one stays out of reads, and in mode "off" the same answers move nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.backend.wal import NODE_STATE_SQL
from router.config import load_config
from router.core.health import NodeHealth
from router.ha.monitor import FOLLOW_CONFIRM_ROUNDS, LagMonitor
from router.ha.topology import NodeState, ShardState, Topology
from router.types import Role

REPO = Path(__file__).resolve().parents[2]


class ProbeConn:
    """Answers from a table: node name -> (in_recovery, lsn) or an exception to raise."""

    def __init__(self, node: str, answers: dict[str, Any]) -> None:
        self.node, self.answers = node, answers

    async def fetchrow(self, sql: str, timeout: float) -> Any:  # noqa: ASYNC109 (asyncpg's)
        answer = self.answers[self.node]
        if isinstance(answer, BaseException):
            raise answer
        assert sql == NODE_STATE_SQL
        in_recovery, lsn = answer  # the timeline (a writable node's) is 1 throughout
        return (in_recovery, lsn, None if in_recovery else 1)

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass


def monitor_for(monkeypatch: pytest.MonkeyPatch, mode: str, answers: dict[str, Any],
                topology: Topology | None = None) -> tuple[LagMonitor, ShardState]:
    config = load_config(REPO / "router.toml")
    config = replace(config, failover=replace(config.failover, mode=mode))
    topology = topology or Topology.from_config(config)
    monitor = LagMonitor(config, topology)

    async def conn(node: NodeState) -> ProbeConn:
        return ProbeConn(node.name, answers)

    monkeypatch.setattr(monitor, "_conn", conn)
    return monitor, topology.shards["europe"]


async def test_follows_a_promoted_replica_and_keeps_the_stale_one_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: dict[str, Any] = {"europe-1": (False, 5_000), "europe-2": (True, 4_000)}
    monitor, shard = monitor_for(monkeypatch, "external", answers)
    await monitor.measure(shard)
    assert shard.replicas[0].lag_bytes == 1_000
    assert str(shard.primary_decision).startswith("primary_writable")
    old_primary, replica = shard.primary, shard.replicas[0]
    old_reader = shard.lsn

    answers["europe-1"] = ConnectionRefusedError("gone")
    answers["europe-2"] = (False, 4_100)  # promoted by someone else
    for _ in range(FOLLOW_CONFIRM_ROUNDS - 1):
        await monitor.measure(shard)
        assert shard.primary is old_primary
        assert str(shard.primary_decision).startswith("not_confirmed")
    await monitor.measure(shard)
    assert shard.primary is replica and replica.role is Role.PRIMARY
    assert shard.replicas == [old_primary] and old_primary.role is Role.REPLICA
    assert shard.lsn is not old_reader and shard.lsn.name == "europe-2"
    assert str(shard.primary_decision).startswith("follow")

    answers["europe-1"] = (False, 5_000)  # back, writable, on the old timeline
    for _ in range(FOLLOW_CONFIRM_ROUNDS + 2):
        await monitor.measure(shard)
        assert shard.primary is replica  # a split brain never moves the primary back
        assert old_primary.lag_bytes is None  # not replaying: no reads
    assert str(shard.primary_decision).startswith("several_writable")

    answers["europe-1"] = (True, 4_100)  # rejoined as a standby: reads may come back
    await monitor.measure(shard)
    assert shard.primary is replica
    assert old_primary.lag_bytes == 0


async def test_mode_off_never_moves_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, Any] = {"europe-1": ConnectionRefusedError("gone"),
                               "europe-2": (False, 4_100)}
    monitor, shard = monitor_for(monkeypatch, "off", answers)
    for _ in range(FOLLOW_CONFIRM_ROUNDS + 2):
        await monitor.measure(shard)
    assert shard.primary.name == "europe-1" and shard.primary_decision is None
    assert shard.replicas[0].role is Role.REPLICA


async def test_every_node_says_what_it_is_and_a_standby_cannot_stay_primary_in_mode_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: dict[str, Any] = {"europe-1": (False, 5_000), "europe-2": (True, 4_000)}
    monitor, shard = monitor_for(monkeypatch, "off", answers)
    primary, replica = shard.primary, shard.replicas[0]
    await monitor.measure(shard)
    assert (primary.in_recovery, replica.in_recovery) == (False, True)
    assert primary.health is NodeHealth.UP and replica.lag_bytes == 1_000

    answers["europe-1"] = (True, 5_000)  # demoted by someone else: now a standby
    await monitor.measure(shard)
    await monitor.measure(shard)
    assert primary.in_recovery is True and primary.health is NodeHealth.DOWN
    assert "in recovery" in str(primary.last_error)  # its writes fail fast, and say why
    assert shard.primary is primary  # mode off moves nothing

    answers["europe-1"] = (False, 5_100)
    await monitor.measure(shard)
    assert primary.health is NodeHealth.UP and primary.last_error is None


async def test_the_view_names_the_followed_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, Any] = {"europe-1": ConnectionRefusedError("gone"),
                               "europe-2": (False, 4_100)}
    topology = Topology.from_config(load_config(REPO / "router.toml"))
    monitor, shard = monitor_for(monkeypatch, "external", answers, topology)
    for _ in range(FOLLOW_CONFIRM_ROUNDS):
        await monitor.measure(shard)
    view = topology.snapshot()["europe"]
    nodes = {n["name"]: n for n in view["nodes"]}
    assert view["primary"] == "europe-2"
    assert nodes["europe-2"]["role"] == "primary"
    assert nodes["europe-2"]["in_recovery"] is False
    assert nodes["europe-1"]["role"] == "replica"
    assert nodes["europe-1"]["in_recovery"] is None  # it did not answer
