"""Routing against the truth: issue #12's statements through the router, each compared with
what every shard's primary says when asked directly. A statement either gets the answer one
database holding all the rows would give, or is refused; a write never changes a subset of its
rows; every row lands on the shard its own key names."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.db.connect import connect_node
from tests.integration.conftest import Catalogue, unique, wait_until
from tests.support.router_proc import REGIONS


@dataclass
class World:
    """Three users with the same name, one per shard, and an audit row per shard."""

    name: str
    users: dict[str, uuid.UUID]
    audits: dict[str, uuid.UUID]
    entity: str
    course: uuid.UUID  # a europe course
    primaries: dict[str, asyncpg.Connection]

    async def on_each(self, sql: str, *params: Any) -> dict[str, list[asyncpg.Record]]:
        return {r: await c.fetch(sql, *params) for r, c in self.primaries.items()}


@pytest.fixture
async def world(migrated: Config) -> AsyncIterator[World]:
    primaries = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    try:
        name, entity = unique("Truth "), unique("entity-")
        users: dict[str, uuid.UUID] = {}
        audits: dict[str, uuid.UUID] = {}
        for region, conn in primaries.items():
            users[region] = await conn.fetchval(
                "INSERT INTO users (email, full_name, home_region, country, city) "
                "VALUES ($1, $2, $3, $4, 'Town') RETURNING user_id",
                f"{unique('t')}@example.com", name, region,
                "DE" if region == "europe" else "US")
            audits[region] = await conn.fetchval(
                "INSERT INTO audit_log (action, entity) VALUES ($1, $2) RETURNING audit_id",
                str(users["north_america"]), entity)
        course = (await Catalogue(primaries["europe"], "europe").course(lessons=1)).course_id
        yield World(name, users, audits, entity, course, primaries)
    finally:
        for conn in primaries.values():
            await conn.close()


def total(rows: Mapping[str, Sequence[Any]], shards: Sequence[str]) -> int:
    return sum(int(rows[s][0][0]) for s in shards)


def concat(rows: Mapping[str, Sequence[Any]], shards: Sequence[str]) -> list[Any]:
    return sorted(tuple(r) for s in shards for r in rows[s])


Combine = Callable[[Mapping[str, Sequence[Any]], Sequence[str]], Any]
READS: list[tuple[str, Callable[[World], list[Any]], Combine]] = [
    ("SELECT count(*) FROM users WHERE full_name = $2 AND created_at >= "
     "(SELECT created_at FROM users WHERE user_id = $1)",
     lambda w: [w.users["north_america"], w.name], total),
    ("SELECT user_id FROM users WHERE user_id = $1 UNION ALL "
     "SELECT user_id FROM users WHERE full_name = $2",
     lambda w: [w.users["europe"], w.name], concat),
    ("SELECT user_id FROM users WHERE full_name = $2 AND (country = 'US' OR user_id IN "
     "(SELECT user_id FROM users WHERE user_id = $1))",
     lambda w: [w.users["europe"], w.name], concat),
    ("SELECT count(*) FROM users u WHERE u.full_name = $2 AND NOT EXISTS "
     "(SELECT 1 FROM enrollments e WHERE e.user_id = $1)",
     lambda w: [w.users["europe"], w.name], total),
    ("SELECT count(*) FROM users WHERE full_name = $2 AND home_region <> lower($1)",
     lambda w: ["EUROPE", w.name], total),
    ("SELECT count(*) FROM audit_log WHERE action = $1",  # text shaped like an id
     lambda w: [str(w.users["north_america"])], total),
]


@pytest.mark.parametrize(("sql", "params", "combine"), READS)
async def test_reads_no_key_confines_get_the_truth_or_are_refused(
    db: client.Client, world: World, sql: str, params: Callable[[World], list[Any]],
    combine: Combine,
) -> None:
    args = params(world)
    per_shard = await world.on_each(sql, *args)
    truth = combine(per_shard, REGIONS)
    # What the router once answered (one shard's rows) is not the truth ...
    assert any(combine(per_shard, [s]) != truth for s in REGIONS)
    # ... so it must either read every shard and merge (#15), or refuse saying why.
    try:
        answer = await db.fetch(sql, *args, consistency="strong")
    except client.CrossShardError as exc:
        assert "cross-shard read refused" in str(exc)
        return
    merged = {"north_america": [tuple(r) for r in answer]}
    assert combine(merged, ["north_america"]) == truth


async def test_a_confined_read_equals_the_truth(db: client.Client, world: World) -> None:
    sql = ("SELECT u.user_id, u.full_name FROM users u WHERE u.user_id = $1 AND NOT EXISTS "
           "(SELECT 1 FROM enrollments e WHERE e.user_id = u.user_id)")
    for region in REGIONS:
        user = world.users[region]
        truth = concat(await world.on_each(sql, user), REGIONS)
        assert truth == [(user, world.name)]
        answer = await db.fetch(sql, user, consistency="strong")
        assert sorted(tuple(r) for r in answer) == truth


async def snapshot(world: World) -> dict[str, list[Any]]:
    users = await world.on_each("SELECT user_id, city FROM users WHERE full_name = $1 "
                                "ORDER BY 1", world.name)
    audits = await world.on_each("SELECT audit_id, region, action, details::text FROM audit_log "
                                 "WHERE entity = $1 ORDER BY 1", world.entity)
    return {r: [*map(tuple, users[r]), *map(tuple, audits[r])] for r in REGIONS}


WRITES: list[tuple[str, Callable[[World], list[Any]], dict[str, Any]]] = [
    ("UPDATE users SET city = 'changed' WHERE full_name = $2 AND EXISTS "
     "(SELECT 1 FROM courses WHERE course_id = $1)", lambda w: [w.course, w.name], {}),
    ("UPDATE users SET city = 'changed' WHERE full_name = $2 AND home_region <> lower($1)",
     lambda w: ["europe", w.name], {}),
    ("WITH u AS (UPDATE audit_log SET details = '{\"x\": 1}' WHERE entity = $2 RETURNING 1) "
     "SELECT count(*) FROM audit_log WHERE region = $1", lambda w: ["europe", w.entity], {}),
    ("MERGE INTO audit_log a USING (SELECT 1) s ON a.audit_id = $1 "
     "WHEN MATCHED THEN UPDATE SET region = 'asia'", lambda w: [w.audits["europe"]], {}),
    ("INSERT INTO audit_log (region, action, entity) "
     "SELECT 'asia', 'copied', entity FROM audit_log WHERE audit_id = $1",
     lambda w: [w.audits["europe"]], {}),
    ("WITH n AS (INSERT INTO audit_log (region, action, entity) VALUES ('asia', 'cte', $2) "
     "RETURNING 1) SELECT * FROM users WHERE user_id = $1",
     lambda w: [w.users["europe"], w.entity], {}),
    ("MERGE INTO audit_log a USING (SELECT 1) s ON a.audit_id = $1 WHEN NOT MATCHED THEN "
     "INSERT (region, action, entity) VALUES ('asia', 'merged', $2)",
     lambda w: [uuid.uuid4(), w.entity], {"shard": "europe"}),
    # A hint that contradicts the row's own region.
    ("INSERT INTO audit_log (region, action, entity) VALUES ('asia', 'hinted', $1)",
     lambda w: [w.entity], {"shard": "europe"}),
]


@pytest.mark.parametrize(("sql", "params", "hints"), WRITES)
async def test_writes_that_would_touch_part_of_their_rows_or_misplace_one_are_refused(
    db: client.Client, world: World, sql: str, params: Callable[[World], list[Any]],
    hints: dict[str, Any],
) -> None:
    before = await snapshot(world)
    with pytest.raises((client.MissingShardKeyError, client.CrossShardError)):
        await db.execute(sql, *params(world), **hints)
    assert await snapshot(world) == before  # not one row changed, on any shard


async def test_a_reference_table_write_is_refused_when_its_copies_would_differ(
    db: client.Client, world: World
) -> None:
    """The category exists on europe only (written there by hand): a write to every copy
    would change one of them, so it changes none (test_reference_tables.py has the rest)."""
    category = await world.primaries["europe"].fetchval("SELECT category_id FROM courses "
                                                        "WHERE course_id = $1", world.course)
    for shard in (None, "europe"):
        with pytest.raises(client.CrossShardError, match="categories"):
            await db.execute("UPDATE categories SET name = $2 WHERE category_id = $1",
                             category, "renamed", shard=shard)
    names = await world.on_each("SELECT name FROM categories WHERE category_id = $1", category)
    assert all(row[0] != "renamed" for rows in names.values() for row in rows)


async def test_rows_land_on_the_shard_their_key_names(db: client.Client, world: World) -> None:
    for region in REGIONS:
        await db.execute("INSERT INTO audit_log (region, action, entity) VALUES ($1, 'placed', $2)",
                         region, world.entity)
    placed = await world.on_each("SELECT region FROM audit_log WHERE entity = $1 AND "
                                 "action = 'placed'", world.entity)
    assert {r: [row[0] for row in rows] for r, rows in placed.items()} == {r: [r] for r in REGIONS}


async def _terminate_backend(conn: asyncpg.Connection, marker: str) -> None:
    """End the backend (seen from `conn`'s node) whose last statement holds `marker`."""

    async def killed() -> bool:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE $1 AND pid <> pg_backend_pid()) t", f"%{marker}%"))

    await wait_until(killed, what=f"the backend of {marker} terminated")


