"""Measures every node continuously: reachable or not, what it says it is (a standby in
recovery, or not), and each replica's replay lag in bytes.

One task per shard asks every node, every `lag_poll_interval_seconds`, over dedicated
connections (never the request pools), whether it is in recovery and its WAL position: the
current one on a node that is not, the replayed one on a standby. Results go into the
Topology's NodeStates. A node's role is live state, never read off its name: with
`[failover] mode = "external"` the shard follows its primary to the node that says it is no
standby, as router/ha/discovery.py decides; with "managed" the primary is the writable node on
the newest timeline and the other writable nodes are fenced (router/core/primary.py); with
"off" the shard keeps router.toml's primary, which is refused as down while it says it is a
standby (it cannot take writes). After each round, writes held for the shard's primary
(`[failover] write_buffer_seconds`) look at it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from router.backend.tls import connect_asyncpg
from router.backend.wal import NODE_STATE_SQL, SYSTEM_ID_SQL, LsnReader
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config, FailoverMode
from router.core.health import HealthEvent
from router.core.primary import ChoiceReason, NodeSays, choose_primary
from router.ha.discovery import NodeObservation, PrimaryWatch, Stay, StayReason
from router.ha.memory import FailoverMemory
from router.ha.topology import NodeState, ShardState, Topology

__all__ = ["LagMonitor"]

log = logging.getLogger("georoute.monitor")

# External mode follows a node only after it said "not in recovery" this many rounds in a
# row (0.15 s at the default lag_poll_interval_seconds): one answer from a node in the middle
# of a restart is not enough.
FOLLOW_CONFIRM_ROUNDS = 3
FAILOVERS_KEPT = 20  # each shard's newest changes of primary, in the topology view


class LagMonitor:
    def __init__(
        self,
        config: Config,
        topology: Topology,
        clock: Clock = SYSTEM_CLOCK,  # the interval between rounds sleeps on it
        memory: FailoverMemory | None = None,  # managed mode: floors kept across restarts
    ) -> None:
        self._config = config
        self._memory = memory
        self._topology = topology
        self._clock = clock
        self._conns: dict[str, asyncpg.Connection] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.rounds = 0
        self._round_done = asyncio.Event()
        mode = FailoverMode(config.failover.mode)
        external = mode is FailoverMode.EXTERNAL
        self._managed = mode is FailoverMode.MANAGED
        self._clock_down: dict[str, float] = {}  # shard -> when its primary was first seen DOWN
        self._watches: dict[str, PrimaryWatch] | None = {
            name: PrimaryWatch(name, FOLLOW_CONFIRM_ROUNDS) for name in topology.shards
        } if external else None
        self._said: dict[str, str] = {}  # shard -> the last Stay logged, to log changes only
        self._writable: set[str] = set()  # replicas logged as writable, to log changes only
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
                                     {"application_name": "georoute-monitor"})
        if self._managed:
            try:
                node.system_id = str(await conn.fetchval(SYSTEM_ID_SQL))
            except BaseException:
                conn.terminate()
                raise
        self._conns[node.name] = conn
        return conn

    async def _probe(self, node: NodeState, primary: bool) -> asyncpg.Record | None:
        """(in_recovery, WAL position), or None when the probe failed. With `primary` (the
        shard's primary, in mode "off"), a node that says it is in recovery fails it."""
        timeout = self._config.database.connect_timeout_seconds
        try:
            conn = await self._conn(node)
            row = await conn.fetchrow(NODE_STATE_SQL, timeout=timeout)
        except Exception as exc:  # e.g. asyncpg's InternalClientError on a dead connection
            stale = self._conns.pop(node.name, None)
            if stale is not None:
                stale.terminate()
            node.in_recovery = None
            self._failed(node, f"{type(exc).__name__}: {exc}", exc)
            return None
        node.in_recovery = None if row is None else bool(row[0])
        node.timeline = None if row is None else row[2]
        if primary and node.in_recovery:
            self._failed(node, "in recovery (a standby): it cannot take the shard's writes, "
                         "and [failover] mode is off")
            return None
        before = node.health
        node.record(HealthEvent.PROBE_OK)
        if node.health is not before:
            log.info("node %s is %s", node.name, node.health.value)
        return row

    def _failed(self, node: NodeState, error: str, exc: object = None) -> None:
        before = node.health
        node.record(HealthEvent.PROBE_FAILED, error)
        if node.health is not before:
            log.warning("node %s is %s: %s", node.name, node.health.value, exc or error)

    async def measure(self, shard: ShardState) -> None:
        """One round for one shard (public so tests and start-up can force a measurement)."""
        off = self._watches is None and not self._managed
        primary_row, *replica_rows = await asyncio.gather(
            self._probe(shard.primary, primary=off),
            *(self._probe(r, primary=False) for r in shard.replicas),
        )
        if self._managed:
            if self._choose(shard, primary_row, replica_rows):
                return  # roles changed: the next round measures lag against the new primary
        elif not off and self._follow(shard, primary_row, replica_rows):
            return
        primary_lsn = primary_row[1] if primary_row is not None else None
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
                replica.lag_bytes = None
                continue
            in_recovery, replay = row[0], row[1]
            replica.replay_lsn = replay
            if not in_recovery:
                # A replica that is not replaying WAL cannot promise fresh data: no reads.
                replica.lag_bytes = None
                if off and replica.name not in self._writable:  # (external: _follow says)
                    self._writable.add(replica.name)
                    log.warning("node %s says it is not in recovery (writable), yet shard %s's "
                                "primary is %s and [failover] mode is off: it gets no reads "
                                "or writes", replica.name, shard.name,
                                shard.primary.name)
                continue
            self._writable.discard(replica.name)
            if primary_lsn is None or replay is None:  # nothing replayed yet: unknown
                replica.lag_bytes = None
            else:
                replica.lag_bytes = max(0, primary_lsn - replay)

    def _follow(self, shard: ShardState, primary_row: asyncpg.Record | None,
                replica_rows: list[asyncpg.Record | None]) -> bool:
        """External mode: make the node that says it is no standby the shard's primary, as
        router/ha/discovery.py decides. Returns whether the roles changed."""
        assert self._watches is not None
        nodes = list(shard.nodes())
        rows = [primary_row, *replica_rows]
        seen = [NodeObservation(n.name, None if row is None else bool(row[0]))
                for n, row in zip(nodes, rows, strict=True)]
        decision = self._watches[shard.name].observe(shard.primary.name, seen)
        if isinstance(decision, Stay):
            said = f"{decision.reason.value}: {decision.detail}"
            if (self._said.get(shard.name) != said
                    and decision.reason is not StayReason.PRIMARY_WRITABLE):
                log.log(logging.ERROR if decision.reason is StayReason.SEVERAL_WRITABLE
                        else logging.INFO, "shard %s keeps its primary %s (%s)", shard.name,
                        shard.primary.name, said)
            self._said[shard.name] = shard.primary_decision = said
            return False
        new = next(n for n in nodes if n.name == decision.new_primary)
        old_lsn = shard.make_primary(new, LsnReader(new.name, new.address, self._config.database))
        task = asyncio.create_task(old_lsn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        shard.primary_decision = f"follow: {decision.detail}"
        shard.failovers_total += 1
        shard.failovers.append({"old_primary": decision.old_primary,
                                "new_primary": decision.new_primary, "timeline": new.timeline,
                                "reason": "external", "detail": decision.detail,
                                "seconds": None})
        del shard.failovers[:-FAILOVERS_KEPT]
        log.warning("shard %s follows its primary from %s to %s: %s", shard.name,
                    decision.old_primary, decision.new_primary, decision.detail)
        return True

    def _choose(self, shard: ShardState, primary_row: asyncpg.Record | None,
                replica_rows: list[asyncpg.Record | None]) -> bool:
        """Managed mode: the agreed primary is the writable node on the newest timeline; the
        other writable nodes are fenced (router/core/primary.py). Returns whether the roles
        changed."""
        nodes = list(shard.nodes())
        rows = [primary_row, *replica_rows]
        said = [NodeSays(n.name, None if row is None else bool(row[0]),
                         None if row is None else row[2])
                for n, row in zip(nodes, rows, strict=True)]
        now = self._clock.monotonic()
        if shard.primary.available:
            self._clock_down.pop(shard.name, None)
        else:
            self._clock_down.setdefault(shard.name, now)
        current = shard.primary.name
        if self._memory is not None:  # what a restart would otherwise not know
            recalled = self._memory.recall(shard.name, [
                n.system_id for n, row in zip(nodes, rows, strict=True) if row is not None])
            if recalled is not None:
                shard.timeline_floor = max(shard.timeline_floor, recalled.timeline)
                if recalled.primary is not None and any(n.name == recalled.primary
                                                        for n in nodes):
                    current = recalled.primary  # where this router left the shard's writes
        choice = choose_primary(current, said, {n.name for n in nodes if n.fenced},
                                shard.timeline_floor)
        chosen = next(n for n in said if n.name == choice.primary)
        if chosen.in_recovery is False and chosen.timeline is not None:
            shard.timeline_floor = max(shard.timeline_floor, chosen.timeline)
            if self._memory is not None and chosen.timeline == shard.timeline_floor:
                # on disk before its writes go there
                self._memory.keep(shard.name, next(n for n in nodes
                                                   if n.name == chosen.name).system_id,
                                  shard.timeline_floor, chosen.name)
        for node in nodes:
            fenced = node.name in choice.fenced
            if fenced and not node.fenced:
                node.fenced = True
                node.lag_bytes = None
                node.pool.terminate_all()  # nothing borrowed from it is used again
                log.error("node %s of shard %s is fenced: no writes, no reads (%s)", node.name,
                          shard.name, choice.detail)
            elif node.fenced and not fenced:
                node.fenced = False
                log.warning("node %s of shard %s is no longer fenced: it says it is a standby",
                            node.name, shard.name)
        decision = f"{choice.reason.value}: {choice.detail}"
        if shard.primary_decision != decision and choice.reason is not ChoiceReason.KEEP:
            log.log(logging.ERROR if choice.reason is ChoiceReason.SPLIT_BRAIN else logging.INFO,
                    "shard %s: %s", shard.name, decision)
        shard.primary_decision = decision
        if not choice.changed(shard.primary.name):
            return False
        old = shard.primary.name
        new = next(n for n in nodes if n.name == choice.primary)
        old_lsn = shard.make_primary(new, LsnReader(new.name, new.address, self._config.database))
        task = asyncio.create_task(old_lsn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        down_since = self._clock_down.pop(shard.name, None)
        seconds = None if down_since is None else round(now - down_since, 3)
        shard.failovers.append({"old_primary": old, "new_primary": new.name,
                                "timeline": new.timeline, "reason": choice.reason.value,
                                "detail": choice.detail, "seconds": seconds})
        del shard.failovers[:-FAILOVERS_KEPT]
        shard.failovers_total += 1
        log.warning("shard %s's primary is now %s (was %s; down for %s s here): %s", shard.name,
                    new.name, old, seconds, choice.detail)
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
            shard.wake_writers()
            self._round_done.set()
            await self._clock.sleep(interval)
