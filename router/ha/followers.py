"""One standby of a shard pointed at the shard's primary, and what became of it: used by the
promoter after a promotion and by its reconciliation (router/ha/promoter.py), and by
`georoute cluster switchover` (router/tools/localcluster/failover_ops.py). The standby's
replication slot is made on the primary if missing, its primary_conninfo rewritten with only
host and port changed (router/core/conninfo.py), then `ALTER SYSTEM` and `pg_reload_conf()`
(PostgreSQL 13+ restarts the WAL receiver; recovery_target_timeline 'latest' follows the new
timeline). A failure is an outcome with its reason, never an exception: the shard's other
standbys are re-pointed all the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from router.config import NodeAddress
from router.core.conninfo import repoint_conninfo, sql_literal
from router.core.errors import ConninfoError
from router.core.reconcile import Upstream, judge_upstream

__all__ = ["FOLLOWER_ERRORS", "FollowOutcome", "FollowerResult", "follow_if_stale",
           "repoint_standby"]

FOLLOWER_SQL = "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')"
# Where a standby streams from: its setting, and its WAL receiver's state (no row: none runs).
UPSTREAM_SQL = (
    "SELECT pg_is_in_recovery(), current_setting('primary_conninfo'), "
    "(SELECT format('%s from %s:%s', status, sender_host, sender_port) "
    "FROM pg_stat_wal_receiver)"
)
# Reserved at once, so the WAL the standby still needs from the new primary is kept.
SLOT_SQL = (
    "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS "
    "(SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
)
# What can go wrong with one standby: the others are re-pointed all the same.
FOLLOWER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, ConninfoError, OSError,
                   TimeoutError)


class FollowOutcome(enum.Enum):
    """What became of one of the shard's other standbys after a promotion, or when the
    promoter's reconciliation looked at it."""

    REPOINTED = "repointed"  # its primary_conninfo now names the new primary
    ALREADY_FOLLOWING = "already_following"  # it named the new primary already
    NO_CONNINFO = "no_conninfo"  # it streams from nowhere (archive recovery): left alone
    LEFT_ALONE = "left_alone"  # it names a node router.toml does not (a cascade, a choice)
    FAILED = "failed"  # reading or changing its settings failed: the detail says why
    CANNOT_FOLLOW = "cannot_follow"  # WAL past the promotion point: pg_rewind first
    UNREACHABLE = "unreachable"  # it did not answer the promoter
    NOT_A_STANDBY = "not_a_standby"

    @property
    def follows(self) -> bool:
        return self in (FollowOutcome.REPOINTED, FollowOutcome.ALREADY_FOLLOWING)


# Reconciliation's answers, by where the standby's primary_conninfo points.
_LEFT_AS_IT_IS = {Upstream.PRIMARY: FollowOutcome.ALREADY_FOLLOWING,
                  Upstream.NONE: FollowOutcome.NO_CONNINFO,
                  Upstream.NOT_CONFIGURED: FollowOutcome.LEFT_ALONE,
                  Upstream.UNREADABLE: FollowOutcome.LEFT_ALONE}


@dataclass(frozen=True, slots=True)
class FollowerResult:
    replica: str
    outcome: FollowOutcome
    detail: str

    def report(self) -> dict[str, Any]:
        return {"replica": self.replica, "outcome": self.outcome.value, "detail": self.detail}

    def describe(self) -> str:
        return f"{self.replica} {self.outcome.value}"


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


async def follow_if_stale(name: str, standby: asyncpg.Connection | None,
                          primary: asyncpg.Connection, new: str, address: NodeAddress,
                          addresses: Mapping[str, tuple[str, int]],
                          statement_seconds: float) -> FollowerResult:
    """Where standby `name` streams from (router/core/reconcile.py judges its
    primary_conninfo against `addresses`, the shard's configured nodes), and re-pointed at
    `new` (reached at `address`) if that is a former primary of its shard."""
    if standby is None:
        return FollowerResult(name, FollowOutcome.UNREACHABLE, f"{name} did not answer")
    try:
        row = await standby.fetchrow(UPSTREAM_SQL, timeout=statement_seconds)
    except FOLLOWER_ERRORS as exc:
        return FollowerResult(name, FollowOutcome.FAILED,
                              f"reading where it streams from: {type(exc).__name__}: {exc}")
    assert row is not None
    if not row[0]:
        return FollowerResult(name, FollowOutcome.NOT_A_STANDBY,
                              f"{name} is writable, not a standby")
    judged = judge_upstream(name, row[1] or "", addresses, new)
    if judged.repoint:
        receiver = f" (WAL receiver: {row[2]})" if row[2] else " (no WAL receiver)"
        return await repoint_standby(name, standby, primary, new, address,
                                     judged.detail + receiver, statement_seconds)
    return FollowerResult(name, _LEFT_AS_IT_IS[judged.upstream], judged.detail)