# Writes a DML status does not count: (statement, its parameters from the world, its shard
# hint, the status it reports); each writes an audit row on europe named by its key.
_UNCOUNTED_WRITES = {
    # A writable CTE.
    "cte": ("WITH a AS (INSERT INTO audit_log (region, action, entity) VALUES ('europe', "
            "'cte', $2) RETURNING 1) UPDATE users SET city = city WHERE user_id = $1 AND false",
            lambda w: (w.users["europe"], w.entity), None, "UPDATE 0"),
    # A write function the DML calls once, before it finds no row (found by an audit).
    "function": ("DELETE FROM audit_log WHERE region = 'europe' AND entity = 'no such entity' "
                 "AND (SELECT record_audit('function', $1, NULL)) IS NOT NULL",
                 lambda w: (w.entity,), "europe", "DELETE 0"),
}


@pytest.mark.parametrize("action", list(_UNCOUNTED_WRITES))
async def test_a_write_its_status_does_not_count_gives_a_read_your_writes_token(
    db: client.Client, world: World, migrated: Config, action: str
) -> None:
    """A statement that reports 0 rows yet wrote: the session's next read must see the row.
    With the europe replica's replay paused, a read the router sent there would not; with the
    token it goes to the primary."""
    sql, params, shard, reported = _UNCOUNTED_WRITES[action]
    replica = await connect_node(migrated, migrated.shards["europe"].replicas[0])
    try:
        await replica.execute("SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            return bool(await replica.fetchval("SELECT pg_get_wal_replay_pause_state() = "
                                               "'paused'"))

        await wait_until(paused, what="replay paused on the europe replica")
        status = await db.execute(sql, *params(world), shard=shard)
        assert status == reported
        assert await world.primaries["europe"].fetchval(
            "SELECT count(*) FROM audit_log WHERE entity = $1 AND action = $2",
            world.entity, action) == 1  # it did write
        seen = await db.fetchval("SELECT count(*) FROM audit_log WHERE region = 'europe' "
                                 "AND entity = $1 AND action = $2", world.entity, action)
        assert seen == 1
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()


