"""Cross-shard reads through the router on the real cluster (#15): each answer checked against
direct queries of every shard's primary; refusals say why; read-your-writes holds across the
fan-out; a shard that cannot answer fails the read, naming it, never with a partial answer."""

from __future__ import annotations

import asyncio
import datetime
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from protocol import Batch, Begin, Doc, Hints, Query, QueryKind
from router.config import Config
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import Catalogue, unique, wait_until
from tests.support.router_proc import REGIONS, TOKEN, RouterProcess, router_config, running_router


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    conns = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    try:
        yield conns
    finally:
        for conn in conns.values():
            await conn.close()


async def on_each(primaries: dict[str, asyncpg.Connection], sql: str,
                  *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for conn in primaries.values() for r in await conn.fetch(sql, *args)]


async def test_count_group_by_and_a_sorted_page_equal_the_shards_own_answers(
    db: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    # Published courses on every shard, some at one price (ties broken by course_id).
    for region, conn in primaries.items():
        shop = Catalogue(conn, region)
        for price in (0, 500, 500, 1200):
            await shop.course(price_cents=price, lessons=1)

    count = await db.fetchval("SELECT count(*) FROM users", consistency="strong")
    assert count == sum(r[0] for r in await on_each(primaries, "SELECT count(*) FROM users"))

    by_region = await db.fetch("SELECT home_region, count(*) FROM users GROUP BY 1",
                               consistency="strong")
    truth: dict[str, int] = {}
    for region, n in await on_each(primaries, "SELECT home_region, count(*) FROM users "
                                              "GROUP BY 1"):
        truth[region] = truth.get(region, 0) + n
    assert {r[0]: r[1] for r in by_region} == truth and len(by_region) == len(truth)

    page = ("SELECT title, price_cents FROM courses WHERE status = 'published' "
            "ORDER BY price_cents, course_id LIMIT 10")
    rows = await db.fetch(page, consistency="strong")
    every = await on_each(primaries, "SELECT title, price_cents, course_id FROM courses "
                                     "WHERE status = 'published'")
    expected = [(t, p) for t, p, _ in sorted(every, key=lambda r: (r[1], r[2]))[:10]]
    assert [tuple(r) for r in rows] == expected
    assert rows[0].keys() == ["title", "price_cents"]  # the merge's sort key is not shown

    # The same page from replicas (the default consistency) once they have replayed it.
    assert [tuple(r) for r in await db.fetch(page, consistency="strong")] == expected


async def test_parameters_offset_and_an_in_list_over_two_shards(
    db: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    name = unique("Scatter ")
    ids = {}
    for region, conn in primaries.items():
        ids[region] = await conn.fetchval(
            "INSERT INTO users (email, full_name, home_region, country, city) "
            "VALUES ($1, $2, $3, 'US', 'Town') RETURNING user_id",
            f"{unique('s')}@example.com", name, region)
    rows = await db.fetch("SELECT home_region FROM users WHERE full_name = $1 "
                          "ORDER BY home_region DESC LIMIT $2 OFFSET $3", name, 2, 1,
                          consistency="strong")
    assert [r[0] for r in rows] == sorted(REGIONS, reverse=True)[1:3]
    # A "no limit" LIMIT at int8's maximum plus an OFFSET: the shards' LIMIT must not overflow.
    rows = await db.fetch("SELECT home_region FROM users WHERE full_name = $1 "
                          "ORDER BY home_region DESC LIMIT $2 OFFSET $3", name, 2**63 - 1, 1,
                          consistency="strong")
    assert [r[0] for r in rows] == sorted(REGIONS, reverse=True)[1:]
    two = await db.fetch("SELECT home_region FROM users WHERE user_id IN ($1, $2) ORDER BY 1",
                         ids["asia"], ids["europe"], consistency="strong")
    assert [r[0] for r in two] == ["asia", "europe"]
    hinted = await db.fetch("SELECT count(*) FROM users WHERE full_name = $1", name, shard="*",
                            consistency="strong")
    assert hinted[0][0] == 3


async def test_refused_reads_say_which_part_and_why_and_writes_stay_refused(
    db: client.Client,
) -> None:
    for sql, part in (
        ("SELECT DISTINCT title FROM courses", "DISTINCT"),
        ("SELECT title, row_number() OVER (ORDER BY price_cents) FROM courses", "OVER"),
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY price_cents) FROM courses",
         "percentile_cont"),
        ("SELECT u.full_name FROM users u, courses c WHERE c.instructor_id <> u.user_id",
         "users, courses"),
    ):
        with pytest.raises(client.CrossShardError) as err:
            await db.fetch(sql)
        assert part in str(err.value) and "cross-shard read refused" in str(err.value)
        assert err.value.retryable is False
    with pytest.raises(client.MissingShardKeyError):
        await db.execute("UPDATE users SET city = 'X' WHERE city = 'nowhere-at-all'")
    with pytest.raises(client.CrossShardError, match="only a read"):
        await db.execute("UPDATE users SET city = 'X' WHERE city = 'nowhere'", shard="*")


