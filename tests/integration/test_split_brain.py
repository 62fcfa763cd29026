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
from tests.support.scratch import scratch_cluster

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
