"""The pipelined fast path on the real cluster: values come back exactly as asyncpg gives
them, a failing statement among concurrent ones fails alone, slow statements leave the
pipeline, types it does not carry still work through pooled connections, and reads survive
the pipelined connections being killed."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

import client
from tests.integration.conftest import wait_until
from tests.support.router_proc import RouterProcess, port_of

ECHO = (
    "SELECT $1::int2, $2::int4, $3::int8, $4::float8, $5::float4, $6::numeric, $7::text, "
    "$8::bool, $9::bytea, $10::uuid, $11::timestamptz, $12::timestamp, $13::date, "
    "$14::varchar, $15::jsonb, $16::json, $17::user_role, $18::bpchar, $19::oid, "
    "current_setting('port')::int"
)
VALUES: list[Any] = [
    -7, 2**31 - 1, -(2**62), 0.1, 1.5, Decimal("-12345.678900"), "héllo, wörld", True,
    b"\x00\xff", uuid.uuid4(), dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2026, 11, 26, 5, 0, 0, 123), dt.date(1969, 7, 20), "v", '{"b": [1, 2], "a": 1}',
    '{"keep":  "spacing"}', "student", "pad", 4242,
]  # fmt: skip


async def node_stats(db: client.Client, name: str) -> dict[str, Any]:
    topology = await db.topology()
    for shard in topology["shards"].values():
        for node in shard["nodes"]:
            if node["name"] == name:
                return dict(node)
    raise AssertionError(f"no node {name}")


async def direct_row(router: RouterProcess, role: str, sql: str, *args: Any) -> asyncpg.Record:
    conn = await asyncpg.connect(host="127.0.0.1", port=port_of(router.config, "europe", role),
                                 user=router.config.database.user, database="georoute")  # fmt: skip
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def test_values_come_back_as_asyncpg_gives_them(
    db: client.Client, router: RouterProcess
) -> None:
    before = await node_stats(db, "europe-replica1")
    assert before["pipeline_connections"] >= 1
    row = await db.fetchrow(ECHO, *VALUES, shard="europe", consistency="replica")
    assert row is not None
    assert row[-1] == port_of(router.config, "europe", "replica")
    expected = await direct_row(router, "replica", ECHO, *VALUES)
    assert list(row) == list(expected)
    assert list(row)[:-1] != VALUES  # jsonb is normalised by the server, as asyncpg shows...
    assert row[15] == '{"keep":  "spacing"}'  # ... while json keeps its text
    nulls = await db.fetchrow(ECHO, *([None] * len(VALUES)), shard="europe",
                              consistency="replica")  # fmt: skip
    assert nulls is not None and list(nulls)[:-1] == [None] * len(VALUES)
    after = await node_stats(db, "europe-replica1")
    assert after["pipeline_statements"] >= before["pipeline_statements"] + 2


async def test_types_the_pipeline_does_not_carry_go_through_pooled_connections(
    db: client.Client, router: RouterProcess
) -> None:
    before = await node_stats(db, "europe-replica1")
    sql = "SELECT $1::int4[], '1 day 2 hours'::interval, current_setting('port')::int"
    row = await db.fetchrow(sql, [1, None, 3], shard="europe", consistency="replica")
    assert row is not None
    assert list(row) == [[1, None, 3], dt.timedelta(days=1, hours=2),
                         port_of(router.config, "europe", "replica")]  # fmt: skip
    after = await node_stats(db, "europe-replica1")
    assert after["pipeline_statements"] == before["pipeline_statements"]
    # A parameter of the wrong Python type gets asyncpg's verdict (not the server's 22P02),
    # as before the pipeline: the pipeline declines it rather than send it as text.
    with pytest.raises(client.PostgresError) as err:
        await db.fetchval("SELECT $1::int4 + 1", "7", shard="europe", consistency="replica")
    assert err.value.sqlstate == "22000"
    assert "invalid input for query argument $1" in str(err.value)


async def test_a_failing_statement_among_concurrent_ones_fails_alone(db: client.Client) -> None:
    sql = "SELECT 100 / $1::int4"

    async def one(divisor: int) -> Any:
        try:
            return await db.fetchval(sql, divisor, shard="europe", consistency="replica")
        except client.PostgresError as exc:
            return exc.sqlstate

    divisors = [i % 4 for i in range(40)]
    results = await asyncio.gather(*(one(d) for d in divisors))
    assert results == [100 // d if d else "22012" for d in divisors]


async def test_a_slow_statement_leaves_the_pipeline(db: client.Client, router: RouterProcess) -> None:
    # pg_sleep is not a configured read-only function: a write, so the primary.
    slow = "SELECT pg_sleep($1::float8), current_setting('port')::int"
    threshold = router.config.database.pipeline_slow_ms / 1000
    await db.fetchrow(slow, threshold * 3, shard="europe")
    before = await node_stats(db, "europe-primary")
    for _ in range(3):
        row = await db.fetchrow(slow, 0.0, shard="europe")
        assert row is not None and row[1] == port_of(router.config, "europe", "primary")
    after = await node_stats(db, "europe-primary")
    assert after["pipeline_statements"] == before["pipeline_statements"]
    # Other statements still take the pipeline.
    await db.fetchval("SELECT 1 + $1::int4", 1, shard="europe", consistency="strong")
    last = await node_stats(db, "europe-primary")
    assert last["pipeline_statements"] == after["pipeline_statements"] + 1


async def test_reads_survive_their_pipelined_connections_being_killed(
    db: client.Client, router: RouterProcess
) -> None:
    replica_port = port_of(router.config, "europe", "replica")
    sql = "SELECT $1::int4 * 2, current_setting('port')::int"
    await db.fetchrow(sql, 1, shard="europe", consistency="replica")
    killed = await direct_row(
        router, "replica",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE 'georoute:%' AND pid <> pg_backend_pid()",
    )  # fmt: skip
    assert killed[0] >= 2
    # Every read still gets its answer: on the replica once reconnected, else on the primary.
    rows = await asyncio.gather(*(db.fetchrow(sql, i, shard="europe", consistency="replica")
                                  for i in range(30)))  # fmt: skip
    assert [r[0] for r in rows] == [2 * i for i in range(30)]

    async def back_on_the_replica_pipeline() -> bool:
        before = await node_stats(db, "europe-replica1")
        row = await db.fetchrow(sql, 5, shard="europe", consistency="replica")
        after = await node_stats(db, "europe-replica1")
        return (row is not None and row[1] == replica_port
                and after["pipeline_statements"] > before["pipeline_statements"])  # fmt: skip

    await wait_until(back_on_the_replica_pipeline, within=15)
