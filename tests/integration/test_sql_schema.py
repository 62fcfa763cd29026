"""The schema itself, on every shard: tables, indexes, functions, triggers, the id layout, and
the constraints that refuse bad rows without any application code."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pytest

from router.config import Config
from router.core.ids import shard_number_of
from router.tools.db.connect import connect_node
from tests.integration.conftest import Catalogue

TABLES = {
    "users", "user_credentials", "user_sessions", "categories", "courses", "course_modules",
    "lessons", "enrollments", "lesson_progress", "payments", "invoices", "reviews", "coupons",
    "certificates", "audit_log", "georoute_shard", "schema_migrations",
}


async def test_every_shard_has_the_same_schema(migrated: Config) -> None:
    shapes = []
    for shard in migrated.shards.values():
        conn = await connect_node(migrated, shard.primary)
        try:
            tables = {r["table_name"] for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema='public'")}
            assert TABLES <= tables
            indexes = await conn.fetchval(
                "SELECT count(*) FROM pg_indexes i WHERE schemaname = 'public' "
                "AND indexname NOT LIKE '%_pkey'")
            functions = await conn.fetchval(
                "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                "WHERE p.pronamespace = 'public'::regnamespace AND l.lanname = 'plpgsql' "
                "AND p.prorettype <> 'trigger'::regtype")
            triggers = await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
            assert indexes >= 40 and functions >= 20 and triggers >= 5
            shapes.append(await conn.fetch(
                "SELECT table_name, column_name, data_type, is_nullable FROM "
                "information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"))
        finally:
            await conn.close()
    assert shapes[0] == shapes[1] == shapes[2]


async def test_router_toml_tables_match_the_schema(migrated: Config, eu: asyncpg.Connection
                                                   ) -> None:
    for table in migrated.tables.values():
        columns = {r["column_name"] for r in await eu.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
            table.name)}
        expected = set(table.id_columns) | ({table.region_column} - {None})
        assert expected <= columns, f"{table.name} lacks {expected - columns}"


async def test_georoute_id_follows_the_layout_on_every_shard(migrated: Config) -> None:
    for shard in migrated.shards.values():
        conn = await connect_node(migrated, shard.primary)
        try:
            before = int(time.time() * 1000)
            ids = [r[0] for r in await conn.fetch("SELECT georoute_id() FROM generate_series(1, 50)")]
            after = int(time.time() * 1000)
        finally:
            await conn.close()
        assert len(set(ids)) == 50
        for value in ids:
            raw = value.bytes
            assert before - 1000 <= int.from_bytes(raw[:6], "big") <= after + 1000
            assert raw[6] >> 4 == 8 and raw[8] >> 6 == 0b10
            assert raw[7] == shard.number == shard_number_of(value)


async def test_georoute_shard_of_decodes_and_ignores_other_uuids(eu: asyncpg.Connection,
                                                                 migrated: Config) -> None:
    number = migrated.shards["europe"].number
    assert await eu.fetchval("SELECT georoute_shard_of(georoute_id())") == number
    assert await eu.fetchval("SELECT georoute_shard_of($1)", uuid.uuid4()) is None
    # Every table's key defaults to a georoute id of this shard.
    user = await Catalogue(eu, "europe").user()
    assert shard_number_of(user) == number


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        # price >= 0
        ("UPDATE courses SET price_cents = -1 WHERE course_id = $1", "23514"),
        # a published course has a publication time
        ("UPDATE courses SET published_at = NULL WHERE course_id = $1", "23514"),
        # ratings are cached in range and only with reviews
        ("UPDATE courses SET rating_avg = 4.5 WHERE course_id = $1", "23514"),
        # the region of a course is this shard's
        ("UPDATE courses SET region = 'asia' WHERE course_id = $1", "GR003"),
    ],
)
async def test_course_constraints(catalogue: Catalogue, sql: str, sqlstate: str) -> None:
    course = await catalogue.course()
    with pytest.raises(asyncpg.PostgresError) as err:
        await catalogue.conn.execute(sql, course.course_id)
    assert err.value.sqlstate == sqlstate


async def test_user_constraints(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    email = f"{uuid.uuid4().hex}@Example.com"
    await catalogue.user(email=email)
    with pytest.raises(asyncpg.UniqueViolationError):  # case-insensitive unique email
        await conn.execute(
            "INSERT INTO users (email, full_name, home_region, country, city) "
            "VALUES ($1, 'X', 'europe', 'DE', 'Bonn')", email.upper())
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO users (email, full_name, home_region, country, city) "
            "VALUES ('not-an-email', 'X', 'europe', 'DE', 'Bonn')")
    with pytest.raises(asyncpg.PostgresError) as err:  # residency: a user lives at home
        await conn.execute(
            "INSERT INTO users (email, full_name, home_region, country, city) "
            "VALUES ($1, 'X', 'asia', 'JP', 'Osaka')", f"{uuid.uuid4().hex}@example.com")
    assert err.value.sqlstate == "GR003"


async def test_review_rating_check_and_enrollment_fk(catalogue: Catalogue) -> None:
    course = await catalogue.course()
    user, _ = await catalogue.enrolled(course)
    stranger = await catalogue.user()
    with pytest.raises(asyncpg.CheckViolationError):
        await catalogue.conn.execute(
            "INSERT INTO reviews (user_id, course_id, rating) VALUES ($1, $2, 6)",
            user, course.course_id)
    with pytest.raises(asyncpg.ForeignKeyViolationError):  # only enrolled users review
        await catalogue.conn.execute(
            "INSERT INTO reviews (user_id, course_id, rating) VALUES ($1, $2, 5)",
            stranger, course.course_id)
