"""Audit reproduction: the recovery sweep's COMMIT PREPARED (Recovery._carry_out) is awaited
without bound. An earlier audit bounded the sweep's questions (Recovery._ask, 5 s each) so
that one stalled shard does not hold the others up; the statements that settle a branch
(COMMIT/ROLLBACK PREPARED, and the abort record of Recovery._record_abort) were left
unbounded. A link that stalls as COMMIT PREPARED reaches europe stops the whole sweep: a
branch on asia, decided commit, stays prepared (holding its locks) for as long as the stall
lasts. Now each is bounded as the questions are (ASK_SECONDS).

The two in-doubt transactions are made by hand, as a coordinator that died after its
decision leaves them: a branch prepared under georoute's name, its decision row committed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import TcpFaultProxy
from tests.support.router_proc import primary_through, running_router
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

SHIFT = 186

# A cluster of its own: the session's router (and any other with a recovery sweeper) would
# settle the branches these tests leave in doubt, and the test would then say nothing.
SCRATCH_OFFSET = 7750


@pytest.fixture(scope="module")
def migrated(test_config: Config) -> Iterator[Config]:
    """A scratch cluster, migrated, that no other router node sweeps (overrides conftest's)."""
    with migrated_scratch(test_config, SCRATCH_OFFSET, "scratch-audit-recovery") as config:
        yield config


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[Primaries]:
    async with tp_primaries(migrated) as conns:
        yield conns


@pytest.fixture
def europe_proxy(migrated: Config) -> Iterator[TcpFaultProxy]:
    primary = migrated.shards["europe"].primary
    proxy = TcpFaultProxy((primary.host, primary.port), lifetime=120)
    with proxy.running_in_thread():
        yield proxy


async def _left_in_doubt(primaries: Primaries, coordinator: str, participant: str,
                         item: uuid.UUID) -> str:
    """A committed decision on `coordinator` and `item`'s row prepared on `participant`."""
    gtid = uuid.uuid4().hex
    conn = primaries[participant]
    await conn.execute("BEGIN")
    await conn.execute(INSERT, item, participant, "audit-recovery")
    await conn.execute(f"PREPARE TRANSACTION 'georoute:{gtid}:{coordinator}:{participant}'")
    await primaries[coordinator].execute(
        "INSERT INTO georoute_tx_decisions (gtid, decision, participants, router) "
        "VALUES ($1, 'commit', $2, 'audit-dead-coordinator')", gtid, [participant])
    return gtid


async def test_a_stalled_commit_prepared_does_not_stop_recovery_on_the_other_shards(
    migrated: Config, primaries: Primaries, europe_proxy: TcpFaultProxy,
) -> None:
    on_europe, on_asia = uuid.uuid4(), uuid.uuid4()
    await _left_in_doubt(primaries, "asia", "europe", on_europe)  # swept first (shard order)
    await _left_in_doubt(primaries, "north_america", "asia", on_asia)
    europe_proxy.fault_on(b"COMMIT PREPARED", "stall", deliver=False)
    config = primary_through(tp_config(migrated, SHIFT, "audit-recovery-links"), "europe",
                             europe_proxy.port)

    async def asia_settled() -> bool:
        return not (await prepared(primaries))["asia"]

    settled = True
    with running_router(config, Path(migrated.cluster.state_dir) / "router-audit-rec.toml"):
        try:
            await wait_until(asia_settled, within=15, what="asia's branch committed")
        except AssertionError:
            settled = False
        triggered = europe_proxy.triggered()
        europe_proxy.resume()
        await wait_until(lambda: none_prepared(primaries), within=30,
                         what="everything settled once the link heals")
    assert triggered
    assert (await rows_of(primaries, on_europe))["europe"] == 1
    assert (await rows_of(primaries, on_asia))["asia"] == 1
    assert settled, ("asia's prepared branch (decided commit) stayed prepared for 15 s while "
                     "europe's link was stalled at COMMIT PREPARED")
