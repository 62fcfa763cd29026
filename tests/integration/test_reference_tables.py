"""Reference tables on the real cluster: a write goes to every shard's primary in one
two-phase commit (or to none), one that would change one copy only is refused, and
`georoute health` reports whether the copies agree, naming any that differ."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.db.connect import connect_node
from router.tools.db.health_report import check_health
from router.tools.db.reference_health import check_reference_tables
from tests.support.router_proc import REGIONS

DDL = """CREATE TABLE IF NOT EXISTS tp_ref (
    ref_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name   text NOT NULL
)"""
Primaries = dict[str, asyncpg.Connection]


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[Primaries]:
    conns = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    try:
        for conn in conns.values():
            await conn.execute(DDL)
        yield conns
    finally:
        for conn in conns.values():
            await conn.close()


async def copies(primaries: Primaries, ref: uuid.UUID) -> dict[str, list[str]]:
    return {r: [row[0] for row in await c.fetch("SELECT name FROM tp_ref WHERE ref_id = $1", ref)]
            for r, c in primaries.items()}


async def test_a_write_reaches_every_shards_copy(db: client.Client, primaries: Primaries) -> None:
    ref = uuid.uuid4()
    assert await db.execute("INSERT INTO tp_ref (ref_id, name) VALUES ($1, $2)",
                            ref, "first") == "INSERT 0 1"
    assert await copies(primaries, ref) == {r: ["first"] for r in REGIONS}
    # Each shard's token came back: the session's next reads see the write on any shard.
    assert set(REGIONS) <= set(db.ryw_state)
    rows = await db.fetch("UPDATE tp_ref SET name = $2 WHERE ref_id = $1 RETURNING name",
                          ref, "second")
    assert [tuple(r) for r in rows] == [("second",)]
    assert await copies(primaries, ref) == {r: ["second"] for r in REGIONS}
    for prepared in [await c.fetchval("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE "
                                      "'georoute:%'") for c in primaries.values()]:
        assert prepared == 0


async def test_a_write_to_one_copy_is_refused(db: client.Client, primaries: Primaries) -> None:
    ref = uuid.uuid4()
    await db.execute("INSERT INTO tp_ref (ref_id, name) VALUES ($1, 'kept')", ref)
    update = "UPDATE tp_ref SET name = 'one copy' WHERE ref_id = $1"
    with pytest.raises(client.CrossShardError, match="tp_ref is a reference table"):
        await db.execute(update, ref, shard="asia")
    with pytest.raises(client.CrossShardError, match="tp_ref is a reference table"):
        await db.executemany(update, [(ref,)], shard="asia")
    with pytest.raises(client.CrossShardError, match="tp_ref is a reference table"):
        await db.executemany(update, [(ref,)])
    async with db.transaction(shard="europe") as tx:
        with pytest.raises(client.CrossShardError, match="tp_ref is a reference table"):
            await tx.execute(update, ref)
    assert await copies(primaries, ref) == {r: ["kept"] for r in REGIONS}


async def test_a_write_that_would_leave_the_copies_different_is_refused(
    db: client.Client, primaries: Primaries
) -> None:
    ref = uuid.uuid4()
    await db.execute("INSERT INTO tp_ref (ref_id, name) VALUES ($1, 'before')", ref)
    await primaries["asia"].execute("DELETE FROM tp_ref WHERE ref_id = $1", ref)  # by hand
    with pytest.raises(client.CrossShardError, match="did not do the same on every shard"):
        await db.execute("UPDATE tp_ref SET name = 'after' WHERE ref_id = $1", ref)
    assert await copies(primaries, ref) == {"north_america": ["before"], "europe": ["before"],
                                            "asia": []}
    # A default computed on each shard would give each copy its own id: refused too.
    name = f"volatile-{uuid.uuid4()}"
    with pytest.raises(client.CrossShardError, match="did not do the same on every shard"):
        await db.fetch("INSERT INTO tp_ref (name) VALUES ($1) RETURNING ref_id", name)
    for conn in primaries.values():
        assert await conn.fetchval("SELECT count(*) FROM tp_ref WHERE name = $1", name) == 0


async def test_a_write_computing_its_rows_on_each_shard_is_refused_without_returning(
    db: client.Client, primaries: Primaries
) -> None:
    """Equal statuses ("INSERT 0 1" on every shard) are not equal copies: without a RETURNING,
    a default made on each shard (gen_random_uuid(), georoute_id(), now()) or a call of
    clock_timestamp() was committed, each copy with its own value. The rows each shard wrote
    are compared, whole."""
    name = f"volatile-{uuid.uuid4()}"
    with pytest.raises(client.CrossShardError, match="did not do the same on every shard"):
        await db.execute("INSERT INTO tp_ref (name) VALUES ($1)", name)
    for conn in primaries.values():
        assert await conn.fetchval("SELECT count(*) FROM tp_ref WHERE name = $1", name) == 0
    ref = uuid.uuid4()
    assert await db.execute("INSERT INTO tp_ref (ref_id, name) VALUES ($1, $2)",
                            ref, name) == "INSERT 0 1"
    with pytest.raises(client.CrossShardError, match="did not do the same on every shard"):
        await db.execute("UPDATE tp_ref SET name = clock_timestamp()::text WHERE ref_id = $1",
                         ref)
    assert await copies(primaries, ref) == {r: [name] for r in REGIONS}
    # The same rows everywhere: applied, its own RETURNING (or none) as before.
    assert await db.execute("UPDATE tp_ref SET name = $2 WHERE ref_id = $1", ref,
                            "same") == "UPDATE 1"
    rows = await db.fetch("DELETE FROM tp_ref WHERE ref_id = $1 RETURNING name", ref)
    assert [tuple(r) for r in rows] == [("same",)] and rows[0].keys() == ["name"]
    assert await copies(primaries, ref) == {r: [] for r in REGIONS}
    # Inside a WITH, the rows a reference write makes cannot be compared: refused.
    with pytest.raises(client.CrossShardError, match="inside a WITH"):
        await db.fetch("WITH w AS (INSERT INTO tp_ref (ref_id, name) VALUES ($1, 'w') "
                       "RETURNING 1) SELECT count(*) FROM w", uuid.uuid4())


async def test_health_names_a_reference_table_whose_copies_differ(
    db: client.Client, primaries: Primaries, migrated: Config
) -> None:
    await db.execute("TRUNCATE tp_ref")  # itself a reference-table write: every copy
    ref = uuid.uuid4()
    await db.execute("INSERT INTO tp_ref (ref_id, name) VALUES ($1, 'same')", ref)
    report = await check_reference_tables(migrated)
    table = {t.name: t for t in report.tables}["tp_ref"]
    assert table.agree and "tp_ref" not in report.differing
    assert {c.rows for c in table.copies.values() if c is not None} == {1}
    assert set(table.copies) == set(REGIONS)

    await primaries["europe"].execute("UPDATE tp_ref SET name = 'drifted' WHERE ref_id = $1",
                                      ref)  # by hand, on one shard
    report = await check_reference_tables(migrated)
    table = {t.name: t for t in report.tables}["tp_ref"]
    assert not table.agree and "tp_ref" in report.differing
    europe, asia = table.copies["europe"], table.copies["asia"]
    assert europe is not None and asia is not None
    assert europe.rows == asia.rows == 1 and europe.digest != asia.digest
    health = await check_health(migrated)
    assert "tp_ref" in health.reference.differing
    assert "DIFFER" in health.format_table() and "tp_ref" in health.format_table()
    assert "tp_ref" in health.as_dict()["reference_tables"]["differing"]
    await primaries["europe"].execute("UPDATE tp_ref SET name = 'same' WHERE ref_id = $1", ref)
