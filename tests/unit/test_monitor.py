"""The lag monitor's rounds (router/ha/monitor.py) over stand-in probe connections: replica lag
is measured against the primary's last known position while the primary cannot be probed,
and any probe error (asyncpg's InternalClientError on a dead connection included) marks that
node's probe failed instead of stopping the round with the lag left as it was. Topology and
config come from router.toml; no database is involved."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from protocol import Hints
from router.backend.wal import NODE_STATE_SQL
from router.config import load_config
from router.core.health import NodeHealth
from router.ha.monitor import LagMonitor
from router.ha.topology import NodeState, Topology
from router.types import Role

REPO = Path(__file__).resolve().parents[2]


class ProbeConn:
    """Answers the monitor's probes from a table of (node name -> WAL position or exception):
    the shard's primary says it is no standby, the others that they are."""

    def __init__(self, node: NodeState, answers: dict[str, Any]) -> None:
        self.node = node
        self.answers = answers

    async def fetchrow(self, sql: str, timeout: float) -> Any:  # noqa: ASYNC109 (asyncpg's)
        assert sql == NODE_STATE_SQL
        answer = self.answers[self.node.name]
        if isinstance(answer, BaseException):
            raise answer
        replica = self.node.role is Role.REPLICA
        return (replica, answer, None if replica else 1)  # (in recovery, LSN, timeline)

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass


def _monitor(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> tuple[LagMonitor, Any]:
    monkeypatch.setenv("GEOROUTE_TOKEN", "t")
    config = load_config(REPO / "router.toml")
    topology = Topology.from_config(config)
    monitor = LagMonitor(config, topology)

    async def conn(node: NodeState) -> ProbeConn:
        return ProbeConn(node, answers)

    monkeypatch.setattr(monitor, "_conn", conn)
    return monitor, topology.shards["europe"]


async def _measured(monkeypatch: pytest.MonkeyPatch, primary: int, replica: int
                    ) -> tuple[LagMonitor, Any, dict[str, Any]]:
    """A monitor after one good round on europe, and the answers its probes will give."""
    answers: dict[str, Any] = {"europe-1": primary, "europe-2": replica}
    monitor, shard = _monitor(monkeypatch, answers)
    await monitor.measure(shard)
    assert shard.replicas[0].lag_bytes == primary - replica
    return monitor, shard, answers


async def test_replicas_keep_their_lag_while_the_primary_cannot_be_probed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor, shard, answers = await _measured(monkeypatch, 5_000, 4_000)
    replica = shard.replicas[0]
    answers["europe-1"] = TimeoutError("busy")  # the primary stops answering probes
    answers["europe-2"] = 4_500
    await monitor.measure(shard)
    assert shard.primary.health is NodeHealth.SUSPECT
    assert replica.lag_bytes == 500  # against the primary's last known position, not None


async def test_any_probe_error_fails_that_probe_and_the_round_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor, shard, answers = await _measured(monkeypatch, 9_000, 8_000)
    answers["europe-1"] = 50_000_000  # writes pile up on the primary...
    answers["europe-2"] = asyncpg.InternalClientError("cannot switch to state 11")
    await monitor.measure(shard)  # ...while the replica's probe connection is dead
    replica = shard.replicas[0]
    assert replica.health is NodeHealth.SUSPECT
    assert replica.lag_bytes is None  # unknown, not the stale 1,000 bytes of the last round


@pytest.mark.parametrize("wait_ms", [20, 300])
async def test_the_read_your_writes_wait_is_bounded_when_a_replica_stops_answering(
    monkeypatch: pytest.MonkeyPatch, wait_ms: int
) -> None:
    """A read whose session wrote past every replica's known position waits for the replica
    to replay it, for router.read_your_writes_wait_ms and no longer, even if the replica
    never answers its poll; the read then runs on the primary. Two bounds, so that a wait
    off by a factor (or fixed, whatever the setting) shows up in one of them."""
    from router.engine.classifier import Classifier
    from router.engine.executor import Executor
    from router.engine.session import Session
    from router.ha.topology import Role

    monkeypatch.setenv("GEOROUTE_TOKEN", "t")
    loaded = load_config(REPO / "router.toml")
    config = replace(loaded, router=replace(loaded.router, read_your_writes_wait_ms=wait_ms))
    topology = Topology.from_config(config)
    executor = Executor(config, topology, Classifier(config.tables, ()))
    shard = topology.shards["europe"]
    replica = shard.replicas[0]
    replica.lag_bytes, replica.replay_lsn = 0, 100
    polls: list[str] = []
    ran: list[tuple[str, str]] = []

    async def never_answers(sql: str, params: Any) -> Any:
        polls.append(sql)
        await asyncio.Event().wait()

    async def primary_runs(sql: str, params: Any, **_: Any) -> Any:
        ran.append((shard.primary.name, sql))
        return ["who"], [["the primary"]], "SELECT 1"

    monkeypatch.setattr(replica.pool.pipeline, "run", never_answers)
    monkeypatch.setattr(shard.primary.pool.pipeline, "run", primary_runs)
    sql = "SELECT * FROM courses WHERE region = 'europe'"
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):  # a hang is a failure, not a stuck suite
        outcome = await executor.query(Session(), sql, [], Hints(ryw={"europe": 10**9}))
    waited = loop.time() - started
    assert polls, "the replica was never asked for its replay position"
    assert ran == [(shard.primary.name, sql)]
    assert (outcome.node, outcome.role.value, outcome.rows) == (
        shard.primary.name, Role.PRIMARY.value, [["the primary"]])
    assert wait_ms / 1000 <= waited < wait_ms / 1000 + 0.25, f"waited {waited:.3f}s"


def test_equally_idle_replicas_take_turns() -> None:
    from router.core.reads import choose_replica

    class Idle:
        available, lag_bytes, replay_lsn, in_flight = True, 0, 100, 0

        def __init__(self, name: str) -> None:
            self.name = name

    replicas = [Idle("a"), Idle("b"), Idle("c")]
    picked = [choose_replica(replicas, 100, None, turn).name for turn in range(6)]  # type: ignore[union-attr]
    assert picked == ["a", "b", "c", "a", "b", "c"]


async def test_a_server_that_turns_a_connection_away_is_not_marked_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At its connection limit a node refuses new connections (53300) but is up: marking it
    DOWN would tear its pools down and make it flap. A node that cannot be reached is DOWN."""
    import router.backend.pool as pool_module
    from router.backend.pool import NodeUnavailableError
    from router.engine.classifier import Classifier
    from router.engine.executor import Executor

    monkeypatch.setenv("GEOROUTE_TOKEN", "t")
    config = load_config(REPO / "router.toml")
    topology = Topology.from_config(config)
    executor = Executor(config, topology, Classifier(config.tables, ()))
    node = topology.shards["europe"].primary

    async def refuses(*args: Any, **kwargs: Any) -> Any:
        raise asyncpg.TooManyConnectionsError("sorry, too many clients already")

    monkeypatch.setattr(pool_module, "connect_asyncpg", refuses)
    with pytest.raises(NodeUnavailableError) as info:
        await executor.acquire(node)
    assert info.value.refused and node.health is NodeHealth.UP

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(pool_module, "connect_asyncpg", unreachable)
    with pytest.raises(NodeUnavailableError) as info:
        await executor.acquire(node)
    assert not info.value.refused and node.health is NodeHealth.DOWN
