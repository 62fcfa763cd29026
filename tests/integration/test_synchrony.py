"""A synchronous shard of three nodes, after a managed failover: the promoter turns
synchronous replication off on the new primary (no standby may stream yet), re-points the
other standby, and once that standby streams a router turns synchronous replication on again
(router/ha/synchrony.py), without `georoute cluster rejoin`. Without that, acknowledged
writes sat on the new primary alone until a person rejoined the old one. A scratch cluster of
its own: europe replicates synchronously and gets a third node; north_america replicates
synchronously on its two nodes.

Also: a promoter that stops between pg_promote and turning synchronous replication off (its
router killed, or its attempt out of time) left the new primary waiting for a standby that
on a shard of two nodes never streams: every write hung (found by an audit). A router that
follows such a failover turns it off, as the promoter would have."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import replace

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.integration.test_managed_failover import (
    INSERT,
    SECRET,
    _node_pids,
    managed_configs,
    start_router,
    topology,
)
from tests.support.ids import new_id
from tests.support.router_proc import SCRATCH_DDL, TOKEN
from tests.support.scratch import scratch_cluster, with_third_node

SCRATCH_OFFSET = 7300  # far from the session's cluster and the other scratch ones


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    config = with_third_node(test_config, "europe")
    shards = {name: replace(shard, synchronous=name in ("europe", "north_america"))
              for name, shard in config.shards.items()}
    with scratch_cluster(replace(config, shards=shards), SCRATCH_OFFSET,
                         "scratch-synchrony") as pair:
        asyncio.run(migrate(pair[1], documents=False))
        yield pair


async def replication(dsn: str) -> tuple[str, dict[str, str]]:
    """A node's synchronous_standby_names, and each standby streaming from it: its
    sync_state, by the port it was started on (application_name is the node's name)."""
    conn = await asyncpg.connect(dsn)
    try:
        names = str(await conn.fetchval("SHOW synchronous_standby_names"))
        rows = await conn.fetch("SELECT application_name, sync_state FROM pg_stat_replication "
                                "WHERE state = 'streaming'")
        return names, {str(r[0]): str(r[1]) for r in rows}
    finally:
        await conn.close()


async def test_synchronous_again_once_the_repointed_standby_streams(
    scratch: tuple[LocalCluster, Config],
) -> None:
    local, base = scratch
    names, _ = await replication(local.dsn("europe-1"))
    assert names == "*"
    configs = managed_configs(base)[:2]  # two of the three configured: a majority
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-y{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        node_names = [r.config.router.node_name for r in routers]

        async def alive() -> bool:
            for proc, other in zip(routers, reversed(node_names), strict=True):
                if peer_states(await heartbeat_report(proc)).get(other) != "alive":
                    return False
            return True

        await wait_until(alive, within=20, what="the two routers alive to each other")
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            await db.execute(SCRATCH_DDL, shard="europe")
            europe = base.shards["europe"].number
            await db.execute(INSERT, new_id(europe), "before")
            pid = local.pid("europe-1")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            async def promoted() -> bool:
                for proc in routers:
                    if (await topology(proc))["shards"]["europe"]["primary"] != "europe-2":
                        return False
                return True

            await wait_until(promoted, within=20, what="europe-2 the primary everywhere")
            await db.execute(INSERT, new_id(europe), "after")  # not held by a missing standby

            async def synchronous_again() -> bool:
                names, streaming = await replication(local.dsn("europe-2"))
                return names == "*" and "sync" in streaming.values()

            await wait_until(synchronous_again, within=20,
                             what="europe-2 synchronous again, with a standby in sync")
            # Writes go on, each now acknowledged once the standby has it.
            await db.execute(INSERT, new_id(europe), "synchronous")
        # The router that did it says so in its topology report.
        done = [(await topology(p))["synchrony"] for p in routers]
        assert any(d["on"].get("europe") for d in done), done


async def test_a_promotion_its_promoter_did_not_finish_does_not_hang_writes(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """north_america's primary freezes and its standby is promoted from outside, just as a
    promoter that stopped after pg_promote leaves it: synchronous_standby_names still '*'
    and no standby to stream. The routers follow it (its timeline is newer), and a write
    through them is acknowledged: a router turned synchronous replication off on it."""
    local, base = scratch
    configs = managed_configs(base)[:2]
    shard = "north_america"
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-z{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            await db.execute(SCRATCH_DDL, shard=shard)
            view = (await topology(routers[0]))["shards"][shard]
            old = view["primary"]
            standby = next(n["name"] for n in view["nodes"] if n["name"] != old)
            pid = local.pid(old)
            assert pid is not None
            frozen = _node_pids(pid)
            conn = await asyncpg.connect(local.dsn(standby))
            try:
                for each in frozen:
                    os.kill(each, signal.SIGSTOP)
                assert await conn.fetchval("SELECT pg_promote(true, 30)")
                assert await conn.fetchval("SHOW synchronous_standby_names") == "*"
            finally:
                await conn.close()
            try:
                async def followed() -> bool:
                    seen = [(await topology(p))["shards"][shard]["primary"] for p in routers]
                    return seen == [standby] * len(routers)

                await wait_until(followed, within=30, what=f"every router follows {standby}")
                number = base.shards[shard].number
                async with asyncio.timeout(15):  # it hung, before
                    await db.execute("INSERT INTO rt_items (item_id, region, payload) "
                                     "VALUES ($1, 'north_america', 'after')", new_id(number))
                names, _ = await replication(local.dsn(standby))
                assert names == ""
            finally:
                for each in frozen:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(each, signal.SIGCONT)
            done = [(await topology(p))["synchrony"] for p in routers]
            assert any(d["off"].get(shard) for d in done), done
