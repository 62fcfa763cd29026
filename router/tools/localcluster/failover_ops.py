"""`georoute cluster rejoin NODE` and `georoute cluster switchover SHARD [--to NODE]` on the
local cluster: turning a fenced old primary into a streaming replica of the agreed primary
(pg_rewind, then start as a standby), and a planned change of primary with no acknowledged
write lost. Which node is the agreed primary is the routers' rule (router/core/primary.py):
the writable node on the newest timeline.

Switchover, step by step, and why no acknowledged write is lost: the primary is stopped with
a fast shutdown, which ends its client sessions and writes a shutdown checkpoint, and its WAL
senders send every byte up to that checkpoint before they exit; the target is promoted only
once it has replayed past that checkpoint (read from pg_controldata), so every transaction
the old primary acknowledged is on it. Routers in managed or external mode hold the shard's
writes meanwhile (`[failover] write_buffer_seconds`) and follow the new primary by its
timeline; the pause is measured from the stop to the new primary taking writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from router.backend.wal import TIMELINE_SQL
from router.config import NodeAddress
from router.core.primary import NodeSays, choose_primary
from router.errors import ClusterError
from router.ha.followers import FollowerResult, FollowOutcome, repoint_standby
from router.tools.localcluster.postgres import PgNode, PgRunner, poll_until
from router.tools.localcluster.process import run_checked

__all__ = ["RejoinReport", "SwitchoverReport", "agreed_primary", "rejoin", "switchover"]

IDENTITY_SQL = (
    "SELECT pg_is_in_recovery(), "
    "(pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::int8, "
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() "
    f"END - '0/0'::pg_lsn)::int8, {TIMELINE_SQL}"
)
LOCK_SQL = "SELECT pg_advisory_lock(hashtext($1))"  # the routers' promoter takes the same
REWOUND_START_SECONDS = 20
log = logging.getLogger("georoute.cluster")


@dataclass(frozen=True, slots=True)
class RejoinReport:
    node: str
    primary: str
    seconds: float

    def describe(self) -> str:
        return (f"{self.node} streams from {self.primary} "
                f"(rejoined in {self.seconds:.2f} s)")


@dataclass(frozen=True, slots=True)
class SwitchoverReport:
    shard: str
    old_primary: str
    new_primary: str
    pause_seconds: float  # the old primary stopped -> the new one takes writes
    lsn: int  # the old primary's shutdown checkpoint, replayed by the new one before promotion
    rejoin: RejoinReport
    followers: tuple[FollowerResult, ...] = ()  # the shard's other standbys, re-pointed

    def describe(self) -> str:
        followed = "".join(f"; {f.describe()}" for f in self.followers)
        return (f"{self.shard}: {self.new_primary} is the primary (was {self.old_primary}); "
                f"writes paused {self.pause_seconds:.2f} s{followed}; "
                f"{self.rejoin.describe()}")


async def _identity(runner: PgRunner, node: PgNode) -> tuple[Any, ...] | None:
    try:
        row = await runner.fetchrow(node.port, IDENTITY_SQL)
    except Exception:  # unreachable: it says nothing
        return None
    return None if row is None else tuple(row)


async def agreed_primary(runner: PgRunner, nodes: list[PgNode]) -> tuple[PgNode, dict[str, Any]]:
    """The shard's agreed primary (the writable node on the newest timeline) and what each node
    said: name -> (in_recovery, received, replayed, timeline), or None."""
    rows = await asyncio.gather(*(_identity(runner, n) for n in nodes))
    said = dict(zip((n.name for n in nodes), rows, strict=True))
    choice = choose_primary(nodes[0].name, [
        NodeSays(name, None if row is None else bool(row[0]), None if row is None else row[3])
        for name, row in said.items()
    ])
    primary = next(n for n in nodes if n.name == choice.primary)
    row = said[primary.name]
    if row is None or row[0]:
        raise ClusterError(f"shard {primary.shard} has no writable primary: "
                           f"{choice.detail}")
    return primary, said


async def rejoin(runner: PgRunner, node: PgNode, nodes: list[PgNode], synchronous: bool = False,
                 within: float = 60.0) -> RejoinReport:
    """Make `node` a streaming replica of its shard's agreed primary: stop it, pg_rewind it
    from the primary (nothing to undo after a clean switchover; the old timeline's writes that
    never reached the primary after a failover), start it as a standby on its own slot."""
    started = time.monotonic()
    deadline = started + within
    primary, _ = await agreed_primary(runner, nodes)
    if primary.name == node.name:
        raise ClusterError(f"{node.name} is its shard's primary: there is nothing to rejoin")
    await asyncio.to_thread(runner.stop, node, "fast")
    # The slot first, so that no WAL the new standby needs is recycled; the checkpoint so that
    # pg_rewind sees the primary's new timeline in its control file (PG 15 said "same
    # timeline" and did nothing without it).
    await runner.fetchrow(
        primary.port,
        "SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS "
        "(SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", node.slot,
    )
    await runner.fetchrow(primary.port, "CHECKPOINT")
    pgdata = runner.layout.pgdata(node.name)
    source = f"host=127.0.0.1 port={primary.port} user={runner.db_user} dbname=postgres"
    await asyncio.to_thread(
        run_checked,
        [runner.bins.tool("pg_rewind"), f"--target-pgdata={pgdata}", "-R",
         f"--source-server={source}"],
        f"pg_rewind of {node.name} from {primary.name}", 300, **runner.user_kwargs(),
    )
    await asyncio.to_thread(_append, pgdata / "postgresql.auto.conf",
                            f"primary_slot_name = '{node.slot}'\n")
    try:
        await asyncio.to_thread(runner.start, node, REWOUND_START_SECONDS)
    except ClusterError as exc:
        # It cannot reach a consistent state: the WAL it needs from before the fork is gone
        # from the primary. Start again from a fresh copy, as a new replica would be made.
        log.warning("%s did not start after pg_rewind (%s): making it again with "
                    "pg_basebackup from %s", node.name, exc, primary.name)
        await asyncio.to_thread(runner.stop, node, "immediate")
        await runner.drop_inactive_slot(primary.port, node.slot)
        await asyncio.to_thread(runner.basebackup, node, primary.port)
        await asyncio.to_thread(runner.start, node)
    await runner.wait_streaming(node, primary.port, deadline)
    if synchronous:  # a standby streams again: writes wait for it again
        await runner.set_synchronous(primary.port, True)
    return RejoinReport(node.name, primary.name, time.monotonic() - started)


async def switchover(
    runner: PgRunner, nodes: list[PgNode], to: str | None = None, synchronous: bool = False,
    within: float = 60.0,
) -> SwitchoverReport:
    """A planned change of the shard's primary to `to` (default: the most advanced standby),
    with no acknowledged write lost (the module's docstring says why), then the old primary
    rejoined as a standby of the new one."""
    old, said = await agreed_primary(runner, nodes)
    standbys = [n for n in nodes if said[n.name] is not None and said[n.name][0]]
    if to is not None:
        target = next((n for n in standbys if n.name == to), None)
        if target is None:
            raise ClusterError(f"{to} is not a reachable standby of shard {old.shard} "
                               f"(standbys: {', '.join(n.name for n in standbys) or 'none'})")
    elif standbys:
        target = max(standbys, key=lambda n: (said[n.name][1] or 0, said[n.name][2] or 0))
    else:
        raise ClusterError(f"shard {old.shard} has no reachable standby to switch over to")
    deadline = time.monotonic() + within
    stopped = time.monotonic()
    await asyncio.to_thread(runner.stop, old, "fast")
    final = _lsn_to_int(_checkpoint_location(runner, old))
    assert final is not None

    async def replayed() -> bool | None:
        row = await runner.fetchrow(target.port, IDENTITY_SQL)
        return True if row is not None and (row[2] or 0) > final else None

    try:
        await poll_until(replayed, deadline, f"{target.name} to replay past {final}")
    except ClusterError:
        await asyncio.to_thread(runner.start, old)  # nothing changed: the old primary is back
        raise
    conn = await runner.connect(target.port)
    try:
        await conn.execute(LOCK_SQL, f"georoute-failover:{old.shard}")
        if await conn.fetchval("SELECT pg_is_in_recovery()"):  # (a router may have promoted)
            if not await conn.fetchval("SELECT pg_promote(true, 30)"):
                raise ClusterError(f"{target.name} did not finish its promotion in 30 s")
    finally:
        await conn.close()
    if synchronous:  # no standby until the old primary rejoins: writes must not wait for one
        await runner.set_synchronous(target.port, False)
    pause = time.monotonic() - stopped
    # The shard's other standbys asked the old primary for WAL: they follow the new one. They
    # have no WAL past the old primary's shutdown checkpoint, which the new one replayed.
    followers = await _repoint_others(runner, target, [n for n in standbys if n is not target])
    report = await rejoin(runner, old, nodes, synchronous, max(1.0, deadline - time.monotonic()))
    return SwitchoverReport(old.shard, old.name, target.name, pause, final, report, followers)


async def _repoint_others(runner: PgRunner, target: PgNode,
                          others: list[PgNode]) -> tuple[FollowerResult, ...]:
    """Each of `others` re-pointed at `target` as the promoter re-points a shard's standbys
    after a failover (router/ha/followers.py, repoint_standby)."""
    if not others:
        return ()
    address = NodeAddress("127.0.0.1", target.port, target.database)
    results = []
    primary = await runner.connect(target.port)
    try:
        for node in others:
            try:
                standby = await runner.connect(node.port)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                results.append(FollowerResult(node.name, FollowOutcome.UNREACHABLE,
                                              f"{type(exc).__name__}: {exc}"))
                continue
            try:
                results.append(await repoint_standby(
                    node.name, standby, primary, target.name, address,
                    f"{node.name} is a standby: it follows {target.name}", 10.0))
            finally:
                await standby.close()
    finally:
        await primary.close()
    for result in results:
        log.log(logging.INFO if result.outcome.follows else logging.ERROR,
                "switchover: %s", result.describe() + f" ({result.detail})")
    return tuple(results)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


def _checkpoint_location(runner: PgRunner, node: PgNode) -> str:
    out = run_checked([runner.bins.tool("pg_controldata"), "-D",
                       str(runner.layout.pgdata(node.name))],
                      f"pg_controldata of {node.name}", 30, **runner.user_kwargs())
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Latest checkpoint location":
            return value.strip()
    raise ClusterError(f"pg_controldata of {node.name} shows no checkpoint location")


def _lsn_to_int(lsn: str | None) -> int | None:
    """pg_controldata's "X/Y" as bytes from 0/0 (as router/backend/wal.py reads positions)."""
    if not lsn:
        return None
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) + int(lo, 16)