async def test_text_each_shard_would_read_as_its_own_now_is_refused_naming_it(
    db: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    """Each shard's statement starts at its own instant: text computed while it runs and cast
    to a date or time reads 'now' as that shard's clock (every row of one database would
    share one value; once these reads were accepted and mixed the shards' values)."""
    instants = {await conn.fetchval("SELECT ('no' || 'w')::timestamptz")
                for conn in primaries.values()}
    assert len(instants) == len(primaries)  # what a merged answer would have mixed
    for sql, args, part in (
        ("SELECT ('no' || 'w')::timestamptz AS t FROM users", (), "'no' || 'w'"),
        ("SELECT count(*) FROM users WHERE created_at < $1::text::timestamptz", ("now",),
         "CAST($1 AS text)"),
        ("SELECT count(*) FROM users WHERE created_at < 'today 10:00'", (), "today 10:00"),
        ("SELECT count(*) FROM users WHERE created_at::date < concat('tod', 'ay')::date", (),
         "concat('tod', 'ay')"),
    ):
        with pytest.raises(client.CrossShardError) as err:
            await db.fetch(sql, *args, consistency="strong")
        assert part in str(err.value) and "each shard" in str(err.value), err.value
    # A date/time parameter is sent as one value, read alike by every shard; its text 'now'
    # is not taken for one (the router sends dates and times in binary).
    count = await db.fetchval("SELECT count(*) FROM users WHERE created_at < $1::timestamptz",
                              datetime.datetime.now(datetime.UTC), consistency="strong")
    assert isinstance(count, int)
    with pytest.raises(client.PostgresError) as refused:
        await db.fetchval("SELECT count(*) FROM users WHERE created_at < $1", "now",
                          consistency="strong")
    assert refused.value.detail.get("raised_by") == "router", refused.value


async def test_read_your_writes_holds_for_a_scatter_read_right_after_a_write(
    db: client.Client,
) -> None:
    name = unique("RYW ")
    for i, region in enumerate(REGIONS * 3):
        await db.execute(
            "INSERT INTO users (email, full_name, home_region, country, city) "
            "VALUES ($1, $2, $3, 'US', 'Town')",
            f"{unique('r')}@example.com", name, region, shard=region)
        # Default consistency: each shard's replica only once it replayed this session's
        # writes to that shard, else that shard's primary.
        seen = await db.fetchval("SELECT count(*) FROM users WHERE full_name = $1", name)
        assert seen == i + 1


async def test_too_many_rows_to_merge_are_refused(router: RouterProcess, migrated: Config) -> None:
    config = router_config(migrated, port_shift=7, max_scatter_rows=3)
    path = Path(migrated.cluster.state_dir) / "router-scatter-rows.toml"
    with running_router(config, path) as small:
        async with await client.connect(small.dsn, token=TOKEN) as c:
            for _ in range(2):  # learning the types, then on the pipelined connections
                with pytest.raises(client.CrossShardError, match="max_scatter_rows"):
                    await c.fetch("SELECT user_id FROM users", consistency="strong")
            assert await c.fetchval("SELECT count(*) FROM users", consistency="strong") > 2


async def test_a_shard_that_fails_fails_the_read_naming_it(db: client.Client) -> None:
    # A statement that fails on one shard only: division by zero where that shard's
    # region is, and nowhere else. No partial answer: an error that names the shard.
    # Twice: the first run learns the result's types on pooled connections, the next is
    # queued on the pipelined ones (answered by callbacks).
    for _ in range(2):
        with pytest.raises(client.PostgresError) as err:
            await db.fetch("SELECT count(*) FROM users WHERE 1 / (CASE WHEN home_region = "
                           "'asia' THEN 0 ELSE 1 END) = 1", consistency="strong")
        assert "shard asia" in str(err.value) and err.value.sqlstate == "22012"
        assert err.value.detail.get("shard") == "asia"


async def test_metrics_count_scatter_reads_their_width_and_refusals(
    db: client.Client, router: RouterProcess
) -> None:
    url = f"http://127.0.0.1:{router.config.metrics.port}/metrics"

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("georoute_scatter")}

    before = await asyncio.to_thread(scrape)
    for _ in range(3):
        await db.fetch("SELECT home_region, count(*) FROM users GROUP BY 1")
    with pytest.raises(client.CrossShardError):
        await db.fetch("SELECT DISTINCT full_name FROM users")
    after = await asyncio.to_thread(scrape)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("georoute_scatter_requests_total") == 3
    assert grew('georoute_scatter_fanout_total{shards="3"}') == 3
    assert grew('georoute_scatter_refusals_total{reason="distinct"}') == 1
    assert grew('georoute_scatter_shard_reads_total{shard="asia"}') == 3
    assert grew("georoute_scatter_merge_seconds_total") > 0


