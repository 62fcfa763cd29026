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
   (`plan_followers` says which can follow): the standby's replication slot is made on the
   new primary if missing, then its primary_conninfo is rewritten with only host and port
   changed (router/core/conninfo.py), `ALTER SYSTEM` and `pg_reload_conf()` (PostgreSQL 13+
   restarts the WAL receiver; recovery_target_timeline 'latest' follows the new timeline).
   A standby that cannot follow, or did not answer, is logged and named in the report; one
   that did not answer, or whose re-point failed, is tried again by this node when the
   monitor sees it up, after a wait that doubles with each failed try (at most a minute);
5. it records the promotion in `georoute_failovers` (sql/023) on the new primary (an audit
   trail that replicates with the data; the agreement itself is the timeline,
   router/core/primary.py),
   and closes its connections, which releases the locks.
Every router's monitor then follows the new primary by its timeline. A promoter that adopts
an earlier promotion re-points the standbys too (a promoter that stopped half-way is finished
by the next one); one that already follows the new primary is left unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from router.backend.tls import connect_asyncpg
from router.backend.wal import TIMELINE_SQL
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config, NodeAddress
from router.core.conninfo import repoint_conninfo, sql_literal
from router.core.errors import ConninfoError
from router.core.failover import (
    Adopt,
    FollowAction,
    FollowerPlan,
    GiveUp,
    LeftBehind,
    Promote,
    PromoteNow,
    ShardNodeState,
    decide_promotion,
    followers_to_retry,
    left_behind_after,
    plan_followers,
)
from router.core.health import NodeHealth
from router.ha.topology import NodeState, ShardState, Topology

__all__ = ["FollowOutcome", "FollowerResult", "Promoter", "PromotionRecord", "repoint_standby"]

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
FOLLOWER_SQL = "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')"
# Reserved at once, so the WAL the standby still needs from the new primary is kept.
SLOT_SQL = (
    "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS "
    "(SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
)
# What can go wrong with one standby: the others are re-pointed all the same.
FOLLOWER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, ConninfoError, OSError,
                   TimeoutError)
# The whole attempt (connect, locks, snapshot, promote) is bounded; a later heartbeat round
# tries again if the plan still says so.
ATTEMPT_SECONDS = 15.0
PROMOTE_WAIT_SECONDS = 10  # pg_promote's own wait for the promotion to finish
OLD_PRIMARY_CONNECT_SECONDS = 0.5


class FollowOutcome(enum.Enum):
    """What became of one of the shard's other standbys after a promotion."""

    REPOINTED = "repointed"  # its primary_conninfo now names the new primary
    ALREADY_FOLLOWING = "already_following"  # it named the new primary already
    NO_CONNINFO = "no_conninfo"  # it streams from nowhere (archive recovery): left alone
    FAILED = "failed"  # reading or changing its settings failed: the detail says why
    CANNOT_FOLLOW = "cannot_follow"  # WAL past the promotion point: pg_rewind first
    UNREACHABLE = "unreachable"  # it did not answer the promoter
    NOT_A_STANDBY = "not_a_standby"

    @property
    def follows(self) -> bool:
        return self in (FollowOutcome.REPOINTED, FollowOutcome.ALREADY_FOLLOWING)


# Outcomes tried again (router/core/failover.py, left_behind_after): the standby did not
# answer, or answered but its re-point failed (a full disk, a permission, a lost connection).
_TRY_AGAIN = (FollowOutcome.UNREACHABLE, FollowOutcome.FAILED)


_LEFT = {FollowAction.CANNOT_FOLLOW: FollowOutcome.CANNOT_FOLLOW,
         FollowAction.UNREACHABLE: FollowOutcome.UNREACHABLE,
         FollowAction.NOT_A_STANDBY: FollowOutcome.NOT_A_STANDBY}


