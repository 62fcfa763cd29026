"""Measures every node continuously: reachable or not, and each replica's replay lag in bytes.

One task per shard asks the primary for its current WAL position and each replica for its
replay position, every `lag_poll_interval_seconds`, over dedicated connections (never the
request pools). Results go into the Topology's NodeStates. With `[failover] mode =
"external"` the primary is asked whether it is in recovery too, and the shard follows its
primary to another node as router/ha/discovery.py decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from router.backend.tls import connect_asyncpg
from router.backend.wal import NODE_POSITION_SQL, PRIMARY_POSITION_SQL, LsnReader
from router.config import Config, FailoverMode
from router.core.health import HealthEvent
from router.ha.discovery import NodeObservation, PrimaryWatch, Stay, StayReason
from router.ha.topology import NodeState, ShardState, Topology

__all__ = ["LagMonitor"]

log = logging.getLogger("georoute.monitor")

# External mode follows a node only after it said "not in recovery" this many rounds in a
# row (0.15 s at the default lag_poll_interval_seconds): one answer from a node in the middle
# of a restart is not enough.
FOLLOW_CONFIRM_ROUNDS = 3


class LagMonitor:
    def __init__(
        self,
        config: Config,
        topology: Topology,
        on_change: Callable[[NodeState], None] | None = None,
    ) -> None:
        self._config = config
        self._topology = topology
        self._conns: dict[str, asyncpg.Connection] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._on_change = on_change
        self.rounds = 0
        self._round_done = asyncio.Event()
        external = FailoverMode(config.failover.mode) is FailoverMode.EXTERNAL
        self._watches: dict[str, PrimaryWatch] | None = {
            name: PrimaryWatch(name, FOLLOW_CONFIRM_ROUNDS) for name in topology.shards
        } if external else None  # fmt: skip
        self._said: dict[str, str] = {}  # shard -> the last Stay logged, to log changes only
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for shard in self._topology.shards.values():
            self._tasks.append(asyncio.create_task(self._run(shard), name=f"monitor:{shard.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for conn in self._conns.values():
            conn.terminate()
        self._conns.clear()

    async def wait_round(self) -> None:
        """Wait until every shard has been measured once more (used at start-up)."""
        self._round_done.clear()
        await self._round_done.wait()

    async def _conn(self, node: NodeState) -> asyncpg.Connection:
        conn = self._conns.get(node.name)
        if conn is not None and not conn.is_closed():
            return conn
        conn = await connect_asyncpg(self._config.database, node.address,
                                     {"application_name": "georoute-monitor"})  # fmt: skip
        self._conns[node.name] = conn
        return conn

    async def _probe(self, node: NodeState, sql: str) -> asyncpg.Record | None:
        timeout = self._config.database.connect_timeout_seconds
        try:
            conn = await self._conn(node)
            row = await conn.fetchrow(sql, timeout=timeout)
        except Exception as exc:  # e.g. asyncpg's InternalClientError on a dead connection
            stale = self._conns.pop(node.name, None)
            if stale is not None:
                stale.terminate()
            before = node.health
            node.record(HealthEvent.PROBE_FAILED, f"{type(exc).__name__}: {exc}")
            if node.health is not before:
                log.warning("node %s is %s: %s", node.name, node.health.value, exc)
                if self._on_change:
                    self._on_change(node)
            return None
        before = node.health
        node.record(HealthEvent.PROBE_OK)
        if node.health is not before:
            log.info("node %s is %s", node.name, node.health.value)
            if self._on_change:
                self._on_change(node)
        return row

    async def measure(self, shard: ShardState) -> None:
        """One round for one shard (public so tests and start-up can force a measurement)."""
        primary_row, *replica_rows = await asyncio.gather(
            self._probe(shard.primary,
                        PRIMARY_POSITION_SQL if self._watches is None else NODE_POSITION_SQL),
            *(self._probe(r, NODE_POSITION_SQL) for r in shard.replicas),
        )  # fmt: skip
        if self._watches is not None and self._follow(shard, primary_row, replica_rows):
            return  # roles changed: the next round measures lag against the new primary
        primary_lsn = primary_row[-1] if primary_row is not None else None
        shard.primary.replay_lsn = primary_lsn
        shard.primary.lag_bytes = 0 if primary_lsn is not None else None
        if primary_lsn is not None:
            shard.last_primary_lsn = primary_lsn
        else:
            # The primary cannot be probed (busy, or gone): measure the replicas against its
            # last known position, so reads keep their replicas rather than all turning to a
            # primary that is struggling or down. (Tokens are still checked against each
            # replica's own replay position.)
            primary_lsn = shard.last_primary_lsn
        for replica, row in zip(shard.replicas, replica_rows, strict=True):
            if row is None:
                replica.lag_bytes = replica.in_recovery = None
                continue
            in_recovery, replay = row
            replica.replay_lsn = replay
            replica.in_recovery = bool(in_recovery)
            if not in_recovery:
                # A "replica" that is not replaying WAL cannot promise fresh data.
                replica.lag_bytes = None
            elif primary_lsn is None or replay is None:  # nothing replayed yet: unknown
                replica.lag_bytes = None
            else:
                replica.lag_bytes = max(0, primary_lsn - replay)

    def _follow(self, shard: ShardState, primary_row: asyncpg.Record | None,
                replica_rows: list[asyncpg.Record | None]) -> bool:  # fmt: skip
        """External mode: make the node that says it is no standby the shard's primary, as
        router/ha/discovery.py decides. Returns whether the roles changed."""
        assert self._watches is not None
        nodes = list(shard.nodes())
        rows = [primary_row, *replica_rows]
        seen = [NodeObservation(n.name, None if row is None else bool(row[0]))
                for n, row in zip(nodes, rows, strict=True)]  # fmt: skip
        decision = self._watches[shard.name].observe(shard.primary.name, seen)
        if isinstance(decision, Stay):
            said = f"{decision.reason.value}: {decision.detail}"
            if (self._said.get(shard.name) != said
                    and decision.reason is not StayReason.PRIMARY_WRITABLE):
                log.log(logging.ERROR if decision.reason is StayReason.SEVERAL_WRITABLE
                        else logging.INFO, "shard %s keeps its primary %s (%s)", shard.name,
                        shard.primary.name, said)  # fmt: skip
            self._said[shard.name] = shard.primary_decision = said
            return False
        new = next(n for n in nodes if n.name == decision.new_primary)
        old_lsn = shard.make_primary(new, LsnReader(new.name, new.address, self._config.database))
        task = asyncio.create_task(old_lsn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        shard.primary_decision = f"follow: {decision.detail}"
        log.warning("shard %s follows its primary from %s to %s: %s", shard.name,
                    decision.old_primary, decision.new_primary, decision.detail)  # fmt: skip
        return True

    async def _run(self, shard: ShardState) -> None:
        interval = self._config.router.lag_poll_interval_seconds
        while True:
            try:
                await self.measure(shard)
            except Exception:  # the monitor must never die
                log.exception("measuring shard %s failed", shard.name)
                for replica in shard.replicas:  # unmeasured lag is not fresh lag
                    replica.lag_bytes = None
            self.rounds += 1
            self._round_done.set()
            await asyncio.sleep(interval)
