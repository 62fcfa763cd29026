"""Writes held while a shard has no usable primary (`[failover] write_buffer_seconds`):
ShardState.wait_for_primary wakes on the monitor's round (wake_writers), not on a timer of
its own, and gives up after the hold."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.config import load_config
from router.core.health import HealthEvent, NodeHealth
from router.ha.topology import Topology

REPO = Path(__file__).resolve().parents[2]


async def test_a_held_write_goes_on_when_a_round_finds_a_primary() -> None:
    shard = Topology.from_config(load_config(REPO / "router.toml")).shards["europe"]
    shard.primary.record(HealthEvent.CONNECT_FAILED, "killed")
    assert shard.primary.health is NodeHealth.DOWN
    waiting = asyncio.create_task(shard.wait_for_primary(10.0))
    await asyncio.sleep(0)
    shard.wake_writers()  # a round that found no primary: still waiting
    await asyncio.sleep(0)
    assert not waiting.done()
    replica = shard.replicas[0]
    replica.in_recovery = False
    shard.make_primary(replica, shard.lsn)  # the failover the monitor carries out
    shard.wake_writers()
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert shard.primary is replica


async def test_a_fenced_or_down_primary_fails_the_write_after_the_hold() -> None:
    shard = Topology.from_config(load_config(REPO / "router.toml")).shards["europe"]
    shard.primary.fenced = True
    assert not shard.primary.available
    assert await shard.wait_for_primary(0.05) is False


@pytest.mark.parametrize("hold", [0.0])
async def test_no_hold_returns_at_once(hold: float) -> None:
    shard = Topology.from_config(load_config(REPO / "router.toml")).shards["europe"]
    shard.primary.record(HealthEvent.CONNECT_FAILED, "killed")
    assert await shard.wait_for_primary(hold) is False
