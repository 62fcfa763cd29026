"""Where each target's point reads actually land: asks PostgreSQL which port answered
(current_setting('port'), which unlike inet_server_port() also works over Unix sockets) for
every read, so a proxy's claim to balance reads is checked, not assumed. pgpool-II balances
per session, so with few sessions many reads can stay on the primary."""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

from bench.targets import AsyncpgTarget, GeorouteTarget, Target
from bench.workloads import Sample

__all__ = ["reads_by_port"]

PLACEMENT_SQL = "SELECT current_setting('port')::int FROM users WHERE user_id = $1"


async def reads_by_port(
    target: Target, sample: Sample, sessions: int, reads: int, seed: int = 7
) -> dict[int, int]:
    """Run `reads` point reads over `sessions` concurrent sessions; count answers per port."""
    rng = random.Random(seed)
    counts: collections.Counter[int] = collections.Counter()
    await target.open(sessions)
    try:
        per_session = max(1, reads // sessions)

        async def session() -> None:
            for _ in range(per_session):
                port = await _port_of_read(target, rng.choice(sample.user_ids))
                counts[int(port)] += 1

        await asyncio.gather(*(session() for _ in range(sessions)))
    finally:
        await target.close()
    return dict(counts)


async def _port_of_read(target: Target, user_id: Any) -> Any:
    if isinstance(target, GeorouteTarget):
        assert target._client is not None
        return await target._client.fetchval(PLACEMENT_SQL, user_id, consistency="replica")
    if isinstance(target, AsyncpgTarget):
        pool = target._read
        conn = await pool.acquire()
        try:
            return await conn.fetchval(PLACEMENT_SQL, user_id)
        finally:
            pool.release(conn)
    raise TypeError(f"no placement probe for {type(target).__name__}")
