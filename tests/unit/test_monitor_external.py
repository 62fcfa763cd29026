"""External failover mode in the monitor's rounds (router/ha/monitor.py), over stand-in probe
connections: the shard's primary moves to the node that says it is no standby once it is
confirmed, the old one stays out of reads, and in mode "off" the same answers move nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.backend.wal import PRIMARY_POSITION_SQL
from router.config import load_config
from router.core.routing import Role
from router.ha.monitor import FOLLOW_CONFIRM_ROUNDS, LagMonitor
from router.ha.topology import NodeState, ShardState, Topology

REPO = Path(__file__).resolve().parents[2]


class ProbeConn:
    """Answers from a table: node name -> (in_recovery, lsn) or an exception to raise."""

    def __init__(self, node: str, answers: dict[str, Any]) -> None:
        self.node, self.answers = node, answers

    async def fetchrow(self, sql: str, timeout: float) -> Any:  # noqa: ASYNC109 (asyncpg's)
        answer = self.answers[self.node]
        if isinstance(answer, BaseException):
            raise answer
        in_recovery, lsn = answer
        return (lsn,) if sql == PRIMARY_POSITION_SQL else (in_recovery, lsn)

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass


def monitor_for(monkeypatch: pytest.MonkeyPatch, mode: str,
                answers: dict[str, Any]) -> tuple[LagMonitor, ShardState]:  # fmt: skip
    config = load_config(REPO / "router.toml")
    config = replace(config, failover=replace(config.failover, mode=mode))
    topology = Topology.from_config(config)
    monitor = LagMonitor(config, topology)

    async def conn(node: NodeState) -> ProbeConn:
        return ProbeConn(node.name, answers)

    monkeypatch.setattr(monitor, "_conn", conn)
    return monitor, topology.shards["europe"]


async def test_follows_a_promoted_replica_and_keeps_the_stale_one_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: dict[str, Any] = {"europe-primary": (False, 5_000), "europe-replica1": (True, 4_000)}
    monitor, shard = monitor_for(monkeypatch, "external", answers)
    await monitor.measure(shard)
    assert shard.replicas[0].lag_bytes == 1_000
    assert str(shard.primary_decision).startswith("primary_writable")
    old_primary, replica = shard.primary, shard.replicas[0]
    old_reader = shard.lsn

    answers["europe-primary"] = ConnectionRefusedError("gone")
    answers["europe-replica1"] = (False, 4_100)  # promoted by someone else
    for _ in range(FOLLOW_CONFIRM_ROUNDS - 1):
        await monitor.measure(shard)
        assert shard.primary is old_primary
        assert str(shard.primary_decision).startswith("not_confirmed")
    await monitor.measure(shard)
    assert shard.primary is replica and replica.role is Role.PRIMARY
    assert shard.replicas == [old_primary] and old_primary.role is Role.REPLICA
    assert shard.lsn is not old_reader and shard.lsn.name == "europe-replica1"
    assert str(shard.primary_decision).startswith("follow")

    answers["europe-primary"] = (False, 5_000)  # back, writable, on the old timeline
    for _ in range(FOLLOW_CONFIRM_ROUNDS + 2):
        await monitor.measure(shard)
        assert shard.primary is replica  # a split brain never moves the primary back
        assert old_primary.lag_bytes is None  # not replaying: no reads
    assert str(shard.primary_decision).startswith("several_writable")

    answers["europe-primary"] = (True, 4_100)  # rejoined as a standby: reads may come back
    await monitor.measure(shard)
    assert shard.primary is replica
    assert old_primary.lag_bytes == 0


async def test_mode_off_never_moves_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, Any] = {"europe-primary": ConnectionRefusedError("gone"),
                               "europe-replica1": (False, 4_100)}  # fmt: skip
    monitor, shard = monitor_for(monkeypatch, "off", answers)
    for _ in range(FOLLOW_CONFIRM_ROUNDS + 2):
        await monitor.measure(shard)
    assert shard.primary.name == "europe-primary" and shard.primary_decision is None
    assert shard.replicas[0].role is Role.REPLICA
