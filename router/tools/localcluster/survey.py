"""Asking every PostgreSQL node what it is: role (pg_is_in_recovery), WAL position, and for
replicas the replication state seen by their shard's primary and the lag in bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from router.backend.wal import NODE_POSITION
from router.tools.localcluster.postgres import PgNode, PgRunner
from router.tools.localcluster.status import NodeStatus, ProcessState
from router.types import Role

__all__ = ["collect_status"]

_NODE_SQL = f"""
SELECT pg_is_in_recovery() AS in_recovery, {NODE_POSITION} AS lsn,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver
"""
_SLOTS_SQL = """
SELECT s.slot_name, r.state FROM pg_replication_slots s
LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
"""


@dataclass(slots=True)
class _Seen:
    node: PgNode
    pid: int | None
    in_recovery: bool | None = None
    lsn: int | None = None
    receiver: str | None = None
    slots: dict[str, str | None] | None = None


async def _probe(runner: PgRunner, seen: _Seen) -> None:
    if seen.pid is None:
        return
    try:
        conn = await runner.connect(seen.node.port)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return
    try:
        row = await conn.fetchrow(_NODE_SQL)
        if row is None:
            return
        seen.in_recovery = bool(row["in_recovery"])
        seen.lsn = row["lsn"]
        seen.receiver = row["receiver"]
        if not seen.in_recovery:
            seen.slots = {r["slot_name"]: r["state"] for r in await conn.fetch(_SLOTS_SQL)}
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return
    finally:
        await conn.close()


async def collect_status(runner: PgRunner, nodes: list[PgNode]) -> list[NodeStatus]:
    seen = [_Seen(node, runner.pid(node)) for node in nodes]
    await asyncio.gather(*(_probe(runner, s) for s in seen))
    # After a failover the shard's primary may be a node configured as a replica.
    primaries: dict[str, _Seen] = {}
    for s in seen:
        if s.in_recovery is False and (s.node.shard not in primaries or not s.node.is_replica):
            primaries[s.node.shard] = s
    out: list[NodeStatus] = []
    for s in seen:
        state = ProcessState.RUNNING if s.pid else ProcessState.STOPPED
        if not s.in_recovery:
            role = None if s.in_recovery is None else Role.PRIMARY
            out.append(NodeStatus(s.node.name, s.node.shard, role, s.node.port, s.pid, state))
            continue
        primary = primaries.get(s.node.shard)
        replication = s.receiver or "disconnected"
        lag: int | None = None
        if primary is not None and primary.slots is not None:
            replication = primary.slots.get(s.node.slot) or replication
            if primary.lsn is not None and s.lsn is not None:
                lag = max(0, primary.lsn - s.lsn)
        out.append(NodeStatus(
            s.node.name, s.node.shard, Role.REPLICA, s.node.port, s.pid, state, replication, lag
        ))
    return out
