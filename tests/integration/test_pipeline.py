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
from protocol import Admin, ErrorCode, FrameDecoder, Hello, Hints, Json, Query, QueryKind, encode
from router.backend.pgwire import PipelinedConnection, PipelineError
from router.backend.pipeline import Pipeline, connect_pipelined
from router.config import Config
from router.tools.localcluster import LocalCluster
from router.tools.localcluster.layout import existing_layout
from tests.integration.conftest import wait_until
from tests.support.ids import new_id
from tests.support.present import present
from tests.support.router_proc import TOKEN, RouterProcess, number, port_of

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
]


async def node_stats(db: client.Client, name: str) -> dict[str, Any]:
    topology = await db.topology()
    for shard in topology["shards"].values():
        for node in shard["nodes"]:
            if node["name"] == name:
                return dict(node)
    raise AssertionError(f"no node {name}")


async def direct_row(router: RouterProcess, role: str, sql: str, *args: Any) -> asyncpg.Record:
    conn = await asyncpg.connect(host="127.0.0.1", port=port_of(router.config, "europe", role),
                                 user=router.config.database.user, database="georoute")
    try:
        return present(await conn.fetchrow(sql, *args))
    finally:
        await conn.close()


async def test_values_come_back_as_asyncpg_gives_them(
    db: client.Client, router: RouterProcess
) -> None:
    before = await node_stats(db, "europe-2")
    assert before["pipeline_connections"] >= 1
    row = await db.fetchrow(ECHO, *VALUES, shard="europe", consistency="replica")
    assert row is not None
    assert row[-1] == port_of(router.config, "europe", "replica")
    expected = list(await direct_row(router, "replica", ECHO, *VALUES))
    # json and jsonb come as ext 9 with the server's text (PROTOCOL.md section 4)
    expected[14:16] = [Json.from_text(expected[14]), Json.from_text(expected[15])]
    assert list(row) == expected
    assert row[14].dumps() != VALUES[14]  # jsonb is normalised by the server...
    assert row[15].dumps() == '{"keep":  "spacing"}'  # ... while json keeps its text
    nulls = await db.fetchrow(ECHO, *([None] * len(VALUES)), shard="europe",
                              consistency="replica")
    assert nulls is not None and list(nulls)[:-1] == [None] * len(VALUES)
    after = await node_stats(db, "europe-2")
    assert after["pipeline_statements"] >= before["pipeline_statements"] + 2


async def test_types_the_pipeline_does_not_carry_go_through_pooled_connections(
    db: client.Client, router: RouterProcess
) -> None:
    before = await node_stats(db, "europe-2")
    sql = "SELECT $1::int4[], '1 day 2 hours'::interval, current_setting('port')::int"
    row = await db.fetchrow(sql, [1, None, 3], shard="europe", consistency="replica")
    assert row is not None
    assert list(row) == [[1, None, 3], dt.timedelta(days=1, hours=2),
                         port_of(router.config, "europe", "replica")]
    after = await node_stats(db, "europe-2")
    assert after["pipeline_statements"] == before["pipeline_statements"]
    # A parameter of the wrong Python type gets asyncpg's verdict (not the server's 22P02),
    # as before the pipeline: the pipeline declines it rather than send it as text.
    with pytest.raises(client.PostgresError) as err:
        await db.fetchval("SELECT $1::int4 + 1", "7", shard="europe", consistency="replica")
    assert err.value.sqlstate == "22000"
    assert "invalid input for query argument $1" in str(err.value)


ARRAYS = (
    "SELECT $1::int4[]::text, $2::text[]::text, $3::uuid[]::text, $4::int8[]::text, "
    "$5::bool[]::text, $6::float8[]::text, $7::uuid[] IS NULL, $8::date[]::text, "
    "$9::bytea[]::text, $10::int2[]::text, -3 = ANY($1::int4[]), current_setting('port')::int"
)


