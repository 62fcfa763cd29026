"""The two-phase recovery sweep is not stopped by one stalled shard (found by an audit): it
asked every primary in turn with no bound, so a stalled link to europe left another shard's
decided branch prepared, holding its locks, for as long as the stall lasted.

A scratch cluster of its own: on the session's, another router's sweeper (every 5 s) settles
the branch first, and the test would pass without the bound."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import client
from router.config import Config
from router.engine.twophase import FAULT_ENV, FAULT_EXIT_CODE
from tests.integration.conftest import wait_until
from tests.support.faultproxy import TcpFaultProxy
from tests.support.router_proc import TOKEN, primary_through, running_router
from tests.support.scratch import migrated_scratch
from tests.support.twophase import (
    INSERT,
    Primaries,
    none_prepared,
    prepared,
    rows_of,
    tp_config,
    tp_primaries,
    warm_pool,
)

SCRATCH_OFFSET = 7450  # apart from the other scratch clusters


@pytest.fixture(scope="module")
def lone(test_config: Config) -> Iterator[Config]:
    """A cluster that only this module's routers reach."""
    with migrated_scratch(test_config, SCRATCH_OFFSET, "scratch-recovery-stall") as config:
        yield config


@pytest.fixture
async def primaries(lone: Config) -> AsyncIterator[Primaries]:
    async with tp_primaries(lone) as conns:
        yield conns


async def test_one_stalled_shard_does_not_stop_recovery_on_the_others(
    lone: Config, primaries: Primaries,
) -> None:
    """A router killed after the decision (fault point after_decision) of a transaction over
    asia (coordinator) and north_america (prepared): europe has nothing to do with it. The
    sweeping router (every 0.2 s) has idle pooled connections to europe when its link there
    stalls. North_america's branch, decided commit on asia, must be committed within a few
    sweeps, not wait for europe's link; and the sweeper is the only router on this cluster,
    so it is the one that committed it."""
    primary = lone.shards["europe"].primary
    proxy = TcpFaultProxy((primary.host, primary.port), lifetime=120)
    state = Path(lone.cluster.state_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(proxy.running_in_thread())
        sweeper = stack.enter_context(running_router(
            primary_through(tp_config(lone, 0, "recovery-stall"), "europe", proxy.port),
            state / "router-recovery-stall.toml"))
        async with await client.connect(sweeper.dsn, token=TOKEN) as db:
            await warm_pool(db, "europe")
        proxy.stall()
        asia, na = uuid.uuid4(), uuid.uuid4()
        faulty = tp_config(lone, 1, "recovery-stall-faulty")
        with running_router(faulty, state / "router-recovery-stall-faulty.toml",
                            {FAULT_ENV: "after_decision"}) as proc:
            async with await client.connect(proc.dsn, token=TOKEN) as db:
                tx = db.transaction()
                await tx.start()
                await tx.execute(INSERT, asia, "asia", "links")  # asia coordinates
                await tx.execute(INSERT, na, "north_america", "links")  # prepared
                with pytest.raises(client.ConnectionLostError):
                    await tx.commit()
            assert proc.proc.wait(timeout=20) == FAULT_EXIT_CODE
        assert (await rows_of(primaries, asia))["asia"] == 1  # decided: commit

        async def na_settled() -> bool:
            return not (await prepared(primaries))["north_america"]

        settled = True
        try:
            await wait_until(na_settled, within=10, what="north_america's branch committed")
        except AssertionError:
            settled = False
        finally:
            proxy.resume()
        await wait_until(lambda: none_prepared(primaries), within=30, what="everything settled")
        assert (await rows_of(primaries, na))["north_america"] == 1
        assert settled, ("north_america's prepared branch (decided commit on asia) stayed "
                         "prepared, holding its locks, for 10 s while europe's link stalled")
        assert any("two-phase recovery: committed" in line for line in sweeper.output), (
            "".join(sweeper.output[-15:]))
