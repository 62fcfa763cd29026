"""Forgets idempotency keys once no client retry can still carry them.

Keyed writes record their key in `georoute_idempotency` on the shard's primary (executor.py).
Without a sweep the table only grows; `sweep_once` deletes keys older than the configured
retention on every reachable primary, and `run_sweeper` repeats that in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from router.pool import NodeUnavailableError, PoolTimeoutError
from router.topology import Topology

__all__ = ["run_sweeper", "sweep_once"]

log = logging.getLogger("georoute.idempotency")

SWEEP_SQL = (
    "DELETE FROM georoute_idempotency WHERE created_at < now() - make_interval(secs => $1)"
)


async def sweep_once(topology: Topology, retention_seconds: float) -> dict[str, int]:
    """Delete expired keys on every reachable primary; returns {shard: keys deleted}."""
    deleted: dict[str, int] = {}
    for shard in topology.shards.values():
        node = shard.primary
        if not node.available:
            continue
        try:
            backend = await node.pool.acquire()
        except (NodeUnavailableError, PoolTimeoutError):
            continue
        try:
            _, _, status = await backend.run(SWEEP_SQL, [float(retention_seconds)])
        except asyncpg.UndefinedTableError:
            node.pool.release(backend)  # not migrated yet: nothing to forget
            continue
        except asyncpg.PostgresError as exc:
            node.pool.release(backend)
            log.warning("idempotency sweep on %s failed: %s", node.name, exc)
            continue
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)
        deleted[shard.name] = int(status.rsplit(" ", 1)[-1])
    return deleted


async def run_sweeper(current: Callable[[], Topology], retention_seconds: float) -> None:
    """Sweep every so often (a 24th of the retention, at most every 10 minutes), on whatever
    topology is current (a SIGHUP reload replaces it)."""
    interval = min(600.0, max(1.0, retention_seconds / 24))
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await sweep_once(current(), retention_seconds)
        except Exception:  # the sweeper must never die
            log.exception("idempotency sweep failed")
            continue
        if any(deleted.values()):
            log.info("forgot expired idempotency keys: %s", deleted)