async def test_the_reply_names_every_shard_that_answered(db: client.Client,
                                                          router: RouterProcess) -> None:
    rows, route = await db.fetch_routed("SELECT count(*) FROM users", shard=client.EVERY_SHARD,
                                        consistency="strong")
    assert route is not None and rows[0][0] >= 0
    assert route.shard.split(",") == list(router.config.shards)
    assert route.node.split(",") == [f"{s}-1" for s in router.config.shards]
    assert route.role.value == "primary"
    _, one = await db.fetch_routed("SELECT count(*) FROM users WHERE home_region = 'asia'")
    assert one is not None and one.shard == "asia"


async def test_a_stopped_replica_is_replaced_by_its_primary_and_a_stopped_shard_fails_the_read(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    sql = "SELECT count(*) FROM users"
    replica, primary = "asia-2", "asia-1"
    cluster.stop_node(replica)
    try:
        rows, route = await db.fetch_routed(sql, consistency="replica")
        assert route is not None and rows[0][0] >= 0
        assert dict(zip(route.shard.split(","), route.node.split(","), strict=True))[
            "asia"] == primary  # the other shards may still read their replicas
        cluster.stop_node(primary)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(client.NodeUnavailableError) as err:  # (no client retries)
                await db.fetch(sql, consistency="replica", timeout=10, idempotent=False)
            assert "shard asia" in str(err.value) and err.value.retryable
            assert err.value.detail.get("shard") == "asia"
            assert loop.time() - started < 5
        finally:
            cluster.start_node(primary)
    finally:
        cluster.start_node(replica)

    async def answered() -> bool:
        try:
            await db.fetch(sql, consistency="strong")
        except client.NodeUnavailableError:
            return False
        return True

    await wait_until(answered, within=30, what="the shard answering again")
    # Leave the shard as other tests expect it: its replica streaming from the primary again.
    written_at = await db.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn", shard="asia",
                                   consistency="strong")

    async def streaming() -> bool:
        nodes = (await db.topology())["shards"]["asia"]["nodes"]
        node = next(n for n in nodes if n["name"] == replica)
        return bool(node["health"] == "up" and node["replay_lsn"] is not None
                    and node["replay_lsn"] >= written_at)

    await wait_until(streaming, within=30, what="the asia replica streaming again")


