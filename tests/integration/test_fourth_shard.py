"""A cluster with a fourth region, end to end, on a scratch cluster of its own: router.toml's
[shards.*] is the list of regions (the three shipped are only the default). The local cluster
starts the fourth shard, `georoute db migrate` bootstraps it under its own name, and through
a router a user of that region is written there, found by id, counted by a read over all four
shards, and can keep a document naming the region."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

import client
from router.config import Config, NodeAddress, ShardConfig
from router.tools.db.connect import connect_node
from router.tools.db.documents import USER_PREFERENCES
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from tests.support.documents import preferences
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router
from tests.support.scratch import scratch_cluster

# Far from the session's cluster and the other scratch ones (5000, 5100, 5400).
SCRATCH_OFFSET = 5700
AFRICA = 4


def with_africa(config: Config) -> Config:
    """`config` and a fourth shard beside router.toml's, on the next two ports."""
    last = max(a.port for _, _, a in config.all_nodes())
    africa = ShardConfig("africa", AFRICA, NodeAddress("127.0.0.1", last + 1),
                         (NodeAddress("127.0.0.1", last + 2),))
    return replace(config, shards={**config.shards, "africa": africa})


@pytest.fixture(scope="module")
def four(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    with scratch_cluster(with_africa(test_config), SCRATCH_OFFSET, "scratch-four") as pair:
        yield pair


@pytest.fixture(scope="module")
def router(four: tuple[LocalCluster, Config]) -> Iterator[RouterProcess]:
    local, config = four
    with running_router(router_config(config), local.state_dir / "router-four.toml") as proc:
        yield proc


async def test_a_fourth_region_is_bootstrapped_routed_and_merged(
    four: tuple[LocalCluster, Config], router: RouterProcess
) -> None:
    _, config = four
    assert list(config.shards) == ["north_america", "europe", "asia", "africa"]
    report = await migrate(config)
    assert set(report.shards) == set(config.shards)
    conn = await connect_node(config, config.shards["africa"].primary)
    try:
        assert await conn.fetchval("SELECT georoute_region()") == "africa"
    finally:
        await conn.close()

    async with await client.connect(router.dsn, token=TOKEN) as db:
        email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
        user_id = await db.fetchval(
            "INSERT INTO users (email, full_name, home_region, country, city) "
            "VALUES ($1, 'Ada', $2, 'NG', 'Lagos') RETURNING user_id", email, "africa")
        rows, route = await db.fetch_routed(
            "SELECT home_region, georoute_region() FROM users WHERE user_id = $1", user_id)
        assert [tuple(r) for r in rows] == [("africa", "africa")]
        assert route is not None and route.shard == "africa"
        for region in ("north_america", "europe", "asia"):  # nowhere else
            assert await db.fetchval("SELECT count(*) FROM users WHERE user_id = $1", user_id,
                                     shard=region) == 0
        rows, route = await db.fetch_routed("SELECT count(*) FROM users")
        assert rows[0][0] >= 1
        assert route is not None and route.shard.split(",") == list(config.shards)
        prefs = preferences(region="africa")
        await db.docs(USER_PREFERENCES).insert_one(prefs)
        found = await db.docs(USER_PREFERENCES).find_one({"_id": prefs["_id"]})
        assert found is not None and found["region"] == "africa"
