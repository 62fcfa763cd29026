"""An adversarial review's wrong answers, through the router against the real cluster: each
statement either gets the answer one database holding every shard's rows would give (asked of
each primary directly and combined), or is refused saying why; never a part of the truth."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.db.connect import connect_node
from tests.integration.conftest import unique
from tests.support.router_proc import REGIONS, TOKEN, RouterProcess


@dataclass
class Coupons:
    """A coupon for any course (course_id NULL) on each shard, by a code of this test's own."""

    ids: dict[str, uuid.UUID]
    codes: list[str]
    primaries: dict[str, asyncpg.Connection]


@pytest.fixture
async def coupons(migrated: Config) -> AsyncIterator[Coupons]:
    primaries = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    ids: dict[str, uuid.UUID] = {}
    codes: list[str] = []
    try:
        for region, conn in primaries.items():
            code = unique("any-").replace(" ", "")[:32]
            codes.append(code)
            ids[region] = await conn.fetchval(
                "INSERT INTO coupons (code, percent_off) VALUES ($1, 10) RETURNING coupon_id",
                code)
        yield Coupons(ids, codes, primaries)
    finally:
        for region, conn in primaries.items():
            await conn.execute("DELETE FROM coupons WHERE coupon_id = $1", ids.get(region))
            await conn.close()


async def test_a_null_safe_join_on_a_nullable_key_meets_every_shards_nulls(
        db: client.Client, coupons: Coupons) -> None:
    """`IS NOT DISTINCT FROM` between shard keys matches NULL with NULL, and NULL keys are on
    every shard: once taken as a join on the key, it was answered from europe alone (1)."""
    sql = ("SELECT count(*) FROM coupons a JOIN coupons b "
           "ON b.course_id IS NOT DISTINCT FROM a.course_id "
           "WHERE a.coupon_id = $1 AND b.code = ANY($2::text[])")
    args = (coupons.ids["europe"], coupons.codes)
    truth = sum([await conn.fetchval(
        "SELECT count(*) FROM coupons b WHERE b.course_id IS NULL AND b.code = ANY($1::text[])",
        coupons.codes) for conn in coupons.primaries.values()])
    assert truth == len(REGIONS)
    try:
        answer = await db.fetchval(sql, *args, consistency="strong")
    except client.CrossShardError as exc:
        assert "cross-shard read refused" in str(exc)
        return
    assert answer == truth


async def test_currval_never_answers_with_another_clients_sequence_value(
        router: RouterProcess, db: client.Client) -> None:
    """A backend connection serves client after client: currval() and lastval() of one that
    never called nextval() answered with another client's value (one database would have
    refused: "currval of sequence is not yet defined in this session")."""
    await db.execute("CREATE SEQUENCE IF NOT EXISTS review_seq", shard="europe")
    for _ in range(4):
        await db.fetchval("SELECT nextval('review_seq')", shard="europe")
    other = await client.connect(router.dsn, token=TOKEN)
    async with other:
        for sql in ("SELECT currval('review_seq')", "SELECT lastval()"):
            for _ in range(4):
                with pytest.raises(client.GeorouteError) as refused:
                    await other.fetchval(sql, shard="europe")
                assert "another client" in str(refused.value) or "not yet defined" in str(
                    refused.value), refused.value


async def test_every_shard_asked_for_a_reference_table_answers_once(
        db: client.Client, migrated: Config) -> None:
    """shard="*" over reference tables only (or no table): each shard holds the same copy, so
    concatenating their answers gave every category three times, and count(*) three times
    the count. One database's answer is one copy's."""
    slug = unique("review-").lower().replace(" ", "-").replace("_", "-")
    category = uuid.uuid4()
    await db.execute("INSERT INTO categories (category_id, slug, name) VALUES ($1, $2, 'R')",
                     category, slug)
    # The copy that answers is the first shard's. The test cluster's copies may differ (tests
    # build courses on one shard with direct SQL, each with a category of its own there), so
    # the truth is that copy's, not another shard's.
    first = next(iter(migrated.shards.values()))
    conn = await connect_node(migrated, first.primary)
    try:
        truth = await conn.fetchval("SELECT count(*) FROM categories")
        assert truth >= 1
        every = client.EVERY_SHARD
        assert await db.fetchval("SELECT count(*) FROM categories", shard=every,
                                 consistency="strong") == truth
        assert len(await db.fetch("SELECT category_id FROM categories", shard=every,
                                  consistency="strong")) == truth
        assert [tuple(r) for r in await db.fetch("SELECT 1 AS one", shard=every,
                                                 consistency="strong")] == [(1,)]
    finally:
        await conn.close()
        await db.execute("DELETE FROM categories WHERE category_id = $1", category)
