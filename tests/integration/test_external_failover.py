"""`[failover] mode = "external"` on a scratch cluster of its own (a promotion must not touch
the session's cluster): a replica promoted by hand, after its primary was stopped, becomes
the shard's primary within seconds and takes the writes; the old primary, restarted as a
second writable node (a split brain), gets neither writes nor reads, also after a SIGHUP
reload (router.toml still calls it the primary)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

import client
from router.backend.wal import NODE_POSITION_SQL, PRIMARY_POSITION_SQL
from router.config import Config
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.present import present
from tests.support.router_proc import (
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    router_config,
    running_router,
)
from tests.support.scratch import scratch_cluster

# Far from the session's cluster and from test_cluster.py's scratch ones (5000, 5100).
SCRATCH_OFFSET = 5400
INSERT = "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', $2)"


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    with scratch_cluster(test_config, SCRATCH_OFFSET, "scratch-external") as pair:
        yield pair


@pytest.fixture(scope="module")
def router(scratch: tuple[LocalCluster, Config]) -> Iterator[RouterProcess]:
    local, config = scratch
    external = router_config(config, lag_poll_interval_seconds=0.05)
    external = replace(external, failover=replace(external.failover, mode="external"))
    with running_router(external, local.state_dir / "router-external.toml") as proc:
        yield proc


def node_up_labels(router: RouterProcess) -> dict[str, str]:
    """node -> its role label on georoute_node_up, scraped from the router's metrics."""
    url = f"http://127.0.0.1:{router.config.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(r'^georoute_node_up\{node="([^"]+)",role="([^"]+)"\}', text, re.M)
    return dict(found)


def europe(topology: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in topology["shards"]["europe"]["nodes"]}


async def payloads(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["payload"] for r in await conn.fetch("SELECT payload FROM rt_items")}
    finally:
        await conn.close()


async def test_the_router_follows_a_primary_promoted_elsewhere(
    scratch: tuple[LocalCluster, Config], router: RouterProcess,
) -> None:
    local, _ = scratch
    async with await client.connect(router.dsn, token=TOKEN) as db:
        await db.execute(SCRATCH_DDL, shard="europe")
        await db.execute(INSERT, uuid.uuid4(), "before")
        nodes = europe(await db.topology())
        assert nodes["europe-1"]["role"] == "primary"

        local.stop_node("europe-1")  # what an external tool does: fence, then promote
        replica_dsn = local.dsn("europe-2")
        conn = await asyncpg.connect(replica_dsn)
        try:
            assert await conn.fetchval("SELECT pg_promote(true, 60)") is True
        finally:
            await conn.close()
        promoted = time.monotonic()

        async def followed() -> bool:
            nodes = europe(await db.topology())
            return (nodes["europe-2"]["role"] == "primary"
                    and nodes["europe-1"]["role"] == "replica")

        await wait_until(followed, within=5, what="the router follows europe's primary")
        follow_seconds = time.monotonic() - promoted

        async def writes() -> bool:
            try:
                await db.execute(INSERT, uuid.uuid4(), "after")
            except client.GeorouteError:
                return False
            return True

        await wait_until(writes, within=5, what="a write through the router succeeds")
        assert {"before", "after"} <= await payloads(replica_dsn)
        assert follow_seconds < 5
        # The promoted node's position, read as the monitor reads a node's, moves with its
        # writes: its replay position stayed where its recovery ended, and measured by that
        # the primary would seem to write nothing and every replica to be fresh.
        conn = await asyncpg.connect(replica_dsn)
        try:
            _, before = present(await conn.fetchrow(NODE_POSITION_SQL))
            await conn.execute(INSERT, uuid.uuid4(), "direct")
            _, after = present(await conn.fetchrow(NODE_POSITION_SQL))
            assert await conn.fetchval(PRIMARY_POSITION_SQL) >= after > before
        finally:
            await conn.close()

        # The promoted node is the primary in every view, whatever its name: the replies'
        # route, the topology and the metrics' labels.
        _, route = await db.fetch_routed("SELECT payload FROM rt_items WHERE region = 'europe'",
                                         consistency="strong")
        assert route is not None and (route.node, route.role) == ("europe-2", "primary")
        view = (await db.topology())["shards"]["europe"]
        assert view["primary"] == "europe-2"
        assert europe(await db.topology())["europe-2"]["in_recovery"] is False
        labels = await asyncio.to_thread(node_up_labels, router)
        assert labels["europe-2"] == "primary" and labels["europe-1"] == "replica"
        # Its position is its current WAL position, which its writes move on (not the point
        # where its recovery ended, which is all pg_last_wal_replay_lsn() says after a
        # promotion: replicas measured against that would all look fresh).
        promoted_at = europe(await db.topology())["europe-2"]["replay_lsn"]
        for _ in range(20):
            await db.execute(INSERT, uuid.uuid4(), "x" * 2000)

        async def position_moves() -> bool:
            lsn = europe(await db.topology())["europe-2"]["replay_lsn"]
            return lsn is not None and lsn > promoted_at

        await wait_until(position_moves, within=5, what="the new primary's position to move")

        # The old primary comes back as it was: writable, on the old timeline. Two writable
        # nodes: the router stays on the promoted one and sends the old one nothing.
        local.start_node("europe-1")

        async def old_one_up() -> bool:
            return europe(await db.topology())["europe-1"]["health"] == "up"

        await wait_until(old_one_up, within=10, what="the old primary probed up again")

        async def split_seen() -> bool:
            decision = (await db.topology())["shards"]["europe"]["primary_decision"]
            return str(decision).startswith("several_writable")

        await wait_until(split_seen, what="the router sees two writable nodes and stays")
        await db.execute(INSERT, uuid.uuid4(), "split")
        for _ in range(20):  # reads: none may land on the stale node
            await db.fetch("SELECT payload FROM rt_items WHERE region = 'europe'")
        nodes = europe(await db.topology())
        assert nodes["europe-2"]["role"] == "primary"
        assert nodes["europe-1"]["lag_bytes"] is None  # not replaying: out of rotation
        assert "split" in await payloads(replica_dsn)
        assert "split" not in await payloads(local.dsn("europe-1"))

        router.signal(signal.SIGHUP)  # the topology is rebuilt from router.toml's names
        assert await asyncio.to_thread(router.wait_for_output, "reloaded", 10)
        nodes = europe(await db.topology())
        assert nodes["europe-2"]["role"] == "primary"
        await db.execute(INSERT, uuid.uuid4(), "reloaded")
        assert "reloaded" in await payloads(replica_dsn)
        assert "reloaded" not in await payloads(local.dsn("europe-1"))