async def test_a_write_its_status_does_not_count_is_in_the_two_phase_commit(
    db: client.Client, world: World
) -> None:
    """A transaction over two shards whose europe write hides behind `DELETE 0` (a function
    the DELETE calls inserts a session row): europe's branch wrote, so it commits with asia's
    in two phases. When its connection is lost before the commit, the transaction fails with
    neither write applied; it was once taken for a reader, committed apart after asia's
    commit, and its failure ignored: the client was told COMMIT with europe's write lost
    (found by an audit)."""
    eu, asia = world.users["europe"], world.users["asia"]
    marker = f"hidden-{uuid.uuid4().hex}"
    token_hash = f"th-{uuid.uuid4().hex}"
    europe = world.primaries["europe"]
    committed: str | Exception
    async with db.transaction() as tx:
        await tx.execute("UPDATE users SET city = 'tx-asia' WHERE user_id = $1", asia)
        status = await tx.execute(
            f"/* {marker} */ DELETE FROM user_sessions WHERE user_id = $1 "
            "AND token_hash = 'none' AND (SELECT create_session($1, $2)) IS NOT NULL",
            eu, token_hash)
        assert status == "DELETE 0"

        # Its connection is lost: a node restart, a network fault, an operator.
        await _terminate_backend(europe, marker)
        try:
            committed = await tx.commit()
        except client.GeorouteError as exc:
            committed = exc
    asia_city = await world.primaries["asia"].fetchval(
        "SELECT city FROM users WHERE user_id = $1", asia)
    sessions = await europe.fetchval(
        "SELECT count(*) FROM user_sessions WHERE token_hash = $1", token_hash)
    assert isinstance(committed, client.GeorouteError), committed
    assert (asia_city, sessions) == ("Town", 0), (
        f"told {committed!r}, but asia city {asia_city!r}, europe sessions {sessions}")


@pytest.mark.parametrize("isolation", ["serializable", "read_committed"])
async def test_a_serializable_transaction_fails_when_a_shard_it_only_read_cannot_commit(
    db: client.Client, world: World, isolation: str
) -> None:
    """Over two shards: read on europe, write on asia, then europe's branch loses its
    connection before the commit. Serializable: PostgreSQL checks at a COMMIT that what was
    read can be serialized (it may refuse one with 40001), and that COMMIT cannot be made, so
    the transaction fails and asia's write is rolled back (readers commit before the writer).
    Read committed: the reads are done and a reader's COMMIT changes nothing; the commit
    stands."""
    eu, asia = world.users["europe"], world.users["asia"]
    marker = f"reader-{uuid.uuid4().hex}"
    city = f"city-{uuid.uuid4().hex[:8]}"
    committed: str | Exception
    async with db.transaction(isolation=isolation) as tx:
        assert await tx.fetchval(f"/* {marker} */ SELECT city FROM users WHERE user_id = $1",
                                 eu) == "Town"
        await tx.execute("UPDATE users SET city = $2 WHERE user_id = $1", asia, city)

        await _terminate_backend(world.primaries["europe"], marker)
        try:
            committed = await tx.commit()
        except client.GeorouteError as exc:
            committed = exc
    asia_city = await world.primaries["asia"].fetchval(
        "SELECT city FROM users WHERE user_id = $1", asia)
    if isolation == "serializable":
        assert isinstance(committed, client.GeorouteError), committed
        assert asia_city == "Town"
    else:
        assert committed == "COMMIT"
        assert asia_city == city