async def test_a_shards_hint_reads_just_those_shards_merged(
    db: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    """`shards=[...]`: a read on the listed shards only, merged as a scatter read is; one
    listed shard is a one-shard read; a write to several, an unknown shard, and the hint in a
    transaction or with `shard` are refused, each with its typed error."""
    name = unique("Shards ")
    for region, conn in primaries.items():
        for _ in range(2):
            await conn.execute(
                "INSERT INTO users (email, full_name, home_region, country, city) "
                "VALUES ($1, $2, $3, 'US', 'Town')", f"{unique('h')}@example.com", name, region)
    two = ["europe", "asia"]
    rows, route = await db.fetch_routed(
        "SELECT home_region, count(*) FROM users WHERE full_name = $1 GROUP BY 1 ORDER BY 1",
        name, shards=two, consistency="strong")
    assert [tuple(r) for r in rows] == [("asia", 2), ("europe", 2)]
    assert route is not None and sorted(route.shard.split(",")) == sorted(two)
    # The count equals the direct count of just those shards' primaries.
    direct = sum([await primaries[r].fetchval("SELECT count(*) FROM users") for r in two])
    assert await db.fetchval("SELECT count(*) FROM users", shards=two,
                             consistency="strong") == direct
    # A sorted page over the two, against the two shards' own rows.
    page = await db.fetch("SELECT home_region FROM users WHERE full_name = $1 "
                          "ORDER BY home_region DESC LIMIT 3", name, shards=two,
                          consistency="strong")
    assert [r[0] for r in page] == ["europe", "europe", "asia"]
    rows, route = await db.fetch_routed("SELECT count(*) FROM users WHERE full_name = $1",
                                        name, shards=["north_america"], consistency="strong")
    assert rows[0][0] == 2 and route is not None and route.shard == "north_america"

    with pytest.raises(client.CrossShardError, match="only a read"):
        await db.execute("UPDATE users SET city = 'X' WHERE full_name = $1", name, shards=two)
    with pytest.raises(client.UnknownShardError, match="mars") as err:
        await db.fetch("SELECT count(*) FROM users", shards=["europe", "mars"])
    assert err.value.detail.get("shard") == "mars"
    with pytest.raises(client.InvalidRequestError, match="one of the hints"):
        await db.fetch("SELECT count(*) FROM users", shard="europe", shards=two)
    # The client sends no `shards` inside a transaction; the router refuses one that does.
    async with db.transaction(shard="europe") as tx:
        hints = Hints(shards=two, tx=tx.tx)
        with pytest.raises(client.CrossShardError, match="outside a transaction"):
            await tx._pinned(Query(0, "SELECT count(*) FROM users", [], QueryKind.FETCH, hints),
                             None)
        assert await tx.fetchval("SELECT 1") == 1  # the transaction goes on
    # Nor on a Batch, a Begin or a document request (each names one shard, or none).
    for request in (Batch(0, [("SELECT 1", [])], Hints(shards=two)),
                    Begin(0, Hints(shards=two), None, False),
                    Doc(0, "user_preferences", "find", {"filter": {}}, Hints(shards=two))):
        with pytest.raises(client.CrossShardError, match="outside a transaction"):
            await db._sender.send(request, retry=False, timeout=None)


async def test_scatter_reads_queued_on_killed_pipelined_connections_still_answer(
    db: client.Client, router: RouterProcess, primaries: dict[str, asyncpg.Connection]
) -> None:
    """A cross-shard read known to the router is queued on every shard's pipelined
    connections with no task; when one node's connections are killed under it, the parts
    they lose make the whole read run again the ordinary way: every read still answers,
    and answers right."""
    sql = "SELECT home_region, count(*) FROM users GROUP BY 1 ORDER BY 1"
    truth: dict[str, int] = {}
    for region, n in await on_each(primaries, "SELECT home_region, count(*) FROM users "
                                              "GROUP BY 1"):
        truth[region] = truth.get(region, 0) + n
    expected = sorted(truth.items())
    for _ in range(3):  # the first run learns the types; then the fast path
        assert [tuple(r) for r in await db.fetch(sql, consistency="strong")] == expected
    europe = router.config.shards["europe"].primary
    conn = await asyncpg.connect(host="127.0.0.1", port=europe.port, user=router.config.database.user,
                                 database=europe.database)
    try:
        reads = [asyncio.ensure_future(db.fetch(sql, consistency="strong")) for _ in range(20)]
        await asyncio.sleep(0)  # the reads are sent; some are in flight when the kill lands
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'georoute:%' AND pid <> pg_backend_pid()")
        assert killed >= 1
        answers = await asyncio.gather(*reads)
        answers += await asyncio.gather(*(db.fetch(sql, consistency="strong")
                                          for _ in range(20)))
    finally:
        await conn.close()
    assert all([tuple(r) for r in rows] == expected for rows in answers)


async def test_a_queued_scatter_part_that_waits_on_a_lock_runs_again_the_ordinary_way(
    db: client.Client, router: RouterProcess, primaries: dict[str, asyncpg.Connection]
) -> None:
    """A part queued on a pipelined connection gives up on a lock after the pipeline's
    lock_timeout (it must not hold up its neighbours); the whole read then runs again the
    ordinary way, where that part waits on a pooled connection, and answers once the lock
    is gone."""
    sql = "SELECT count(*) FROM users"
    for _ in range(3):  # the first run learns the types; then the fast path
        await db.fetch(sql, consistency="strong")
    europe = router.config.shards["europe"].primary
    locker = await asyncpg.connect(host="127.0.0.1", port=europe.port,
                                   user=router.config.database.user, database=europe.database)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        read = asyncio.ensure_future(db.fetchval(sql, consistency="strong"))

        async def waiting_on_the_lock() -> bool:
            return bool(await primaries["asia"].fetchval("SELECT 1")) and bool(
                await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name LIKE 'georoute:%' "
                    "AND clock_timestamp() - query_start > interval '300 ms'"))

        # Longer than the pipeline's lock_timeout (20 ms): on a pooled connection, not an
        # error the client retried (each retry would give up after 20 ms again).
        await wait_until(waiting_on_the_lock, within=10, what="the read to wait on the lock")
        assert not read.done()
        await tx.commit()
        count = await read
    finally:
        await locker.close()
    assert count == sum(r[0] for r in await on_each(primaries, sql))


