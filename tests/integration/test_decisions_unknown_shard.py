"""Two-phase commit decision rows while router nodes disagree on the set of shards (the window
of README "Adding a region" between the first and the last router's SIGHUP, or a router
started from an older router.toml), found by an audit: a router whose config lacked a shard
deleted a commit decision whose branch was still prepared there, and the next router to
sweep presumed an abort and rolled that part of a committed transaction back. A decision
row is now kept while it names a shard the sweeping router does not know
(router/core/twophase.py forgettable)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import client
from router.config import Config
from router.engine.twophase import FAULT_ENV, FAULT_EXIT_CODE
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, running_router
from tests.support.scratch import migrated_scratch
from tests.support.twophase import (
    INSERT,
    Primaries,
    none_prepared,
    prepared,
    rows_of,
    tp_config,
    tp_primaries,
)

# A cluster of its own: the session's router (and any other with a recovery sweeper) would
# settle the branches these tests leave in doubt, and the test would then say nothing.
SCRATCH_OFFSET = 7650


@pytest.fixture(scope="module")
def migrated(test_config: Config) -> Iterator[Config]:
    """A scratch cluster, migrated, that no other router node sweeps (overrides conftest's)."""
    with migrated_scratch(test_config, SCRATCH_OFFSET, "scratch-audit-shards") as config:
        yield config


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[Primaries]:
    async with tp_primaries(migrated) as conns:
        yield conns


def without_shard(config: Config, shard: str) -> Config:
    """`config` as a router that has not yet been told of `shard` sees it."""
    return replace(config, shards={k: v for k, v in config.shards.items() if k != shard})


async def test_a_router_that_does_not_know_a_shard_never_forgets_a_decision_it_still_needs(
    migrated: Config, primaries: Primaries
) -> None:
    state = Path(migrated.cluster.state_dir)
    faulty = tp_config(migrated, 181, "audit-tp-faulty")
    europe, asia = uuid.uuid4(), uuid.uuid4()
    # 1. A router that knows every shard decides commit (europe coordinates, asia is its
    #    participant) and dies before COMMIT PREPARED reaches asia.
    with running_router(faulty, state / "router-audit-tp-faulty.toml",
                        {FAULT_ENV: "after_decision"}) as proc:
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            tx = db.transaction()
            await tx.start()
            await tx.execute(INSERT, europe, "europe", "audit")
            await tx.execute(INSERT, asia, "asia", "audit")
            with pytest.raises(client.ConnectionLostError):
                await tx.commit()
        assert proc.proc.wait(timeout=20) == FAULT_EXIT_CODE
    assert (await rows_of(primaries, europe))["europe"] == 1  # decided: commit
    assert (await prepared(primaries))["asia"], "asia's branch waits, prepared"
    gtid = await primaries["europe"].fetchval(
        "SELECT gtid FROM georoute_tx_decisions WHERE router = $1", "audit-tp-faulty")
    assert gtid is not None

    # 2. A router node not yet told of asia (its SIGHUP is still to come) sweeps.
    stale = without_shard(tp_config(migrated, 182, "audit-tp-stale"), "asia")

    async def decision_gone() -> bool:
        return not await primaries["europe"].fetchval(
            "SELECT count(*) FROM georoute_tx_decisions WHERE gtid = $1", gtid)

    with running_router(stale, state / "router-audit-tp-stale.toml"):
        # It sweeps every 0.2 s: 5 s is about 25 sweeps for the row to go, as it did.
        with contextlib.suppress(AssertionError):
            await wait_until(decision_gone, within=5, what="the stale router forgetting")
        assert not await decision_gone(), "the stale router forgot a decision asia needs"

    # 3. A router that knows every shard settles asia's branch: it must obey the decision.
    with running_router(tp_config(migrated, 183, "audit-tp-full"),
                        state / "router-audit-tp-full.toml"):
        await wait_until(lambda: none_prepared(primaries), within=20,
                         what="asia's branch settled")
    assert await rows_of(primaries, europe) == {"north_america": 0, "europe": 1, "asia": 0}
    assert await rows_of(primaries, asia) == {"north_america": 0, "europe": 0, "asia": 1}, (
        "decided commit (europe committed), yet asia's branch was rolled back")
