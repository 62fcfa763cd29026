"""A router killed in the middle of a two-phase commit (a test-only fault point makes it exit
on the spot, as kill -9 would): after every PREPARE, and after the decision. Another router
node settles what it left alike on every shard, and pg_prepared_xacts ends empty. Apart from
test_twophase.py so that no router with a short grace period runs while the branches wait."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import client
from router.config import Config
from router.engine.twophase import FAULT_ENV, FAULT_EXIT_CODE
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, running_router
from tests.support.twophase import (
    INSERT,
    Primaries,
    none_prepared,
    prepared,
    rows_of,
    tp_config,
    tp_primaries,
)


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[Primaries]:
    async with tp_primaries(migrated) as conns:
        yield conns


@pytest.mark.parametrize(("point", "committed"), [("after_prepare", False),
                                                  ("after_decision", True)])
async def test_a_router_killed_mid_commit_is_settled_by_another_alike_on_every_shard(
    migrated: Config, primaries: Primaries, point: str, committed: bool
) -> None:
    """Killed after every PREPARE (nothing decided: the prepared branch holds its locks until
    another router presumes the abort) or after the decision (another router commits it)."""
    state = Path(migrated.cluster.state_dir)
    faulty = tp_config(migrated, 121, f"tp-faulty-{point}")
    europe, asia, na = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with running_router(faulty, state / "router-tp-faulty.toml", {FAULT_ENV: point}) as proc:
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            # A transaction that wrote on one shard (and read another) commits as any does,
            # with no PREPARE: the fault point is not reached.
            async with db.transaction() as tx:
                await tx.fetch("SELECT * FROM tp_items WHERE item_id = $1 AND region = 'asia'",
                               asia)
                await tx.execute(INSERT, na, "north_america", "one shard wrote")
            tx = db.transaction()
            await tx.start()
            await tx.execute(INSERT, europe, "europe", point)  # europe coordinates
            await tx.execute(INSERT, asia, "asia", point)  # asia is prepared
            with pytest.raises(client.ConnectionLostError):
                await tx.commit()
        assert proc.proc.wait(timeout=20) == FAULT_EXIT_CODE
    assert await rows_of(primaries, na) == {"north_america": 1, "europe": 0, "asia": 0}
    left = await prepared(primaries)
    assert not left["europe"] and not left["north_america"]  # europe's branch is never prepared
    if committed:
        # Decided: europe's half is committed. Asia's waits for a router to commit it (the
        # session's own router, grace 10 s, may have done so already: it may not roll it back).
        assert (await rows_of(primaries, europe))["europe"] == 1
        assert left["asia"] or (await rows_of(primaries, asia))["asia"] == 1
    else:
        # Nothing decided, nothing committed; asia's branch waits, holding its locks.
        assert left["asia"]
        assert (await rows_of(primaries, europe))["europe"] == 0
        assert (await rows_of(primaries, asia))["asia"] == 0

    names = [faulty.router.node_name, "tp-recovering"]

    async def forgotten() -> bool:  # decision rows go once no branch of theirs is left
        for conn in primaries.values():
            if await conn.fetchval("SELECT count(*) FROM georoute_tx_decisions "
                                   "WHERE router = ANY($1)", names):
                return False
        return True

    # Another router node (the fault point is not set on it) settles them from start-up on.
    with running_router(tp_config(migrated, 122, "tp-recovering"), state / "router-tp-2.toml"):
        await wait_until(lambda: none_prepared(primaries), within=20,
                         what="every prepared branch settled")
        await wait_until(forgotten, within=20, what="the decision rows forgotten")
    expected = 1 if committed else 0
    assert await rows_of(primaries, europe) == {"north_america": 0, "europe": expected, "asia": 0}
    assert await rows_of(primaries, asia) == {"north_america": 0, "europe": 0, "asia": expected}