async def test_array_parameters_ride_the_pipeline(db: client.Client,
                                                  router: RouterProcess) -> None:
    """`= ANY($1)` and a function's uuid[] argument: one-dimensional arrays of the types
    the pipeline carries are sent in its binary form, with the same results as asyncpg's."""
    ids = [uuid.uuid4(), None, uuid.uuid4()]
    values: list[Any] = [[1, None, -3], ["a,b", "", None, "ü"], ids, [], [True, False],
                         [0.5, -1e300], None, [dt.date(2026, 2, 28)], [b"\x00\xff"],
                         [-(2**15), 2**15 - 1]]
    before = await node_stats(db, "europe-2")
    row = await db.fetchrow(ARRAYS, *values, shard="europe", consistency="replica")
    after = await node_stats(db, "europe-2")
    assert row is not None and row[-1] == port_of(router.config, "europe", "replica")
    assert list(row) == list(await direct_row(router, "replica", ARRAYS, *values))
    assert list(row)[:4] == ["{1,NULL,-3}", '{"a,b","",NULL,ü}', f"{{{ids[0]},NULL,{ids[2]}}}",
                             "{}"]
    assert after["pipeline_statements"] == before["pipeline_statements"] + 1
    # What asyncpg makes of other values is asyncpg's: a nested list (two dimensions) and a
    # text where an array belongs go through pooled connections, with asyncpg's answer.
    nested = "SELECT $1::int4[]::text"
    assert await db.fetchval(nested, [[1, 2], [3, 4]], shard="europe",
                             consistency="replica") == "{{1,2},{3,4}}"
    with pytest.raises(client.PostgresError) as err:
        await db.fetchval(nested, "{1,2}", shard="europe", consistency="replica")
    assert "invalid input for query argument $1" in str(err.value)
    assert (await node_stats(db, "europe-2"))["pipeline_statements"] == \
        after["pipeline_statements"]


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
    for _ in range(Pipeline.SLOW_STREAK):  # slow every time, not once
        await db.fetchrow(slow, threshold * 3, shard="europe")
    before = await node_stats(db, "europe-1")
    for _ in range(3):
        row = await db.fetchrow(slow, 0.0, shard="europe")
        assert row is not None and row[1] == port_of(router.config, "europe", "primary")
    after = await node_stats(db, "europe-1")
    assert after["pipeline_statements"] == before["pipeline_statements"]
    # Other statements still take the pipeline.
    await db.fetchval("SELECT 1 + $1::int4", 1, shard="europe", consistency="strong")
    last = await node_stats(db, "europe-1")
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
    )
    assert killed[0] >= 2
    # Every read still gets its answer: on the replica once reconnected, else on the primary.
    rows = [present(r) for r in await asyncio.gather(
        *(db.fetchrow(sql, i, shard="europe", consistency="replica") for i in range(30)))]
    assert [r[0] for r in rows] == [2 * i for i in range(30)]

    async def back_on_the_replica_pipeline() -> bool:
        before = await node_stats(db, "europe-2")
        row = await db.fetchrow(sql, 5, shard="europe", consistency="replica")
        after = await node_stats(db, "europe-2")
        return (row is not None and row[1] == replica_port
                and after["pipeline_statements"] > before["pipeline_statements"])

    await wait_until(back_on_the_replica_pipeline, within=15)


@pytest.mark.parametrize(("method", "encryption"), [("scram-sha-256", "scram-sha-256"),
                                                    ("md5", "md5")])
