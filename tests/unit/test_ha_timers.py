"""The HA timers on a FakeClock (tests/support/clock.py), none of them sleeping: the heartbeat
service sends one round per interval and judges a silent peer suspect, then dead, at exactly
the configured silences, and times a down primary for the failover plan on the same clock;
the lag monitor measures once per interval; the idempotency sweeper wakes once per its
interval. Heartbeats go over real UDP sockets on 127.0.0.1; the database is not involved."""

from __future__ import annotations

import asyncio
import copy
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from protocol.heartbeat import Heartbeat, HeartbeatReceiver, HeartbeatSender, ReportedHealth
from router.config import Config, load_config, parse_config
from router.core.failover import NoAction, NoActionReason, Promote
from router.core.health import HealthEvent
from router.core.membership import PeerState
from router.engine.idempotency import run_sweeper, sweep_interval
from router.ha.heartbeat import HeartbeatService
from router.ha.memory import FailoverMemory
from router.ha.monitor import LagMonitor
from router.ha.topology import NodeState, Topology
from router.types import Role
from tests.support.clock import FakeClock
from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
SECRET = "fake-clock-heartbeat-secret-0123"
INTERVAL, SUSPECT_AFTER, DEAD_AFTER, DOWN_AFTER = 0.5, 2.0, 5.0, 1.0


@dataclass
class Peer(asyncio.DatagramProtocol):
    """The other router node, played by the test on its own UDP socket."""

    got: list[bytes] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


def _config(peer_port: int) -> Config:
    raw: dict[str, Any] = copy.deepcopy(tomllib.loads((REPO / "router.toml").read_text()))
    raw["heartbeat"].update({
        "host": "127.0.0.1", "port": 0, "interval_seconds": INTERVAL,
        "suspect_after_seconds": SUSPECT_AFTER, "dead_after_seconds": DEAD_AFTER,
        "alive_after_heartbeats": 3, "secret_env": "HB_FAKE_CLOCK_SECRET",
        "peers": [f"router-2@127.0.0.1:{peer_port}"],
    })
    raw["failover"]["down_after_seconds"] = DOWN_AFTER
    return parse_config(raw)


@dataclass
class Rig:
    clock: FakeClock
    service: HeartbeatService
    topology: Topology
    peer: Peer
    sender: HeartbeatSender

    def send(self, nodes: dict[str, ReportedHealth] | None = None) -> None:
        """One heartbeat from router-2, with what it sees."""
        primaries = {s.name: s.primary.name for s in self.topology.shards.values()}
        data = self.sender.encode(nodes or {}, primaries)
        assert self.peer.transport is not None and self.service.address is not None
        self.peer.transport.sendto(data, self.service.address)

    async def send_and_wait(self, nodes: dict[str, ReportedHealth] | None = None) -> None:
        before = self.service.received
        self.send(nodes)
        await until(lambda: self.service.received > before, what="the heartbeat to arrive", poll=0)

    def state(self) -> PeerState:
        return self.service.membership.peers["router-2"].state


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setenv("HB_FAKE_CLOCK_SECRET", SECRET)
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    config = _config(peer.port)
    topology = Topology.from_config(config)
    clock = FakeClock(start=100.0)
    service = HeartbeatService(config, lambda: topology, clock=clock)
    await service.start()
    try:
        await clock.wait_for_sleepers(1)  # the first round is done; the loop waits an interval
        yield Rig(clock, service, topology, peer, HeartbeatSender(SECRET.encode(), "router-2", 7))
    finally:
        await service.stop()
        transport.close()


async def test_one_round_per_interval_of_the_injected_clock(rig: Rig) -> None:
    assert rig.service.sent == 1  # the first round goes at start
    await rig.clock.advance(INTERVAL - 0.01)
    assert rig.service.sent == 1  # not a moment early
    await rig.clock.advance(0.01)
    assert rig.service.sent == 2
    await rig.clock.advance(4 * INTERVAL)
    assert rig.service.sent == 6
    await until(lambda: len(rig.peer.got) == 6, what="six heartbeats at the peer", poll=0)
    receiver = HeartbeatReceiver(SECRET.encode(), {"router-1": ("127.0.0.1", 0)})
    beats = [receiver.receive(d) for d in rig.peer.got]
    assert all(isinstance(b, Heartbeat) for b in beats)
    assert [b.sequence for b in beats if isinstance(b, Heartbeat)] == list(range(6))
    # The incarnation is the injected wall clock at construction, in nanoseconds.
    assert rig.service.incarnation == int((rig.clock.wall() - 2.5) * 1_000_000_000)


async def test_silence_is_judged_on_the_injected_clock(rig: Rig) -> None:
    for _ in range(3):  # alive_after heartbeats, one per interval
        await rig.send_and_wait()
        await rig.clock.advance(INTERVAL)
    assert rig.state() is PeerState.ALIVE
    last_heard = rig.service.membership.peers["router-2"].last_heard
    assert last_heard == 101.0  # the third arrived at 100 + 2 intervals
    await rig.clock.advance(last_heard + SUSPECT_AFTER - INTERVAL - rig.clock.monotonic())
    assert rig.state() is PeerState.ALIVE  # 1.5 s of silence: still alive
    await rig.clock.advance(INTERVAL)
    assert rig.state() is PeerState.SUSPECT  # at exactly suspect_after
    assert rig.service.membership.peers["router-2"].since == last_heard + SUSPECT_AFTER
    await rig.clock.advance(DEAD_AFTER - SUSPECT_AFTER - INTERVAL)
    assert rig.state() is PeerState.SUSPECT
    await rig.clock.advance(INTERVAL)
    assert rig.state() is PeerState.DEAD  # at exactly dead_after
    report = rig.service.report()
    assert report["peers"][0]["silent_seconds"] == DEAD_AFTER
    assert report["quorum"] is False


