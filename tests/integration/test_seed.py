"""`georoute seed` on the real cluster: deterministic for a seed, consistent with every
constraint the triggers would have checked, ids on their home shard, documents included."""

from __future__ import annotations

import pytest

from router.config import Config
from router.errors import GeorouteError
from router.tools.cli import build_parser
from router.tools.db.connect import connect_node
from router.tools.db.documents import COURSE_CONTENT, USER_PREFERENCES, DocumentStore
from router.tools.db.seed import SeedOptions, seed, table_checksums

# Every foreign key as (child, child columns, parent, parent columns).
_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent,
       array(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY i)
           AS child_cols,
       array(SELECT attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY i)
           AS parent_cols
  FROM pg_constraint c WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
"""


@pytest.fixture(scope="module")
async def seeded(migrated: Config) -> Config:
    await seed(migrated, SeedOptions(users=90, seed=11, progress=False))
    return migrated


async def test_same_seed_gives_identical_data(seeded: Config) -> None:
    first = await table_checksums(seeded)
    report = await seed(seeded, SeedOptions(users=90, seed=11, progress=False))
    assert await table_checksums(seeded) == first
    for shard, tables in first.items():
        assert tables["users"][0] == report.rows[shard]["users"] > 0
        assert all(tables[t][0] > 0 for t in ("courses", "lessons", "enrollments",
                                              "lesson_progress", "payments", "invoices"))
    assert "north_america" in report.summary()
    async with DocumentStore(seeded) as store:
        for region, counts in report.documents.items():
            for collection in (COURSE_CONTENT, USER_PREFERENCES):
                assert await store.db[collection].count_documents({"region": region}) == (
                    counts[collection])


async def test_another_seed_gives_other_data(seeded: Config) -> None:
    first = await table_checksums(seeded, ("users", "courses"))
    await seed(seeded, SeedOptions(users=90, seed=12, documents=False, progress=False))
    try:
        assert await table_checksums(seeded, ("users", "courses")) != first
    finally:
        await seed(seeded, SeedOptions(users=90, seed=11, documents=False, progress=False))


async def test_seeded_rows_satisfy_keys_triggers_and_residency(seeded: Config) -> None:
    for shard in seeded.shards.values():
        conn = await connect_node(seeded, shard.primary)
        try:
            for fk in await conn.fetch(_FOREIGN_KEYS):
                child_cols = ", ".join(f"c.{col}" for col in fk["child_cols"])
                match = " AND ".join(f"p.{p} = c.{c}" for c, p in zip(
                    fk["child_cols"], fk["parent_cols"], strict=True))
                orphans = await conn.fetchval(
                    f"SELECT count(*) FROM {fk['child']} c WHERE ({child_cols}) IS NOT NULL "
                    f"AND NOT EXISTS (SELECT 1 FROM {fk['parent']} p WHERE {match})")
                assert orphans == 0, f"{shard.name}: {fk['child']} -> {fk['parent']}"
            # The caches agree with a full recalculation, the trigger-checked rules hold.
            assert await conn.fetchval("SELECT recalculate_aggregates()") == 0
            assert await conn.fetchval(
                "SELECT count(*) FROM lesson_progress lp JOIN enrollments e USING "
                "(enrollment_id) JOIN lessons l USING (lesson_id) JOIN course_modules m "
                "ON m.module_id = l.module_id WHERE m.course_id <> e.course_id") == 0
            assert await conn.fetchval(
                "SELECT bool_and(home_region = $1) FROM users", shard.name)
            assert await conn.fetchval(
                "SELECT bool_and(georoute_shard_of(user_id) = $1) FROM users", shard.number)
            assert await conn.fetchval(
                "SELECT bool_and(georoute_shard_of(payment_id) = $1) FROM payments",
                shard.number)
            assert await conn.fetchval(
                "SELECT count(*) FROM courses WHERE capacity < enrollment_count") == 0
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
        finally:
            await conn.close()


async def test_seeded_shard_still_mints_new_invoice_numbers(seeded: Config) -> None:
    conn = await connect_node(seeded, seeded.shards["europe"].primary)
    try:
        last = await conn.fetchval("SELECT max(invoice_number) FROM invoices")
        async with conn.transaction():
            payment = await conn.fetchval(
                "SELECT payment_id FROM payments p WHERE status = 'succeeded' AND NOT EXISTS "
                "(SELECT 1 FROM invoices i WHERE i.payment_id = p.payment_id) LIMIT 1")
            if payment is None:  # every seeded payment has its invoice: make one more
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(
                    "DELETE FROM invoices WHERE invoice_number = $1", last)
                payment = await conn.fetchval(
                    "SELECT payment_id FROM payments p WHERE status = 'succeeded' AND NOT "
                    "EXISTS (SELECT 1 FROM invoices i WHERE i.payment_id = p.payment_id) LIMIT 1")
                await conn.execute("SET LOCAL session_replication_role = origin")
            invoice = await conn.fetchval("SELECT issue_invoice($1, 0.2)", payment)
            number = await conn.fetchval(
                "SELECT invoice_number FROM invoices WHERE invoice_id = $1", invoice)
            assert int(number.rsplit("-", 1)[1]) > int(last.rsplit("-", 1)[1])
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()


class _Rollback(Exception):
    """Leaves the seeded data as it was."""


async def test_seed_refuses_too_few_users(migrated: Config) -> None:
    with pytest.raises(GeorouteError, match="at least"):
        await seed(migrated, SeedOptions(users=2, progress=False))


def test_cli_registers_db_seed_and_health() -> None:
    parser = build_parser()
    args = parser.parse_args(["seed", "--users", "1000", "--seed", "7", "--quiet"])
    assert (args.users, args.seed, args.quiet) == (1000, 7, True)
    assert parser.parse_args(["db", "migrate"]).func.__name__ == "_cmd_migrate"
    assert parser.parse_args(["health", "--json"]).json is True
