"""The router on the real cluster: where requests land, read-your-writes, lagging replicas,
transactions, ids and documents. Each test asks PostgreSQL which node answered
(current_setting('port')::int) rather than trusting the router's own account."""

from __future__ import annotations

import secrets
import uuid

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.ids import new_id
from tests.support.present import present
from tests.support.router_proc import (
    REGIONS,
    TOKEN,
    RouterProcess,
    number,
    port_of,
)


async def test_reads_on_replicas_writes_on_primaries(db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    for region in REGIONS:
        item = new_id(number(cfg, region))
        row = await db.fetchrow(
            "INSERT INTO rt_items (item_id, region) VALUES ($1, $2) RETURNING current_setting('port')::int",
            item,
            region,
        )
        assert row is not None and row[0] == port_of(cfg, region, "primary")
        # A read with no write in this session's way (eventual) goes to the replica.
        port = await db.fetchval(
            # An aggregate: one row even before the replica has replayed the insert.
            "SELECT current_setting('port')::int, count(*) FROM rt_items WHERE region = $1",
            region,
            consistency="replica",
        )
        assert port == port_of(cfg, region, "replica")
        # A strong read goes to the primary.
        port = await db.fetchval(
            "SELECT current_setting('port')::int FROM rt_items WHERE item_id = $1", item, consistency="strong"
        )
        assert port == port_of(cfg, region, "primary")


async def replica_pipeline_statements(db: client.Client) -> int:
    topology = await db.topology()
    return sum(n["pipeline_statements"] for s in topology["shards"].values()
               for n in s["nodes"] if n["role"] == "replica")


async def test_read_your_writes_is_never_stale(db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    replica_hits = 0
    piped_before = await replica_pipeline_statements(db)
    for i in range(60):
        region = REGIONS[i % 3]
        item = new_id(number(cfg, region))
        await db.execute(
            "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, $2, $3)",
            item,
            region,
            f"v{i}",
        )
        row = await db.fetchrow(
            "SELECT payload, current_setting('port')::int AS port FROM rt_items WHERE item_id = $1", item
        )
        assert row is not None, f"write {i} not visible to the next read"
        assert row["payload"] == f"v{i}"
        replica_hits += row["port"] == port_of(cfg, region, "replica")
    # Replicas replay within ~2 ms, so most reads should still be served by them.
    assert replica_hits > 0
    # ... on their pipelined connections, where the wait for replay also asks.
    assert await replica_pipeline_statements(db) - piped_before >= replica_hits


async def test_lagging_replica_is_skipped(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    cfg = router.config
    replica_name = "europe-2"
    replica_port = port_of(cfg, "europe", "replica")
    primary_port = port_of(cfg, "europe", "primary")

    async def lag_bytes() -> int | None:
        topo = await db.topology()
        nodes = topo["shards"]["europe"]["nodes"]
        return next(n["lag_bytes"] for n in nodes if n["name"] == replica_name)

    cluster.pause_replay(replica_name)
    try:
        # Write well past the router's 64 KiB lag bound while the replica cannot replay.
        # Random text: PostgreSQL compresses repetitive text to almost no WAL.
        await db.executemany(
            "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', $2)",
            [(new_id(number(cfg, "europe")), secrets.token_hex(4096)) for _ in range(60)],
        )

        async def lagging() -> bool:
            lag = await lag_bytes()
            return lag is not None and lag > 64 * 1024

        await wait_until(lagging, within=10, what="router to see the replica lagging")
        port = await db.fetchval(
            "SELECT current_setting('port')::int FROM rt_items WHERE region = 'europe' LIMIT 1",
            consistency="replica",
        )
        assert port == primary_port
    finally:
        cluster.resume_replay(replica_name)

    async def caught_up() -> bool:
        lag = await lag_bytes()
        return lag is not None and lag <= 64 * 1024

    await wait_until(caught_up, within=10, what="replica to catch up")
    port = await db.fetchval(
        "SELECT current_setting('port')::int FROM rt_items WHERE region = 'europe' LIMIT 1",
        consistency="replica",
    )
    assert port == replica_port


async def test_transaction_is_pinned_and_atomic(db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    item = new_id(number(cfg, "north_america"))
    async with db.transaction(shard="north_america") as tx:
        pid = await tx.fetchval("SELECT pg_backend_pid()")
        xid = await tx.fetchval("SELECT txid_current()")
        await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')", item)
        for _ in range(5):
            assert await tx.fetchval("SELECT pg_backend_pid()") == pid
            assert await tx.fetchval("SELECT txid_current()") == xid
        assert await tx.fetchval("SELECT current_setting('port')::int") == port_of(cfg, "north_america", "primary")
    assert await db.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 1

    rolled = new_id(number(cfg, "north_america"))
    with pytest.raises(RuntimeError):
        async with db.transaction(shard_key=rolled) as tx:
            await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')", rolled)
            raise RuntimeError("abort")
    assert await db.fetchval(
        "SELECT count(*) FROM rt_items WHERE item_id = $1", rolled, consistency="strong"
    ) == 0


async def test_disconnect_mid_transaction_rolls_back(
    router: RouterProcess, test_config: Config
) -> None:
    cfg = router.config
    item = new_id(number(cfg, "asia"))
    c = await client.connect(router.dsn, token=TOKEN)
    tx = c.transaction(shard="asia")
    await tx.start()
    await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", item)
    for conn in c.connections:  # drop the TCP connections without committing
        conn.close()
    await c.close()

    primary = test_config.shards["asia"].primary
    pg = await asyncpg.connect(host=primary.host, port=primary.port, database=primary.database,
                               user=test_config.database.user)
    try:
        async def released() -> bool:
            # The row lock is gone once the router rolled back: a NOWAIT lock succeeds.
            busy = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
                "AND query LIKE '%rt_items%'"
            )
            return busy == 0

        await wait_until(released, within=10, what="the abandoned transaction to end")
        assert await pg.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 0
    finally:
        await pg.close()


async def test_ids_from_the_schema_route_home(db: client.Client, migrated: Config) -> None:
    """georoute_id() generated on a shard's primary routes back to that shard."""
    for region in REGIONS:
        generated = await db.fetchval("SELECT georoute_id()", shard=region)
        assert isinstance(generated, uuid.UUID)
        shard_number = await db.fetchval(
            "SELECT georoute_shard_of($1::uuid)", generated, shard=region
        )
        assert shard_number == migrated.shards[region].number
        target = await db.fetchval(
            "SELECT current_setting('port')::int FROM users WHERE user_id = $1 UNION ALL "
            "SELECT current_setting('port')::int LIMIT 1",
            generated,
            consistency="strong",
        )
        assert target == migrated.shards[region].primary.port


async def test_document_store_through_the_router(db: client.Client, migrated: Config) -> None:
    """Course content and preferences go through the router to the real document store;
    a document of the wrong shape is refused with a typed error naming the field."""
    from datetime import UTC, datetime

    user = str(new_id(migrated.shards["europe"].number))
    prefs = db.docs("user_preferences")
    doc = {
        "_id": user,
        "user_id": user,
        "region": "europe",
        "language": "fr-FR",
        "timezone": "Europe/Paris",
        "theme": "dark",
        "notifications": {"email": True, "push": False, "weekly_digest": True},
        "interests": ["sql", "rust"],
        "updated_at": datetime.now(UTC),
    }
    await prefs.insert_one(doc)
    found = await prefs.find_one({"user_id": user})
    assert found is not None and found["language"] == "fr-FR" and found["interests"] == ["sql", "rust"]
    with pytest.raises(client.DuplicateKeyError):
        await prefs.insert_one(doc)
    bad = dict(doc, _id=str(new_id(2)), user_id=None)
    bad["user_id"] = bad["_id"]
    bad["theme"] = "neon"
    with pytest.raises(client.DocumentStoreError) as info:
        await prefs.insert_one(bad)
    assert "theme" in str(info.value)
    assert await prefs.count({"_id": bad["_id"]}) == 0
    assert (await prefs.update_one({"_id": user}, {"$set": {"theme": "light"}}))["modified"] == 1
    assert present(await prefs.find_one({"_id": user}))["theme"] == "light"
    assert (await prefs.delete_one({"_id": user}))["deleted"] == 1


async def test_router_reaches_local_nodes_through_unix_sockets(
    db: client.Client, router: RouterProcess
) -> None:
    """[database] socket_dir is set in router.toml: a backend connection made through a Unix
    socket has no client address in pg_stat_activity."""
    assert router.config.database.socket_dir
    for consistency in ("strong", "replica"):
        over_socket = await db.fetchval(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            shard="asia", consistency=consistency,
        )
        assert over_socket is True
