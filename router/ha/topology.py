"""The router's live view of the database nodes: role, health, WAL positions, pools.

`Topology.from_config` builds one `NodeState` per configured node; each shard starts with
router.toml's `primary` entry as its primary. Roles are live state from then on: the monitor
(monitor.py) records what every node says of itself (`in_recovery`) with its health and lag,
and in external failover mode moves a shard's primary to the node that says it is no standby
(`ShardState.make_primary`). A node's name says nothing of its role. The executor reads the
view through core/reads.py's `plan_read`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from router.backend.pool import BackendPool
from router.backend.wal import LsnReader
from router.config import Config, NodeAddress
from router.core.health import HealthEvent, NodeHealth, next_health
from router.types import Role

__all__ = ["NodeState", "ShardState", "Topology"]


@dataclass(slots=True, eq=False)
class NodeState:
    name: str
    shard: str
    role: Role  # PRIMARY: its shard's primary, where writes go (ShardState.primary)
    address: NodeAddress
    pool: BackendPool
    health: NodeHealth = NodeHealth.UP
    replay_lsn: int | None = None  # replicas: last replayed WAL position; primaries: current
    lag_bytes: int | None = None  # replicas: primary's position minus replay position
    in_recovery: bool | None = None  # what it said at the last probe (None: no answer)
    timeline: int | None = None  # a writable node's timeline at the last probe
    system_id: str | None = None  # its cluster's system identifier (managed mode, on connect)
    last_error: str | None = None
    # Managed failover: an old primary writable on an older timeline, or a second writable
    # node (router/core/primary.py). It gets no writes and no reads until it is a standby.
    fenced: bool = False

    @property
    def available(self) -> bool:
        return self.health is not NodeHealth.DOWN and not self.fenced

    @property
    def in_flight(self) -> int:
        return self.pool.in_use + self.pool.waiting + self.pool.pipeline.in_flight

    def record(self, event: HealthEvent, error: str | None = None) -> NodeHealth:
        before = self.health
        self.health = next_health(self.health, event)
        if error is not None:
            self.last_error = error
        elif event is HealthEvent.PROBE_OK:
            self.last_error = None
        if self.health is NodeHealth.DOWN and before is not NodeHealth.DOWN:
            self.pool.terminate_all()
        return self.health

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shard": self.shard,
            "role": self.role.value,
            "in_recovery": self.in_recovery,
            "timeline": self.timeline,
            "fenced": self.fenced,
            "host": self.address.host,
            "port": self.address.port,
            "health": self.health.value,
            "replay_lsn": self.replay_lsn,
            "lag_bytes": self.lag_bytes,
            "pool_size": self.pool.size,
            "pool_in_use": self.pool.in_use,
            "pool_waiting": self.pool.waiting,
            "pipeline_connections": self.pool.pipeline.connections,
            "pipeline_in_flight": self.pool.pipeline.in_flight,
            "pipeline_statements": self.pool.pipeline.statements,
            "last_error": self.last_error,
        }


@dataclass(slots=True, eq=False)
class ShardState:
    name: str
    number: int
    primary: NodeState
    lsn: LsnReader  # the primary's WAL position, for read-your-writes tokens
    replicas: list[NodeState] = field(default_factory=list)
    turn: int = 0  # which replica goes first among equally idle ones (core/reads.py)
    # The primary's WAL position at its last good probe: replica lag is measured against it
    # while the primary cannot be probed, so reads keep their replicas.
    last_primary_lsn: int | None = None
    # External failover mode: the monitor's last decision about the primary, with its reason
    # (router/ha/discovery.py), for the topology view. None in the other modes.
    primary_decision: str | None = None
    # Changes of primary this router followed (external or managed mode), the newest last.
    failovers: list[dict[str, Any]] = field(default_factory=list)
    failovers_total: int = 0
    # Managed mode: the newest timeline this router has seen its primary writable on; no node
    # on an older one becomes the primary again (router/core/primary.py).
    timeline_floor: int = 0
    # Writes held while the primary is down (router/engine/executor.py), woken by the monitor.
    _writers: list[asyncio.Future[None]] = field(default_factory=list)

    async def wait_for_primary(self, seconds: float) -> bool:
        """Wait up to `seconds` for the shard to have a primary that can take writes (the same
        one back, or a new one after a failover); True if it has one."""
        if self.primary.available:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.primary.available:
            left = deadline - loop.time()
            if left <= 0:
                return False
            waiter = loop.create_future()
            self._writers.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return self.primary.available
            finally:
                with contextlib.suppress(ValueError):
                    self._writers.remove(waiter)
        return True

    def wake_writers(self) -> None:
        """Called after each monitor round: held writes look at the primary again."""
        writers, self._writers = self._writers, []
        for waiter in writers:
            if not waiter.done():
                waiter.set_result(None)

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn

    def make_primary(self, node: NodeState, lsn: LsnReader) -> LsnReader:
        """`node`, a replica, is the primary now (a failover; roles are live state: a node
        keeps its name, which says nothing of its role). The old primary stays
        as a replica that serves no reads until the monitor sees it replaying. Returns the
        old primary's WAL-position reader, for the caller to close."""
        old, old_lsn = self.primary, self.lsn
        self.replicas.remove(node)
        old.role, node.role = Role.REPLICA, Role.PRIMARY
        old.lag_bytes = None
        node.fenced = False
        self.replicas.append(old)
        self.primary, self.lsn = node, lsn
        self.last_primary_lsn = None  # the old primary's, on another timeline
        return old_lsn

    def nodes(self) -> Iterator[NodeState]:
        yield self.primary
        yield from self.replicas


@dataclass(slots=True, eq=False)
class Topology:
    shards: dict[str, ShardState]

    @classmethod
    def from_config(cls, config: Config) -> Topology:
        r = config.router

        def pool(name: str, address: NodeAddress) -> BackendPool:
            return BackendPool(
                name,
                address,
                config.database,
                acquire_timeout=r.pool_acquire_timeout_seconds,
                statement_timeout=r.statement_timeout_seconds,
                transaction_idle_timeout=r.transaction_idle_timeout_seconds,
                application_name=f"georoute:{r.node_name}",
            )

        shards: dict[str, ShardState] = {}
        for shard_name, node_name, address in config.all_nodes():
            # all_nodes lists each shard's `primary` entry first: it starts as the primary.
            shard = shards.get(shard_name)
            role = Role.PRIMARY if shard is None else Role.REPLICA
            node = NodeState(node_name, shard_name, role, address, pool(node_name, address))
            if shard is None:
                lsn = LsnReader(node_name, address, config.database)
                shards[shard_name] = ShardState(
                    shard_name, config.shards[shard_name].number, node, lsn
                )
            else:
                shard.replicas.append(node)
        return cls(shards)

    def nodes(self) -> Iterator[NodeState]:
        for shard in self.shards.values():
            yield from shard.nodes()

    def node(self, name: str) -> NodeState | None:
        return next((n for n in self.nodes() if n.name == name), None)

    def snapshot(self) -> dict[str, Any]:
        return {
            name: {
                "number": s.number,
                "primary": s.primary.name,
                "nodes": [n.snapshot() for n in s.nodes()],
                "primary_decision": s.primary_decision,
                "fenced": [n.name for n in s.nodes() if n.fenced],
                "timeline_floor": s.timeline_floor,
                "failovers": list(s.failovers),
            }
            for name, s in self.shards.items()
        }
