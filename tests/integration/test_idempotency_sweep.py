"""Expired idempotency keys are forgotten; fresh ones are kept."""

from __future__ import annotations

import uuid

import asyncpg

from router.config import Config
from router.engine.idempotency import sweep_once
from router.ha.topology import Topology


async def test_sweep_deletes_only_expired_keys(migrated: Config) -> None:
    primary = migrated.shards["europe"].primary
    conn = await asyncpg.connect(host=primary.host, port=primary.port,
                                 database=primary.database, user=migrated.database.user)
    old, fresh = f"old-{uuid.uuid4()}", f"fresh-{uuid.uuid4()}"
    topology = Topology.from_config(migrated)
    try:
        await conn.execute(
            "INSERT INTO georoute_idempotency (idem_key, status, created_at) "
            "VALUES ($1, 'INSERT 0 1', now() - interval '2 days'), ($2, 'INSERT 0 1', now())",
            old, fresh,
        )
        deleted = await sweep_once(topology, retention_seconds=86400)
        assert deleted["europe"] >= 1
        left = {r[0] for r in await conn.fetch(
            "SELECT idem_key FROM georoute_idempotency WHERE idem_key = ANY($1::text[])",
            [old, fresh],
        )}
        assert left == {fresh}
    finally:
        await conn.execute("DELETE FROM georoute_idempotency WHERE idem_key = $1", fresh)
        await conn.close()
        for node in topology.nodes():
            await node.pool.close()
