"""Shared by the two-phase commit tests: a sharded scratch table whose rows a shard can
refuse at PREPARE or COMMIT (a deferred check), routers with a short recovery grace, and what
each primary holds."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg

import client
from router.config import Config, TableConfig
from router.tools.db.connect import connect_node
from tests.support.router_proc import router_config

TABLE = TableConfig(name="tp_items", region_column="region", id_columns=("item_id",))
SETUP = """
CREATE TABLE IF NOT EXISTS tp_items (
    item_id uuid PRIMARY KEY,
    region  text NOT NULL,
    payload text NOT NULL DEFAULT ''
);
-- A deferred check: it runs at PREPARE TRANSACTION or COMMIT, so a shard can refuse there.
CREATE OR REPLACE FUNCTION tp_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload = 'refuse' THEN
        RAISE EXCEPTION 'tp_items: refused at commit' USING ERRCODE = 'GR900';
    END IF;
    RETURN NULL;
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tp_refuse') THEN
        CREATE CONSTRAINT TRIGGER tp_refuse AFTER INSERT ON tp_items
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tp_refuse();
    END IF;
END $$;
"""
INSERT = "INSERT INTO tp_items (item_id, region, payload) VALUES ($1, $2, $3)"
GRACE = 1.0  # router.twophase_grace_seconds of these tests' routers

Primaries = dict[str, asyncpg.Connection]


def tp_config(migrated: Config, shift: int, name: str) -> Config:
    """A router config with tp_items sharded and a short grace before presumed aborts."""
    config = router_config(migrated, port_shift=shift, twophase_grace_seconds=GRACE,
                           twophase_recovery_interval_seconds=0.2)
    return replace(config, tables={**config.tables, TABLE.name: TABLE},
                   router=replace(config.router, node_name=name))


@contextlib.asynccontextmanager
async def tp_primaries(migrated: Config) -> AsyncIterator[Primaries]:
    """A connection to each shard's primary (direct), with tp_items set up there."""
    conns = {r: await connect_node(migrated, s.primary) for r, s in migrated.shards.items()}
    try:
        for conn in conns.values():
            await conn.execute(SETUP)
        yield conns
    finally:
        for conn in conns.values():
            await conn.close()


async def rows_of(primaries: Primaries, item: uuid.UUID) -> dict[str, int]:
    """On each shard's primary, how many tp_items rows have this id."""
    return {r: int(await c.fetchval("SELECT count(*) FROM tp_items WHERE item_id = $1", item))
            for r, c in primaries.items()}


async def prepared(primaries: Primaries) -> dict[str, list[str]]:
    """georoute's prepared transactions on each primary."""
    return {r: [row[0] for row in await c.fetch(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'georoute:%' "
        "AND database = current_database()")] for r, c in primaries.items()}


async def none_prepared(primaries: Primaries) -> bool:
    return not any((await prepared(primaries)).values())


async def warm_pool(db: client.Client, shard: str, count: int = 3) -> None:
    """Leave `count` idle pooled connections to `shard` in the router's pool."""
    warm = [db.transaction(shard=shard) for _ in range(count)]
    for tx in warm:
        await tx.start()
    for tx in warm:
        await tx.fetch("SELECT 1")
    for tx in warm:
        await tx.commit()