@dataclass(frozen=True, slots=True)
class FollowerResult:
    replica: str
    outcome: FollowOutcome
    detail: str

    def report(self) -> dict[str, Any]:
        return {"replica": self.replica, "outcome": self.outcome.value, "detail": self.detail}

    def describe(self) -> str:
        return f"{self.replica} {self.outcome.value}"


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
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.promotions: list[PromotionRecord] = []  # done by this router node
        self.last_step: dict[str, str] = {}  # shard -> the last step and its reason
        # shard -> replica -> what became of it after this node's newest promotion there
        self.followers: dict[str, dict[str, FollowerResult]] = {}
        self._left: dict[str, LeftBehind] = {}  # shard -> standbys to re-point when back

    def request(self, plan: Promote) -> None:
        """Start carrying out `plan` unless this shard's previous attempt is still running."""
        task = self._tasks.get(plan.shard)
        if task is not None and not task.done():
            return
        self._tasks[plan.shard] = asyncio.create_task(self._attempt(plan),
                                                      name=f"promote:{plan.shard}")

    def follow_up(self, shard: ShardState) -> None:
        """Called every heartbeat round: re-point the standbys this node's promotion left
        behind (unreachable then) once the monitor sees them up and in recovery again."""
        left = self._left.get(shard.name)
        task = self._tasks.get(shard.name)
        if left is None or (task is not None and not task.done()):
            return
        back = followers_to_retry(left, shard.primary.name, [
            n.name for n in shard.replicas if n.health is NodeHealth.UP and n.in_recovery],
            self._clock.monotonic())
        if back is None:
            del self._left[shard.name]
        elif back:
            self._tasks[shard.name] = asyncio.create_task(self._follow_later(shard.name, back),
                                                          name=f"follow:{shard.name}")

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

    async def _follow_later(self, shard: str, names: tuple[str, ...]) -> None:
        left = self._left[shard]
        nodes = [n for n in self._topology().shards[shard].nodes()
                 if n.name in names or n.name == left.new_primary]
        conns: dict[str, asyncpg.Connection] = {}
        try:
            async with asyncio.timeout(ATTEMPT_SECONDS):
                opened = await asyncio.gather(*(self._connect(n, False) for n in nodes))
                conns = {n.name: c for n, c in zip(nodes, opened, strict=True)
                         if c is not None}
                for name in sorted(conns):  # the promoters' lock: never beside a promotion
                    if name != left.new_primary:
                        await conns[name].execute(LOCK_SQL, f"georoute-failover:{shard}")
                states = await asyncio.gather(*(self._state(n.name, conns.get(n.name))
                                                for n in nodes))
                new = next(s for s in states if s.name == left.new_primary)
                if new.in_recovery is not False:
                    return  # not the writable primary it was: the next round looks again
                followers = await self._repoint(shard, left.old_primary, left.new_primary,
                                                left.promotion_lsn, states, conns)
                self._said(shard, f"standbys back after the promotion of {left.new_primary}"
                           + _summary(followers))
        except Exception as exc:  # a later heartbeat round tries again, after a wait
            self._left[shard] = left_behind_after(
                self._left.get(shard), left.old_primary, left.new_primary, left.promotion_lsn,
                names, names, self._clock.monotonic()) or left
            log.error("re-pointing %s's standbys %s failed: %s: %s (tried again in %.0f s)",
                      shard, ", ".join(names), type(exc).__name__, exc,
                      self._left[shard].not_before - self._clock.monotonic())
        finally:
            for conn in conns.values():
                conn.terminate()

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
        done = self.followers.setdefault(shard, {})
        previous = self._left.get(shard)
        if previous is None or previous.new_primary != new:
            done.clear()  # a new promotion: what earlier ones said is history
        for result in results:
            done[result.replica] = result
        left = left_behind_after(
            previous, old, new, promotion_lsn, [r.replica for r in results],
            [r.replica for r in results if r.outcome in _TRY_AGAIN], self._clock.monotonic())
        if left is not None:
            self._left[shard] = left
        else:
            self._left.pop(shard, None)
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


async def repoint_standby(replica: str, standby: asyncpg.Connection,
                          primary: asyncpg.Connection, new: str, address: NodeAddress,
                          reason: str, statement_seconds: float) -> FollowerResult:
    """Point `replica` (its connection: `standby`) at `new`, the shard's primary (`primary`,
    reached by the standby at `address`): its replication slot made there if it uses one,
    its primary_conninfo's host and port rewritten, the configuration reloaded. What became
    of it, and why; a failure is an outcome, not an exception. Each statement has at most
    `statement_seconds`."""
    try:
        row = await standby.fetchrow(FOLLOWER_SQL, timeout=statement_seconds)
        assert row is not None
        conninfo, slot = row[0] or "", row[1] or ""
        if not conninfo.strip():
            return FollowerResult(replica, FollowOutcome.NO_CONNINFO,
                                  f"{replica} has no primary_conninfo: left as it is")
        # The address as router.toml names it: the standby connects, not this router, so
        # never database.socket_dir (a path on the router's machine).
        rewritten = repoint_conninfo(conninfo, address.host, address.port)
        if slot:  # not replicated from the old primary: the new one needs its own
            await primary.execute(SLOT_SQL, slot, timeout=statement_seconds)
        if rewritten == conninfo:
            return FollowerResult(replica, FollowOutcome.ALREADY_FOLLOWING,
                                  f"its primary_conninfo names {new} already")
        await standby.execute(f"ALTER SYSTEM SET primary_conninfo = {sql_literal(rewritten)}",
                              timeout=statement_seconds)
        await standby.execute("SELECT pg_reload_conf()", timeout=statement_seconds)
    except FOLLOWER_ERRORS as exc:
        return FollowerResult(replica, FollowOutcome.FAILED,
                              f"re-pointing it at {new}: {type(exc).__name__}: {exc}")
    slot_said = f", slot {slot}" if slot else ""
    return FollowerResult(replica, FollowOutcome.REPOINTED,
                          f"{reason}; primary_conninfo now {address.label}{slot_said}")
