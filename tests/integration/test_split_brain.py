"""A fenced old primary takes no writes when the new primary stops answering (found by an
audit). After a managed failover europe's old primary is woken from SIGSTOP, writable on
timeline 1, and every router fences it (as test_managed_failover does). Then the new primary
(timeline 2, holding acknowledged writes the old one lacks) is frozen too. The routers once
made the fenced old primary the shard's primary again (router/core/primary.py chose the
writable node on the highest timeline among those that answered) and sent writes to timeline
1: a split brain, whose writes were lost when timeline 2 came back. Now the old one stays
fenced (it is on a timeline older than one the router saw writable), and writes wait, then
fail, until the new primary answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import client
from router.config import Config
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.integration.test_managed_failover import (
    INSERT_IN,
    SECRET,
    _node_pids,
    fetch_ids,
    managed_configs,
    start_router,
    topology,
)
from tests.support.router_proc import SCRATCH_DDL, TOKEN
from tests.support.scratch import arrange_shard, scratch_cluster

SCRATCH_OFFSET = 7150  # apart from the other scratch clusters


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    with scratch_cluster(test_config, SCRATCH_OFFSET,
                         "scratch-split-brain") as pair:
        asyncio.run(migrate(pair[1], documents=False))
        yield pair


def _freeze(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def _wake(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_fenced_old_primary_is_not_written_when_the_new_primary_freezes(
    scratch: tuple[LocalCluster, Config],
) -> None:
    local, base = scratch
    configs = managed_configs(base)
    shard = "europe"
    async with contextlib.AsyncExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-a{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        db = await stack.enter_async_context(await client.connect(routers[0].dsn, token=TOKEN))
        await db.execute(SCRATCH_DDL, shard=shard)
        view = (await topology(routers[0]))["shards"][shard]
        old = view["primary"]
        old_pm = local.pid(old)
        assert old_pm is not None
        frozen_old = _node_pids(old_pm)
        _freeze(frozen_old)
        try:
            async def promoted() -> bool:
                seen = {(await topology(proc))["shards"][shard]["primary"] for proc in routers}
                return len(seen) == 1 and old not in seen

            await wait_until(promoted, within=30, what=f"a standby promoted while {old} froze")
            new = (await topology(routers[0]))["shards"][shard]["primary"]
            acked = uuid.uuid4()
            await db.execute(INSERT_IN, acked, shard)  # acknowledged on timeline 2
        finally:
            _wake(frozen_old)

        async def fenced() -> bool:
            for proc in routers:
                if (await topology(proc))["shards"][shard]["fenced"] != [old]:
                    return False
            return True

        await wait_until(fenced, within=20, what=f"every router fences the woken {old}")

        new_pm = local.pid(new)
        assert new_pm is not None
        frozen_new = _node_pids(new_pm)
        _freeze(frozen_new)
        try:
            async def new_unheard() -> bool:
                europe = (await topology(routers[0]))["shards"][shard]
                return any(n["name"] == new and n["health"] != "up" for n in europe["nodes"])

            await wait_until(new_unheard, within=20, what=f"router 0 no longer hears {new}")
            marker = uuid.uuid4()
            told_ok = False
            with contextlib.suppress(client.GeorouteError, TimeoutError):
                await asyncio.wait_for(db.execute(INSERT_IN, marker, shard), 10)
                told_ok = True
        finally:
            _wake(frozen_new)
        on_old = await fetch_ids(local.dsn(old))
        assert acked not in on_old  # the fork: timeline 1 lacks timeline 2's write
        # What should hold: nothing written through a router lands on the fenced timeline 1.
        assert marker not in on_old, (
            f"a write was acknowledged on the fenced old primary {old} (timeline 1) while "
            f"{new} (timeline 2) was frozen: split brain (client told success: {told_ok})")
        assert not told_ok  # no primary to take it: the client is told it failed


async def test_restarted_routers_do_not_take_the_old_primary_while_the_new_one_is_down(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """After a managed failover every router stops, then the promoted primary does, and the
    old primary comes back, writable on its older timeline. Routers started again begin from
    router.toml, whose `primary` entry names the old one: they made it the primary and took
    writes there, lost when the promoted one came back (the last audit's "left" case). They
    now remember each shard's newest timeline on disk (router/ha/memory.py): the old primary
    is fenced from their first round, writes fail, and the promoted one is followed when it
    answers."""
    local, base = scratch
    shard = "europe"
    await arrange_shard(local, shard, "europe-1")  # router.toml's `primary` entry
    configs = managed_configs(base)
    paths = [local.state_dir / f"router-r{i}.toml" for i in range(len(configs))]

    def started(stack: contextlib.ExitStack) -> list[Any]:
        return [stack.enter_context(start_router(c, p, SECRET))
                for c, p in zip(configs, paths, strict=True)]

    async def primary_everywhere(routers: list[Any], name: str) -> bool:
        return {(await topology(p))["shards"][shard]["primary"] for p in routers} == {name}

    acked = uuid.uuid4()
    with contextlib.ExitStack() as stack:
        routers = started(stack)
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            await db.execute(SCRATCH_DDL, shard=shard)
            local.stop_node("europe-1")  # immediate: as a crash
            await wait_until(lambda: primary_everywhere(routers, "europe-2"), within=30,
                             what="europe-2 promoted")
            await db.execute(INSERT_IN, acked, shard)  # on the new timeline only
        floor = (await topology(routers[0]))["shards"][shard]["timeline_floor"]
    local.stop_node("europe-2")
    local.start_node("europe-1")  # writable again, on the old timeline
    marker = uuid.uuid4()
    told_ok = False
    with contextlib.ExitStack() as stack:
        routers = started(stack)
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            with contextlib.suppress(client.GeorouteError, TimeoutError):
                await asyncio.wait_for(db.execute(INSERT_IN, marker, shard), 15)
                told_ok = True
            views = [(await topology(p))["shards"][shard] for p in routers]
            on_old = await fetch_ids(local.dsn("europe-1"))
            assert marker not in on_old, (
                f"a restarted router wrote to europe-1, the old primary, while europe-2 "
                f"(timeline {floor}) was down: split brain (client told success: {told_ok})")
            assert not told_ok
            assert all(v["fenced"] == ["europe-1"] and v["timeline_floor"] == floor
                       for v in views), views
            local.start_node("europe-2")
            await wait_until(lambda: primary_everywhere(routers, "europe-2"), within=30,
                             what="the restarted routers follow europe-2")
            after = uuid.uuid4()
            await db.execute(INSERT_IN, after, shard)
            fenced = [(await topology(p))["shards"][shard]["fenced"] for p in routers]
        assert {acked, after} <= await fetch_ids(local.dsn("europe-2"))
        assert fenced == [["europe-1"]] * len(routers)