async def test_the_failover_plan_times_a_down_primary_on_the_injected_clock(rig: Rig) -> None:
    shard = rig.topology.shards["europe"]
    replica = shard.replicas[0]
    replica.in_recovery, replica.replay_lsn = True, 4096
    down = {shard.primary.name: ReportedHealth.DOWN}
    for _ in range(3):  # router-2 alive, seeing the primary down too
        await rig.send_and_wait(down)
        await rig.clock.advance(INTERVAL)
    shard.primary.record(HealthEvent.CONNECT_FAILED, "gone")  # this node sees it down now
    await rig.send_and_wait(down)
    await rig.clock.advance(INTERVAL)  # the first round that sees it down starts the timer
    plan = rig.service.plans["europe"]
    assert isinstance(plan, NoAction) and plan.reason is NoActionReason.NOT_DOWN_LONG_ENOUGH
    assert "down for 0.00s" in plan.detail
    await rig.send_and_wait(down)
    await rig.clock.advance(INTERVAL)
    plan = rig.service.plans["europe"]
    assert isinstance(plan, NoAction) and "down for 0.50s" in plan.detail
    await rig.send_and_wait(down)
    await rig.clock.advance(INTERVAL)  # down for exactly down_after
    plan = rig.service.plans["europe"]
    assert isinstance(plan, Promote), plan
    assert (plan.replica, plan.voters) == (replica.name, ("router-1", "router-2"))
    shard.primary.record(HealthEvent.PROBE_OK)
    await rig.clock.advance(INTERVAL)
    plan = rig.service.plans["europe"]
    assert isinstance(plan, NoAction) and plan.reason is NoActionReason.PRIMARY_UP


# ---- the lag monitor and the idempotency sweeper -----------------------------------------


class Probe:
    """Stands in for a node's monitor connection: answers with a fixed WAL position, the
    shard's primary as no standby (else mode "off" fails its probe and no lag is measured)."""

    def __init__(self, node: NodeState) -> None:
        self.node = node

    async def fetchrow(self, sql: str, timeout: float) -> Any:  # noqa: ASYNC109 (asyncpg's)
        replica = self.node.role is Role.REPLICA
        return (replica, 1000, None if replica else 1)  # (in recovery, LSN, timeline)

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass


async def test_the_monitor_measures_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOROUTE_TOKEN", "t")
    config = load_config(REPO / "router.toml")
    topology = Topology.from_config(config)
    clock = FakeClock()
    monitor = LagMonitor(config, topology, clock=clock)

    async def probe(node: NodeState) -> Probe:
        return Probe(node)

    monkeypatch.setattr(monitor, "_conn", probe)
    shards = len(topology.shards)
    interval = config.router.lag_poll_interval_seconds
    monitor.start()
    try:
        await clock.wait_for_sleepers(shards)  # every shard measured once, then waiting
        assert monitor.rounds == shards
        await clock.advance(interval * 0.99)
        assert monitor.rounds == shards
        await clock.advance(interval * 0.01)
        assert monitor.rounds == 2 * shards
        await clock.advance(interval * 10)
        assert monitor.rounds == 12 * shards
        assert all(r.lag_bytes == 0 for s in topology.shards.values() for r in s.replicas)
    finally:
        await monitor.stop()
    assert clock.pending == []


async def test_the_sweeper_wakes_once_per_interval() -> None:
    clock = FakeClock()
    rounds: list[float] = []

    def current() -> Topology:  # asked once per sweep; no shards, so nothing to delete
        rounds.append(clock.monotonic())
        return Topology({})

    retention = 86400.0
    interval = sweep_interval(retention)
    assert interval == 600.0  # at most every 10 minutes
    assert sweep_interval(10.0) == 1.0 and sweep_interval(240.0) == 10.0
    task = asyncio.create_task(run_sweeper(current, retention, clock=clock))
    try:
        await clock.wait_for_sleepers(1)
        assert rounds == []  # the first sweep waits an interval: start-up stays light
        await clock.advance(interval - 1)
        assert rounds == []
        await clock.advance(1 + 2 * interval)
        assert rounds == [1600.0, 2200.0, 2800.0]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_restart_after_the_wall_clock_stepped_back_is_still_a_newer_incarnation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """A router node restarted after its wall clock stepped back behind its last start: with
    the incarnation its wall time alone, its peers dropped every heartbeat as replayed until
    they restarted. In managed mode its failover memory keeps the last incarnation, and the
    next one is newer whatever the clock says."""
    monkeypatch.setenv("HB_FAKE_CLOCK_SECRET", SECRET)
    config = _config(9)
    topology = Topology.from_config(config)
    memory_file = tmp_path / "failover-router-1.json"
    first = HeartbeatService(config, lambda: topology, clock=FakeClock(wall_start=2e9),
                             memory=FailoverMemory(memory_file))
    stepped = FakeClock(wall_start=2e9 - 3600)  # an hour back
    plain = HeartbeatService(config, lambda: topology, clock=stepped)
    again = HeartbeatService(config, lambda: topology, clock=stepped,
                             memory=FailoverMemory(memory_file))
    receiver = HeartbeatReceiver(SECRET.encode(), {"router-1": ("127.0.0.1", 0)})
    assert isinstance(receiver.receive(first.sender.encode({}, {})), Heartbeat)
    assert not isinstance(receiver.receive(plain.sender.encode({}, {})), Heartbeat)  # the bug
    assert isinstance(receiver.receive(again.sender.encode({}, {})), Heartbeat)
    assert again.incarnation == first.incarnation + 1