async def test_pipelined_connections_authenticate_with_passwords(
    cluster: LocalCluster, migrated: Config, method: str, encryption: str
) -> None:
    """The local cluster trusts every local connection; for this test one role must give a
    password (pg_hba.conf gains a line for it alone, then loses it again)."""
    primary = migrated.shards["europe"].primary
    role = f"georoute_auth_{encryption.split('-')[0]}"
    hba = existing_layout(migrated).pgdata("europe-1") / "pg_hba.conf"
    original = hba.read_text()
    admin = await asyncpg.connect(host=primary.host, port=primary.port, user="postgres",
                                  database=primary.database)
    try:
        await admin.execute(f"SET password_encryption = '{encryption}'")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        # Not ASCII: for SCRAM both sides apply SASLprep ("\u2168" becomes "IX").
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-{role}-\u2168'")
        hba.write_text(f"host all {role} 127.0.0.1/32 {method}\n{original}")
        await admin.execute("SELECT pg_reload_conf()")

        async def open_as(password: str) -> PipelinedConnection:
            return await connect_pipelined(
                "auth-test", host="127.0.0.1", port=primary.port, user=role,
                database=primary.database, password=password, settings={}, cache_size=4,
                timeout=5,
            )

        async def password_demanded() -> bool:
            try:
                conn = await open_as("wrong")
            except PipelineError as exc:
                return "28P01" in str(exc)  # invalid_password: the new line is in force
            conn.abort()
            return False

        await wait_until(password_demanded, within=10, what="pg_hba.conf to be reloaded")
        conn = await open_as(f"right-{role}-\u2168")
        try:
            assert await conn.run("SELECT current_user, $1::int4 + 1", (41,)) == (
                [[role, 42]], "SELECT 1"
            )
        finally:
            conn.abort()
    finally:
        hba.write_text(original)
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_a_request_timeout_on_the_fast_path_answers_at_once(
    router: RouterProcess, migrated: Config
) -> None:
    """Straight protocol (the client library would give up by itself): the router replies
    TIMEOUT when the hint expires, PostgreSQL stops the statement, the connection keeps
    serving, and the late result (the server's own cancel) is dropped: once the statement has
    ended and the router has taken its result off the pipeline (its in-flight count, asked on
    this same connection), no reply for it has come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.config.router.listen_port)
    decoder = FrameDecoder()
    replies: dict[int, Any] = {}
    ids = iter(range(10, 10**6))

    async def reply(request_id: int) -> Any:
        while request_id not in replies:
            chunk = await reader.read(65536)
            assert chunk, "the router closed the connection"
            for message in decoder.feed(chunk):
                replies[message.id] = message
        return replies.pop(request_id)

    async def ask(message: Any) -> Any:
        writer.write(encode(message))
        return await asyncio.wait_for(reply(message.id), 10)

    # A write (pg_sleep is not read-only), so on the primary; `7`, not pg_sleep's void, which
    # the pipeline does not carry (that would run on a pooled connection instead).
    sleep_sql = "SELECT 7 FROM pg_sleep($1)"
    primary = migrated.shards["europe"].primary
    pg = await asyncpg.connect(host=primary.host, port=primary.port, database=primary.database,
                               user=migrated.database.user)

    async def sleeping() -> bool:  # by its wait, which shows even where its text may not
        return bool(await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"))

    async def settled() -> bool:
        """The sleep has ended and the router has nothing in flight on the europe primary's
        pipeline: it has had the statement's result (and has answered this connection's
        requests in order since)."""
        if await sleeping():
            return False
        topology = await ask(Admin(next(ids), "topology"))
        nodes = topology.payload["shards"]["europe"]["nodes"]
        return next(n["pipeline_in_flight"] for n in nodes if n["role"] == "primary") == 0

    try:
        writer.write(encode(Hello(1, [1], "raw", TOKEN)))
        assert type(await reply(1)).__name__ == "HelloOk"
        for _ in range(2):  # prepared on the pipeline and judged quick: the next is fast-pathed
            quick = await ask(Query(next(ids), sleep_sql, [0.0], QueryKind.FETCH,
                                    Hints(shard="europe")))
            assert quick.rows == [[7]]
        # A 3 s sleep with a 100 ms timeout: the TIMEOUT must come long before the sleep ends.
        slow = Query(2, sleep_sql, [3.0], QueryKind.FETCH, Hints(shard="europe", timeout_ms=100))
        writer.write(encode(slow) + encode(Query(3, "SELECT 1 + 1", [], QueryKind.FETCH,
                                                 Hints(shard="asia"))))
        started = asyncio.get_running_loop().time()
        timed_out = await asyncio.wait_for(reply(2), 10)
        assert timed_out.code == ErrorCode.TIMEOUT
        assert asyncio.get_running_loop().time() - started < 1.5  # the sleep is 3 s
        other = await asyncio.wait_for(reply(3), 10)
        assert other.rows == [[2]]
        # PostgreSQL stops it too (the request's timeout is its statement_timeout): it ends
        # before its 3 s sleep could have, so nothing waits behind it on the shared connection.
        await wait_until(settled, within=20, what="the timed-out statement to end")
        assert asyncio.get_running_loop().time() - started < 3.0
        # The same connection keeps working, and the late result of request 2 never came.
        assert (await ask(Query(4, "SELECT 40 + 2", [], QueryKind.FETCH,
                                Hints(shard="europe")))).rows == [[42]]
        assert 2 not in replies
    finally:
        writer.close()
        await pg.close()


async def test_a_write_waiting_on_a_lock_does_not_hold_up_the_pipeline(
    db: client.Client, router: RouterProcess
) -> None:
    """The pipelined sessions give up on a lock after pipeline_slow_ms (lock_timeout) and the
    write runs again on a pooled connection, where it waits as long as it takes, while the
    statements that were queued behind it on the shared connection are answered."""
    cfg = router.config
    item = new_id(number(cfg, "europe"))
    await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
    primary = cfg.shards["europe"].primary
    locker = await asyncpg.connect(host=primary.host, port=primary.port, user="postgres",
                                   database=primary.database)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM rt_items WHERE item_id = $1 FOR UPDATE", item)
        update = asyncio.create_task(
            db.execute("UPDATE rt_items SET payload = 'after' WHERE item_id = $1", item)
        )
        reads = [db.fetchval("SELECT $1::int4 + 1", i, shard="europe", consistency="strong")
                 for i in range(40)]
        # On both pipelined connections of the primary, so some queue behind the UPDATE.
        assert await asyncio.wait_for(asyncio.gather(*reads), 5) == [i + 1 for i in range(40)]
        assert not update.done()  # still waiting for the row, on a pooled connection
        await tx.commit()
        assert await asyncio.wait_for(update, 10) == "UPDATE 1"
    finally:
        await locker.close()
    assert await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item,
                             consistency="strong") == "after"
