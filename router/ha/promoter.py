"""Managed failover, carried out (`[failover] mode = "managed"`): the router node that
router/core/failover.py's `plan_failover` names as promoter promotes the most advanced replica
with `pg_promote()`. The decision is pure and lives there; this module only does the I/O, one
promotion task per shard at a time, and logs every step with its reason.

Exactly one promotion per failure, also when two router nodes decide at once:
1. the promoter connects to every node of the shard and takes a session advisory lock on
   every reachable replica, in name order (a second promoter waits on the first one's locks,
   and two cannot deadlock);
2. under the locks it takes a fresh snapshot (recovery state, WAL received and replayed,
   timeline) and asks `decide_promotion`: a node already out of recovery means someone
   promoted it (Adopt: nothing to do), a primary that answers again means no failover;
3. only then `pg_promote(true, ...)`; on a node already promoted it fails harmlessly;
4. it records the promotion in `georoute_failovers` (sql/023) on the new primary (an audit
   trail that replicates with the data; the agreement itself is the timeline,
   router/core/primary.py),
   and closes its connections, which releases the locks.
Every router's monitor then follows the new primary by its timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from router.backend.tls import connect_asyncpg
from router.backend.wal import TIMELINE_SQL
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config
from router.core.failover import (
    Adopt,
    GiveUp,
    Promote,
    PromoteNow,
    ShardNodeState,
    decide_promotion,
)
from router.ha.topology import NodeState, Topology

__all__ = ["Promoter", "PromotionRecord"]

log = logging.getLogger("georoute.promoter")

STATE_SQL = (
    "SELECT pg_is_in_recovery(), (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::int8, "
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() "
    f"END - '0/0'::pg_lsn)::int8, {TIMELINE_SQL}"
)
LOCK_SQL = "SELECT pg_advisory_lock(hashtext($1))"
# The table is sql/023_georoute_failovers.sql's (a shard not migrated that far: not recorded).
INSERT_SQL = (
    "INSERT INTO georoute_failovers (shard, old_primary, new_primary, timeline, promoted_by, "
    f"reason) VALUES ($1, $2, $3, {TIMELINE_SQL}, $4, $5)"
)
ASYNC_SQL = "ALTER SYSTEM SET synchronous_standby_names = ''"
# The whole attempt (connect, locks, snapshot, promote) is bounded; a later heartbeat round
# tries again if the plan still says so.
ATTEMPT_SECONDS = 15.0
PROMOTE_WAIT_SECONDS = 10  # pg_promote's own wait for the promotion to finish
OLD_PRIMARY_CONNECT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    shard: str
    old_primary: str
    new_primary: str
    lsn: int
    seconds: float  # from the plan's promotion request to pg_promote's return
    reason: str

    def report(self) -> dict[str, Any]:
        return {"shard": self.shard, "old_primary": self.old_primary,
                "new_primary": self.new_primary, "lsn": self.lsn,
                "seconds": round(self.seconds, 3), "reason": self.reason}


class Promoter:
    """Carries out this node's promotion plans. `topology` is asked each time, as a reload
    replaces the daemon's."""

    def __init__(self, config: Config, topology: Callable[[], Topology],
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._config = config
        self._topology = topology
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.promotions: list[PromotionRecord] = []  # done by this router node
        self.last_step: dict[str, str] = {}  # shard -> the last step and its reason

    def request(self, plan: Promote) -> None:
        """Start carrying out `plan` unless this shard's previous attempt is still running."""
        task = self._tasks.get(plan.shard)
        if task is not None and not task.done():
            return
        self._tasks[plan.shard] = asyncio.create_task(self._attempt(plan),
                                                      name=f"promote:{plan.shard}")

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _attempt(self, plan: Promote) -> None:
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(ATTEMPT_SECONDS):
                await self._promote(plan, started)
        except Exception as exc:  # the heartbeat's next round asks again
            self.last_step[plan.shard] = f"failed: {type(exc).__name__}: {exc}"
            log.error("promotion for %s failed: %s: %s", plan.shard, type(exc).__name__, exc)

    async def _promote(self, plan: Promote, started: float) -> None:
        shard = self._topology().shards[plan.shard]
        old = shard.primary.name
        nodes = list(shard.nodes())
        conns: dict[str, asyncpg.Connection] = {}
        try:
            opened = await asyncio.gather(*(self._connect(n, n.name == old) for n in nodes))
            conns = {n.name: c for n, c in zip(nodes, opened, strict=True) if c is not None}
            lock = f"georoute-failover:{plan.shard}"
            for name in sorted(conns):
                if name != old:  # the old primary may be back: it is checked, never locked
                    await conns[name].execute(LOCK_SQL, lock)
            states = await asyncio.gather(*(self._state(n.name, conns.get(n.name))
                                            for n in nodes))
            step = decide_promotion(old, states)
            match step:
                case GiveUp(reason=reason) | Adopt(reason=reason):
                    self._said(plan.shard, f"{type(step).__name__.lower()}: {reason}")
                    return
                case PromoteNow():
                    pass
            conn = conns[step.replica]
            log.warning("promoting %s for shard %s (old primary %s): %s; plan: %s",
                        step.replica, plan.shard, old, step.reason, plan.reason)
            try:
                done = await conn.fetchval("SELECT pg_promote(true, $1)", PROMOTE_WAIT_SECONDS)
            except asyncpg.PostgresError as exc:  # e.g. "recovery is not in progress"
                self._said(plan.shard, f"adopt: pg_promote on {step.replica}: {exc}")
                return
            if not done:
                raise TimeoutError(f"{step.replica} did not finish its promotion in "
                                   f"{PROMOTE_WAIT_SECONDS} s")
            seconds = self._clock.monotonic() - started
            record = PromotionRecord(plan.shard, old, step.replica, step.lsn, seconds,
                                     f"{plan.reason}; {step.reason}")
            self.promotions.append(record)
            self._said(plan.shard, f"promoted {step.replica} in {seconds:.3f} s: {step.reason}")
            if self._config.shards[plan.shard].synchronous:
                # The new primary has no standby until the old one rejoins (which turns this
                # back on): with synchronous_standby_names set, every write would wait forever.
                await conn.execute(ASYNC_SQL)
                await conn.execute("SELECT pg_reload_conf()")
                log.warning("shard %s runs asynchronously on %s until a standby rejoins",
                            plan.shard, step.replica)
            try:
                await conn.execute(INSERT_SQL, plan.shard, old, step.replica,
                                   self._config.router.node_name, record.reason)
            except asyncpg.PostgresError as exc:  # the timeline is the agreement; this is a log
                log.warning("promotion of %s not recorded in georoute_failovers: %s",
                            step.replica, exc)
        finally:
            for conn in conns.values():  # closing releases the session locks
                conn.terminate()

    def _said(self, shard: str, step: str) -> None:
        if self.last_step.get(shard) != step:
            log.warning("failover of %s: %s", shard, step)
        self.last_step[shard] = step

    async def _connect(self, node: NodeState, old: bool) -> asyncpg.Connection | None:
        db = self._config.database
        # The old primary is only checked (is it back?): a frozen one (SIGSTOP) must not hold
        # the failover up for the whole connect timeout.
        bound = min(OLD_PRIMARY_CONNECT_SECONDS, db.connect_timeout_seconds) if old else None
        try:
            async with asyncio.timeout(bound):
                return await connect_asyncpg(db, node.address,
                                             {"application_name": "georoute-promoter"})
        except Exception as exc:  # unreachable: it cannot be promoted, nor be in the way
            log.info("promoter: %s unreachable: %s", node.name, exc)
            return None

    async def _state(self, name: str, conn: asyncpg.Connection | None) -> ShardNodeState:
        if conn is None:
            return ShardNodeState(name, None, None, None, None)
        try:
            row = await conn.fetchrow(STATE_SQL, timeout=self._config.database
                                      .connect_timeout_seconds)
        except Exception as exc:
            log.info("promoter: %s did not answer: %s", name, exc)
            return ShardNodeState(name, None, None, None, None)
        assert row is not None
        return ShardNodeState(name, bool(row[0]), row[1], row[2], row[3])

    def report(self) -> dict[str, Any]:
        return {"promotions": [p.report() for p in self.promotions],
                "last_step": dict(self.last_step)}
