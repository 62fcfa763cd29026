"""The promoter's connections to a shard's nodes are opened at once; an attempt whose time is
up part way closes those already made (each would otherwise stay open on its node, one more at
every attempt of a failover that keeps failing)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from router.config import load_config
from router.ha.promoter import Promoter
from router.ha.topology import NodeState, Topology

CONFIG = load_config(Path(__file__).resolve().parents[2] / "router.toml")
LAST = list(Topology.from_config(CONFIG).shards["europe"].nodes())[-1].name


class _Conn:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


def _promoter(made: dict[str, _Conn], hangs: str) -> tuple[Promoter, list[NodeState]]:
    topology = Topology.from_config(CONFIG)
    promoter = Promoter(CONFIG, lambda: topology)

    async def connect(node: NodeState, old: bool) -> Any:
        if node.name == hangs:
            await asyncio.Event().wait()  # a node that never answers the connect
        made[node.name] = _Conn()
        return made[node.name]

    promoter._connect = connect  # type: ignore[method-assign]
    return promoter, list(topology.shards["europe"].nodes())


async def test_connections_made_before_the_time_is_up_are_closed() -> None:
    made: dict[str, _Conn] = {}
    promoter, nodes = _promoter(made, hangs=LAST)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await promoter._connect_all(nodes, old=None)
    assert made and all(c.terminated for c in made.values())
    assert set(made) == {n.name for n in nodes} - {LAST}


async def test_every_node_that_answers_is_kept_open() -> None:
    made: dict[str, _Conn] = {}
    promoter, nodes = _promoter(made, hangs="")
    conns = await promoter._connect_all(nodes, old=None)
    assert set(conns) == {n.name for n in nodes}
    assert not any(c.terminated for c in made.values())