_LONG_SORT = "SELECT x FROM generate_series(1, $1::int8) AS g(x) ORDER BY x DESC LIMIT 1"


async def _stopped_everywhere(primaries: dict[str, asyncpg.Connection], still: list[Any]) -> bool:
    """Whether no shard still runs the long sort (what still does is left in `still`)."""
    still.clear()
    for region, conn in primaries.items():
        still.extend((region, *r) for r in await conn.fetch(
            "SELECT application_name, query_start, left(query, 120) FROM pg_stat_activity "
            "WHERE state = 'active' AND query LIKE '%generate_series%' "
            "AND pid <> pg_backend_pid()"))
    return not still


async def _times_out_and_stops(db: client.Client, primaries: dict[str, asyncpg.Connection],
                               **where: Any) -> None:
    """The long sort past its 0.3 s timeout: TIMEOUT for the client, and stopped on every
    shard well before router.statement_timeout_seconds (30 s) would have stopped it."""
    still: list[Any] = []
    with pytest.raises(client.RequestTimeoutError):
        await db.fetch(_LONG_SORT, 300_000_000, consistency="strong", timeout=0.3, **where)
    try:
        await wait_until(lambda: _stopped_everywhere(primaries, still), within=10,
                         what="the shards to stop the read")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still running: {still}") from exc


async def test_a_timed_out_scatter_read_is_stopped_on_every_shard(
    db: client.Client, primaries: dict[str, asyncpg.Connection]
) -> None:
    """The request's timeout_ms reaches PostgreSQL with each pipelined part (as with
    one-shard reads): past it the client gets TIMEOUT and no shard goes on sorting for the
    rest of router.statement_timeout_seconds (30 s), holding up its pipelined connection."""
    # The first run learns the result's types (on pooled connections): a cheap one.
    assert [tuple(r) for r in await db.fetch(_LONG_SORT, 3, shard="*",
                                             consistency="strong")] == [(3,)]
    # Then the same text runs on the pipelined connections, with the timeout: prepared there
    # by the first slow run (a task per part), queued with no task by the second.
    for _ in range(2):
        await _times_out_and_stops(db, primaries, shard="*")


@pytest.fixture
def unpipelined(migrated: Config, tmp_path: Path) -> Iterator[RouterProcess]:
    """A router with no pipelined connections: every statement runs on a pooled one (as a
    part does whenever the pipeline declines it: busy, a slow statement, a first run)."""
    config = router_config(migrated, port_shift=8)
    config = replace(config, database=replace(config.database, pipeline_connections=0))
    with running_router(config, tmp_path / "router.toml") as proc:
        yield proc


async def test_a_timed_out_read_on_pooled_connections_is_stopped_on_the_server(
    unpipelined: RouterProcess, primaries: dict[str, asyncpg.Connection]
) -> None:
    """A part the router gives up on is cancelled on its shard, not left sorting on a pooled
    connection (once closed there at once, which PostgreSQL notices only when the statement
    ends: seen as an occasional failure of the test above under load)."""
    async with await client.connect(unpipelined.dsn, token=TOKEN) as db:
        assert [tuple(r) for r in await db.fetch(_LONG_SORT, 3, shard="*",
                                                 consistency="strong")] == [(3,)]
        for _ in range(2):
            await _times_out_and_stops(db, primaries, shard="*")
        await _times_out_and_stops(db, primaries, shard="europe")  # a one-shard read too
        # The pools are whole afterwards: the same read answers again at once.
        assert [tuple(r) for r in await db.fetch(_LONG_SORT, 5, shard="*",
                                                 consistency="strong")] == [(5,)]
