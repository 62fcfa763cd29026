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
4. still holding the locks, it re-points the shard's other standbys at the new primary
   (`plan_followers` says which can follow; router/ha/followers.py's `repoint_standby`
   rewrites each one's primary_conninfo). A standby that cannot follow, or did not answer,
   is logged and named in the report;
5. it records the promotion in `georoute_failovers` (sql/023) on the new primary (an audit
   trail that replicates with the data; the agreement itself is the timeline,
   router/core/primary.py),
   and closes its connections, which releases the locks.
Every router's monitor then follows the new primary by its timeline. A promoter that adopts
an earlier promotion re-points the standbys too (a promoter that stopped half-way is finished
by the next one); one that already follows the new primary is left unchanged.

Reconciliation (`reconcile`, every heartbeat round, on the one router node entitled to act:
router/core/reconcile.py decides) finds the standbys a promotion did not re-point from what
they say, not from what any router remembers: one that was down then and came back, one whose
re-point failed, one whose promoting router died or restarted. Under the same locks it reads
each due standby's primary_conninfo (and its WAL receiver, for the log) and re-points one
that names a former primary of its shard with `repoint_standby`, as a promotion does; one
that names somewhere router.toml does not is left alone and said once. A promotion cancels a
reconciliation of its shard that is under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from router.backend.tls import connect_asyncpg
from router.backend.wal import TIMELINE_SQL
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config, NodeAddress
from router.core.failover import (
    Adopt,
    FollowAction,
    FollowerPlan,
    GiveUp,
    Promote,
    PromoteNow,
    ShardNodeState,
    decide_promotion,
    plan_followers,
)
from router.core.health import NodeHealth
from router.core.reconcile import CheckWait, NodeSeen, due_standbys, wait_after
from router.ha.followers import FollowerResult, FollowOutcome, follow_if_stale, repoint_standby
from router.ha.topology import NodeState, ShardState, Topology

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


# Outcomes looked at again sooner, after a wait that doubles (router/core/reconcile.py,
# wait_after): the standby did not answer, or answered but its re-point failed (a full disk,
# a permission, a lost connection).
_TRY_AGAIN = (FollowOutcome.UNREACHABLE, FollowOutcome.FAILED)

_LEFT = {FollowAction.CANNOT_FOLLOW: FollowOutcome.CANNOT_FOLLOW,
         FollowAction.UNREACHABLE: FollowOutcome.UNREACHABLE,
         FollowAction.NOT_A_STANDBY: FollowOutcome.NOT_A_STANDBY}


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    shard: str
    old_primary: str
    new_primary: str
    lsn: int
    seconds: float  # from the plan's promotion request to pg_promote's return
    reason: str
    followers: tuple[FollowerResult, ...] = ()  # the shard's other nodes, re-pointed or not

    def report(self) -> dict[str, Any]:
        return {"shard": self.shard, "old_primary": self.old_primary,
                "new_primary": self.new_primary, "lsn": self.lsn,
                "seconds": round(self.seconds, 3), "reason": self.reason,
                "followers": [f.report() for f in self.followers]}


class Promoter:
    """Carries out this node's promotion plans. `topology` is asked each time, as a reload
    replaces the daemon's."""

    def __init__(self, config: Config, topology: Callable[[], Topology],
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._config = config
        self._topology = topology
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}  # shard -> its promotion
        self._looking: dict[str, asyncio.Task[None]] = {}  # shard -> its reconciliation
        self.promotions: list[PromotionRecord] = []  # done by this router node
        self.last_step: dict[str, str] = {}  # shard -> the last step and its reason
        # shard -> replica -> what became of it under the shard's current primary (a
        # promotion's re-point, or reconciliation's), as far as this node has seen
        self.followers: dict[str, dict[str, FollowerResult]] = {}
        self._followers_of: dict[str, str] = {}  # shard -> the primary `followers` is about
        # shard -> standby -> when to look at it again: a rate limit, not a record (a router
        # that lost it looks at once)
        self._waits: dict[str, dict[str, CheckWait]] = {}
        self._told: dict[str, str] = {}  # standby -> what was last logged of it, said once

    def request(self, plan: Promote) -> None:
        """Start carrying out `plan` unless this shard's previous attempt is still running. A
        reconciliation of the shard's standbys under way is cancelled: it must not hold the
        promotion up (its connections close, its locks go with them; a later look redoes it)."""
        task = self._tasks.get(plan.shard)
        if task is not None and not task.done():
            return
        looking = self._looking.pop(plan.shard, None)
        if looking is not None:
            looking.cancel()
        self._tasks[plan.shard] = asyncio.create_task(self._attempt(plan),
                                                      name=f"promote:{plan.shard}")

    def reconcile(self, shard: ShardState) -> None:
        """Called every heartbeat round on the router node entitled to act for `shard`
        (router/core/reconcile.py, `reconciler_for`): look at the standbys that are due, by
        this node's monitor and their waits, and re-point those that still stream from a
        former primary. Not while this shard's promotion or previous look is running."""
        if any(task is not None and not task.done()
               for task in (self._tasks.get(shard.name), self._looking.get(shard.name))):
            return
        seen = [NodeSeen(n.name, n.health is NodeHealth.UP, n.in_recovery, n.fenced)
                for n in shard.nodes()]
        check = due_standbys(shard.primary.name, seen, self._waits.get(shard.name, {}),
                             self._clock.monotonic())
        self._waits[shard.name] = dict(check.waits)
        if check.due:
            self._looking[shard.name] = asyncio.create_task(
                self._reconcile(shard.name, shard.primary.name, check.due),
                name=f"reconcile:{shard.name}")

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._looking.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._looking.clear()

    async def _attempt(self, plan: Promote) -> None:
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(ATTEMPT_SECONDS):
                await self._promote(plan, started)
        except Exception as exc:  # the heartbeat's next round asks again
            self.last_step[plan.shard] = f"failed: {type(exc).__name__}: {exc}"
            log.error("promotion for %s failed: %s: %s", plan.shard, type(exc).__name__, exc)

    async def _reconcile(self, shard: str, primary: str, names: tuple[str, ...]) -> None:
        nodes = {n.name: n for n in self._topology().shards[shard].nodes()}
        addresses = {name: (n.address.host, n.address.port) for name, n in nodes.items()}
        wanted = [nodes[name] for name in (primary, *names) if name in nodes]
        conns: dict[str, asyncpg.Connection] = {}
        results: dict[str, FollowerResult] = {}
        try:
            async with asyncio.timeout(ATTEMPT_SECONDS):
                conns = await self._connect_all(wanted, old=None)
                for name in sorted(conns):  # the promoters' lock: never beside a promotion
                    if name != primary:
                        await conns[name].execute(LOCK_SQL, f"georoute-failover:{shard}")
                head = await self._state(primary, conns.get(primary))
                if head.in_recovery is not False:
                    raise ConnectionError(f"{primary} is not a writable primary (any more)")
                for name in names:
                    results[name] = await follow_if_stale(
                        name, conns.get(name), conns[primary], primary,
                        nodes[primary].address, addresses,
                        self._config.database.connect_timeout_seconds)
        except Exception as exc:  # looked at again after a wait that doubles
            for name in names:
                results.setdefault(name, FollowerResult(
                    name, FollowOutcome.FAILED,
                    f"looking at where it streams from: {type(exc).__name__}: {exc}"))
        finally:
            for conn in conns.values():  # closing releases the session locks
                conn.terminate()
        done = tuple(results[name] for name in names)
        for result in done:
            self._tell(shard, primary, result)
        self._record(shard, primary, done)
        acted = tuple(r for r in done if r.outcome is FollowOutcome.REPOINTED
                      or r.outcome in _TRY_AGAIN)
        if acted:
            self._said(shard, f"reconcile: standbys of {primary}" + _summary(acted))

    def _tell(self, shard: str, primary: str, result: FollowerResult) -> None:
        """Log what reconciliation found of a standby: a change at once, the same news once."""
        outcome = result.outcome
        if outcome is FollowOutcome.REPOINTED:
            log.warning("standby %s of %s now follows %s: %s", result.replica, shard, primary,
                        result.detail)
        elif outcome in _TRY_AGAIN:  # each try, and tries wait longer and longer
            log.error("standby %s of %s: %s (%s), looked at again later", result.replica,
                      shard, result.detail, outcome.value)
        elif self._told.get(result.replica) != f"{outcome.value}:{result.detail}":
            level = (logging.DEBUG if outcome is FollowOutcome.ALREADY_FOLLOWING
                     else logging.WARNING)
            log.log(level, "standby %s of %s: %s (%s)", result.replica, shard, result.detail,
                    outcome.value)
        self._told[result.replica] = f"{outcome.value}:{result.detail}"

    def _record(self, shard: str, primary: str, results: Sequence[FollowerResult]) -> None:
        """Keep what became of each standby under `primary` for the report (a re-point stays
        there while later looks find it following) and when to look at it again."""
        now = self._clock.monotonic()
        if self._followers_of.get(shard) != primary:
            self._followers_of[shard] = primary
            self.followers[shard] = {}  # a new primary: what was said under the last is history
        done = self.followers.setdefault(shard, {})
        waits = self._waits.setdefault(shard, {})
        for result in results:
            waits[result.replica] = wait_after(waits.get(result.replica), primary,
                                               result.outcome in _TRY_AGAIN, now)
            before = done.get(result.replica)
            if not (result.outcome is FollowOutcome.ALREADY_FOLLOWING and before is not None
                    and before.outcome.follows):
                done[result.replica] = result

    async def _promote(self, plan: Promote, started: float) -> None:
        shard = self._topology().shards[plan.shard]
        old = shard.primary.name
        nodes = list(shard.nodes())
        conns: dict[str, asyncpg.Connection] = {}
        try:
            conns = await self._connect_all(nodes, old=old)
            lock = f"georoute-failover:{plan.shard}"
            for name in sorted(conns):
                if name != old:  # the old primary may be back: it is checked, never locked
                    await conns[name].execute(LOCK_SQL, lock)
            states = await asyncio.gather(*(self._state(n.name, conns.get(n.name))
                                            for n in nodes))
            step = decide_promotion(old, states, {n.name for n in nodes if n.fenced},
                                    shard.timeline_floor)
            match step:
                case GiveUp(reason=reason):
                    self._said(plan.shard, f"giveup: {reason}")
                    return
                case Adopt(node=node, reason=reason):
                    # A promoter stopped between pg_promote and this step: finish its work.
                    followers = await self._repoint(plan.shard, old, node, None, states, conns)
                    self._said(plan.shard, f"adopt: {reason}" + _summary(followers))
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
            promoted = f"promoted {step.replica} in {seconds:.3f} s: {step.reason}"
            self._said(plan.shard, promoted)
            if self._config.shards[plan.shard].synchronous:
                # Until the old primary rejoins (which turns this back on), the shard runs
                # asynchronously: with synchronous_standby_names set, every write would wait
                # for a standby, and the re-pointed ones (below) may not stream yet, or ever
                # (one may be unreachable). README, "High availability", says so.
                await conn.execute(ASYNC_SQL)
                await conn.execute("SELECT pg_reload_conf()")
                log.warning("shard %s runs asynchronously on %s until a standby rejoins",
                            plan.shard, step.replica)
            followers = await self._repoint(plan.shard, old, step.replica, step.lsn, states,
                                            conns)
            record = PromotionRecord(plan.shard, old, step.replica, step.lsn, seconds,
                                     f"{plan.reason}; {step.reason}", followers)
            self.promotions.append(record)
            if followers:
                self._said(plan.shard, promoted + _summary(followers))
            try:
                await conn.execute(INSERT_SQL, plan.shard, old, step.replica,
                                   self._config.router.node_name, record.reason)
            except asyncpg.PostgresError as exc:  # the timeline is the agreement; this is a log
                log.warning("promotion of %s not recorded in georoute_failovers: %s",
                            step.replica, exc)
        finally:
            for conn in conns.values():  # closing releases the session locks
                conn.terminate()

    async def _repoint(self, shard: str, old: str, new: str, promotion_lsn: int | None,
                       states: Sequence[ShardNodeState],
                       conns: dict[str, asyncpg.Connection]) -> tuple[FollowerResult, ...]:
        """Point the shard's other standbys at `new`, as `plan_followers` says; one result per
        node other than the old and new primary, each logged."""
        address = next(n.address for n in self._topology().shards[shard].nodes()
                       if n.name == new)
        results: list[FollowerResult] = []
        for plan in plan_followers(old, new, promotion_lsn, states):
            if plan.action is FollowAction.REPOINT:
                result = await self._follow(plan, conns[plan.replica], conns[new], new, address)
            else:
                result = FollowerResult(plan.replica, _LEFT[plan.action], plan.reason)
            if result.outcome is FollowOutcome.ALREADY_FOLLOWING:
                log.info("failover of %s: %s follows %s: %s", shard, result.replica, new,
                         result.detail)
            elif result.outcome is FollowOutcome.REPOINTED:
                log.warning("failover of %s: %s follows %s: %s", shard, result.replica, new,
                            result.detail)
            else:
                log.error("failover of %s: %s does not follow %s (%s): %s", shard,
                          result.replica, new, result.outcome.value, result.detail)
            results.append(result)
        self._record(shard, new, results)
        return tuple(results)

    async def _follow(self, plan: FollowerPlan, standby: asyncpg.Connection,
                      primary: asyncpg.Connection, new: str,
                      address: NodeAddress) -> FollowerResult:
        return await repoint_standby(plan.replica, standby, primary, new, address, plan.reason,
                                     self._config.database.connect_timeout_seconds)

    def _said(self, shard: str, step: str) -> None:
        if self.last_step.get(shard) != step:
            log.warning("failover of %s: %s", shard, step)
        self.last_step[shard] = step

    async def _connect_all(self, nodes: Sequence[NodeState],
                           old: str | None) -> dict[str, asyncpg.Connection]:
        """A connection to each of `nodes` that answers (`old`: the old primary's name, only
        checked), at once. Cancelled part way (an attempt's time is up), the connections
        already made are closed: they would stay open on their nodes, one more at each
        attempt, while a failover keeps failing."""
        tasks = [asyncio.ensure_future(self._connect(n, n.name == old)) for n in nodes]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled() and task.exception() is None:
                    made = task.result()
                    if made is not None:
                        made.terminate()
            raise
        return {n.name: c for n, t in zip(nodes, tasks, strict=True)
                if (c := t.result()) is not None}

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
                "last_step": dict(self.last_step),
                "followers": {shard: [f.report() for f in done.values()]
                              for shard, done in self.followers.items()}}


def _summary(followers: tuple[FollowerResult, ...]) -> str:
    if not followers:
        return ""
    return "; standbys: " + ", ".join(f.describe() for f in followers)
