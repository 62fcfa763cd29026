"""Adding a region to a running cluster, under load (README, "Adding a region"): a scratch
cluster of the three shipped regions, migrated, behind a router, takes reads and writes on all
three while a fourth region is added the way an operator adds one: its [shards.*] table in
router.toml, `georoute cluster up` (only the new nodes start), `georoute db migrate` (the new
shard is brought to the others' schema, with their reference tables' rows), SIGHUP to the
router. No request to the three fails meanwhile; a user moved to the new region is then served
from it."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import client
from router.config import Config, NodeAddress, ShardConfig
from router.tools.config_write import config_to_toml
from router.tools.db.connect import connect_node
from router.tools.db.documents import USER_PREFERENCES
from router.tools.db.migrate import migrate
from router.tools.db.reference_health import check_reference_tables
from router.tools.localcluster import LocalCluster
from tests.support.documents import preferences
from tests.support.ids import new_id
from tests.support.router_proc import (
    REGIONS,
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    router_config,
    running_router,
)
from tests.support.scratch import scratch_cluster

SCRATCH_OFFSET = 6600
NEW = "south_america"
WORKERS_PER_REGION = 2  # each writes then reads back, in turn, until the region is added
MAX_REQUESTS = 20_000  # a bound on the load, whatever happens


def with_region(config: Config, name: str, number: int) -> Config:
    last = max(a.port for _, _, a in config.all_nodes())
    shard = ShardConfig(name, number, NodeAddress("127.0.0.1", last + 1),
                        (NodeAddress("127.0.0.1", last + 2),))
    return replace(config, shards={**config.shards, name: shard})


@dataclass
class Load:
    """Reads and writes on the three regions, counted, with every failure kept."""

    requests: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, db: client.Client, config: Config, region: str) -> None:
        number = config.shards[region].number
        while not self.stop.is_set() and self.requests < MAX_REQUESTS:
            item = new_id(number)
            try:
                await db.execute("INSERT INTO rt_items (item_id, region, payload) "
                                 "VALUES ($1, $2, 'load')", item, region)
                rows, route = await db.fetch_routed(
                    "SELECT region FROM rt_items WHERE item_id = $1", item)
                if [tuple(r) for r in rows] != [(region,)] or route is None \
                        or route.shard != region:
                    self.failures.append(f"{region}: read back {rows} from {route}")
            except client.GeorouteError as exc:
                self.failures.append(f"{region}: {type(exc).__name__}: {exc}")
            self.requests += 2


@pytest.fixture(scope="module")
def three(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    shipped = replace(test_config, shards={r: test_config.shards[r] for r in REGIONS})
    with scratch_cluster(shipped, SCRATCH_OFFSET, "scratch-add-region") as pair:
        yield pair


async def _wait_output(proc: RouterProcess, text: str) -> None:
    assert await asyncio.to_thread(proc.wait_for_output, text, 30.0), (
        f"the router never said {text!r}:\n" + "".join(proc.output[-20:]))


async def test_a_region_is_added_under_load_and_a_user_moved_there_is_served_from_it(
    three: tuple[LocalCluster, Config],
) -> None:
    local, config3 = three
    rconfig3 = router_config(config3)
    await migrate(rconfig3)
    path = local.state_dir / "router-add-region.toml"
    with running_router(rconfig3, path) as proc:
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            for region in REGIONS:
                await db.execute(SCRATCH_DDL, shard=region)
            category = uuid.uuid4()
            await db.execute("INSERT INTO categories (category_id, slug, name) "
                             "VALUES ($1, $2, 'Before')", category,
                             f"before-{category.hex[:8]}")
            user = await db.fetchval(
                "INSERT INTO users (email, full_name, home_region, country, city) "
                "VALUES ($1, 'Ana', 'europe', 'PT', 'Lisbon') RETURNING user_id",
                f"ana-{uuid.uuid4().hex[:8]}@example.com")

            await db.docs(USER_PREFERENCES).insert_one(
                preferences(_id=str(user), user_id=str(user), region="europe"))

            load = Load()
            workers = [asyncio.create_task(load.worker(db, config3, region))
                       for region in REGIONS for _ in range(WORKERS_PER_REGION)]
            try:
                # The load runs before, during and after each step.
                await _until(lambda: load.requests >= 50, "the load to start")
                config4 = with_region(config3, NEW, 4)
                adding = LocalCluster(config4)
                started = load.requests
                await asyncio.to_thread(adding.up)
                report = await migrate(router_config(config4))  # the router's tables
                assert report.shards[NEW].version_after == report.shards["europe"].version_after
                path.write_text(config_to_toml(router_config(config4)))
                before = len(proc.output)
                proc.signal(signal.SIGHUP)
                await _wait_output(proc, "reloaded")
                assert not any("refused" in line for line in proc.output[before:]), \
                    "".join(proc.output[before:])
                moved = await db.move_user(user, NEW)
                await _until(lambda: load.requests >= started + 200, "more load after")
            finally:
                load.stop.set()
                await asyncio.gather(*workers)
            assert not load.failures, load.failures[:10]

            # The nodes of the three regions were never restarted, and the new region serves.
            new_id_ = uuid.UUID(str(moved["current_id"]))
            rows, route = await db.fetch_routed(
                "SELECT home_region, georoute_region() FROM users WHERE user_id = $1", new_id_)
            assert [tuple(r) for r in rows] == [(NEW, NEW)]
            assert route is not None and route.shard == NEW
            assert route.node.startswith(f"{NEW}-")
            rows, route = await db.fetch_routed(
                "SELECT count(*) FROM users WHERE user_id = $1", user)
            assert rows[0][0] == 0  # gone from Europe (its old id resolves to the new one)
            # The new shard has the reference tables' rows, written before it existed.
            assert await db.fetchval("SELECT name FROM categories WHERE category_id = $1",
                                     category, shard=NEW) == "Before"
            assert (await check_reference_tables(router_config(config4))).agree
            # Documents may name the new region (the router's document shapes were reloaded).
            prefs = await db.docs(USER_PREFERENCES).find_one({"user_id": str(new_id_)})
            assert prefs is not None and prefs["region"] == NEW
            fresh = preferences(region=NEW)
            await db.docs(USER_PREFERENCES).insert_one(fresh)
            assert (await db.docs(USER_PREFERENCES).find_one({"_id": fresh["_id"]}) or {}).get(
                "region") == NEW
            conn = await connect_node(config4, config4.shards[NEW].primary)
            try:
                assert await conn.fetchval("SELECT georoute_region()") == NEW
            finally:
                await conn.close()


async def _until(check: Any, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
