"""The router daemon on the real cluster: where requests land, read-your-writes, lagging
replicas, transactions, bad input, metrics, reload and drain. Each test asks PostgreSQL which
node answered (inet_server_port()) rather than trusting the router's own account."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import struct
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

import client
from protocol import ErrorCode, FrameDecoder, Hello, Query, encode
from router.cluster import LocalCluster
from router.config import Config
from router.ids import new_id
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router

REGIONS = ("north_america", "europe", "asia")
SCRATCH_DDL = """
CREATE TABLE IF NOT EXISTS rt_items (
    item_id uuid PRIMARY KEY,
    region  text NOT NULL,
    payload text NOT NULL DEFAULT ''
)"""


@pytest.fixture(scope="module")
def router(cluster: LocalCluster, migrated: Config, test_config: Config) -> Iterator[RouterProcess]:
    config = router_config(test_config, max_replica_lag_bytes=64 * 1024)
    path = Path(test_config.cluster.state_dir) / "router-test.toml"
    with running_router(config, path) as proc:
        yield proc


@pytest.fixture
async def db(router: RouterProcess) -> AsyncIterator[client.Client]:
    c = await client.connect(router.dsn, token=TOKEN)
    async with c:
        for region in REGIONS:
            await c.execute(SCRATCH_DDL, shard=region)
        yield c


def number(config: Config, region: str) -> int:
    return config.shards[region].number


def port_of(config: Config, region: str, role: str) -> int:
    shard = config.shards[region]
    return shard.primary.port if role == "primary" else shard.replicas[0].port


async def test_reads_on_replicas_writes_on_primaries(db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    for region in REGIONS:
        item = new_id(number(cfg, region))
        row = await db.fetchrow(
            "INSERT INTO rt_items (item_id, region) VALUES ($1, $2) RETURNING inet_server_port()",
            item,
            region,
        )
        assert row is not None and row[0] == port_of(cfg, region, "primary")
        # A read with no write in this session's way (eventual) goes to the replica.
        port = await db.fetchval(
            "SELECT inet_server_port() FROM rt_items WHERE region = $1 LIMIT 1",
            region,
            consistency="replica",
        )
        assert port == port_of(cfg, region, "replica")
        # A strong read goes to the primary.
        port = await db.fetchval(
            "SELECT inet_server_port() FROM rt_items WHERE item_id = $1", item, consistency="strong"
        )
        assert port == port_of(cfg, region, "primary")


async def test_read_your_writes_is_never_stale(db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    replica_hits = 0
    for i in range(60):
        region = REGIONS[i % 3]
        item = new_id(number(cfg, region))
        await db.execute(
            "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, $2, $3)",
            item,
            region,
            f"v{i}",
        )
        row = await db.fetchrow(
            "SELECT payload, inet_server_port() AS port FROM rt_items WHERE item_id = $1", item
        )
        assert row is not None, f"write {i} not visible to the next read"
        assert row["payload"] == f"v{i}"
        replica_hits += row["port"] == port_of(cfg, region, "replica")
    # Replicas replay within ~2 ms, so most reads should still be served by them.
    assert replica_hits > 0


async def test_token_from_another_session_is_honoured(
    db: client.Client, router: RouterProcess
) -> None:
    """A token passed between sessions (e.g. by a web tier) gives the same guarantee."""
    cfg = router.config
    async with await client.connect(router.dsn, token=TOKEN) as other:
        item = new_id(number(cfg, "asia"))
        await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", item)
        token = db.ryw_state
        assert "asia" in token
        for shard, lsn in token.items():
            other._ryw[shard] = max(other._ryw.get(shard, 0), lsn)
        assert await other.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 1


async def test_lagging_replica_is_skipped(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    cfg = router.config
    replica_name = "europe-replica1"
    replica_port = port_of(cfg, "europe", "replica")
    primary_port = port_of(cfg, "europe", "primary")

    async def lag_bytes() -> int | None:
        topo = await db.topology()
        nodes = topo["shards"]["europe"]["nodes"]
        return next(n["lag_bytes"] for n in nodes if n["name"] == replica_name)

    cluster.pause_replay(replica_name)
    try:
        # Write well past the router's 64 KiB lag bound while the replica cannot replay.
        # Random text: PostgreSQL compresses repetitive text to almost no WAL.
        await db.executemany(
            "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', $2)",
            [(new_id(number(cfg, "europe")), secrets.token_hex(4096)) for _ in range(60)],
        )

        async def lagging() -> bool:
            lag = await lag_bytes()
            return lag is not None and lag > 64 * 1024

        await wait_until(lagging, within=10, what="router to see the replica lagging")
        port = await db.fetchval(
            "SELECT inet_server_port() FROM rt_items WHERE region = 'europe' LIMIT 1",
            consistency="replica",
        )
        assert port == primary_port
    finally:
        cluster.resume_replay(replica_name)

    async def caught_up() -> bool:
        lag = await lag_bytes()
        return lag is not None and lag <= 64 * 1024

    await wait_until(caught_up, within=10, what="replica to catch up")
    port = await db.fetchval(
        "SELECT inet_server_port() FROM rt_items WHERE region = 'europe' LIMIT 1",
        consistency="replica",
    )
    assert port == replica_port


async def test_transaction_is_pinned_and_atomic(db: client.Client, router: RouterProcess) -> None:
    cfg = router.config
    item = new_id(number(cfg, "north_america"))
    async with db.transaction(shard="north_america") as tx:
        pid = await tx.fetchval("SELECT pg_backend_pid()")
        xid = await tx.fetchval("SELECT txid_current()")
        await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')", item)
        for _ in range(5):
            assert await tx.fetchval("SELECT pg_backend_pid()") == pid
            assert await tx.fetchval("SELECT txid_current()") == xid
        assert await tx.fetchval("SELECT inet_server_port()") == port_of(cfg, "north_america", "primary")
    assert await db.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 1

    rolled = new_id(number(cfg, "north_america"))
    with pytest.raises(RuntimeError):
        async with db.transaction(shard_key=rolled) as tx:
            await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')", rolled)
            raise RuntimeError("abort")
    assert await db.fetchval(
        "SELECT count(*) FROM rt_items WHERE item_id = $1", rolled, consistency="strong"
    ) == 0


async def test_disconnect_mid_transaction_rolls_back(
    router: RouterProcess, test_config: Config
) -> None:
    cfg = router.config
    item = new_id(number(cfg, "asia"))
    c = await client.connect(router.dsn, token=TOKEN)
    tx = c.transaction(shard="asia")
    await tx.start()
    await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", item)
    for conn in c.connections:  # drop the TCP connections without committing
        conn.close()
    await c.close()

    primary = test_config.shards["asia"].primary
    pg = await asyncpg.connect(host=primary.host, port=primary.port, database=primary.database,
                               user=test_config.database.user)
    try:
        async def released() -> bool:
            # The row lock is gone once the router rolled back: a NOWAIT lock succeeds.
            busy = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
                "AND query LIKE '%rt_items%'"
            )
            return busy == 0

        await wait_until(released, within=10, what="the abandoned transaction to end")
        assert await pg.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 0
    finally:
        await pg.close()


async def test_typed_errors_and_other_connections_unaffected(
    db: client.Client, router: RouterProcess
) -> None:
    with pytest.raises(client.SQLSyntaxError) as parse:
        await db.fetch("SELECT * FORM rt_items")
    assert parse.value.sqlstate == "42601"
    with pytest.raises(client.MissingShardKeyError) as missing:
        await db.execute("UPDATE rt_items SET payload = $1 WHERE payload = $2", "a", "b")
    assert "rt_items.region or item_id" in str(missing.value)
    with pytest.raises(client.PostgresError) as pg:
        await db.fetch("SELECT * FROM no_such_table", shard="europe")
    assert pg.value.sqlstate == "42P01"
    item = new_id(number(router.config, "europe"))
    await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
    with pytest.raises(client.PostgresError) as dup:
        await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
    assert dup.value.sqlstate == "23505"
    assert await db.fetchval("SELECT 41 + 1") == 42


def _raw_exchange(dsn_port: int, payload: bytes) -> list[object]:
    with socket.create_connection(("127.0.0.1", dsn_port), timeout=10) as s:
        s.sendall(payload)
        decoder = FrameDecoder()
        out: list[object] = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out.extend(decoder.feed(chunk))


def test_bad_frames_and_tokens_get_typed_errors(router: RouterProcess) -> None:
    port = router.config.router.listen_port
    hello = encode(Hello(1, [1], "raw", TOKEN))
    # Garbage after a good handshake: a MALFORMED_FRAME error, then the connection closes.
    replies = _raw_exchange(port, hello + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert [type(r).__name__ for r in replies] == ["HelloOk", "Error"]
    assert replies[1].code == ErrorCode.MALFORMED_FRAME  # type: ignore[attr-defined]
    # An oversized length prefix is refused before any body is read.
    replies = _raw_exchange(port, hello + struct.pack(">I", 2**31))
    assert replies[-1].code == ErrorCode.FRAME_TOO_LARGE  # type: ignore[attr-defined]
    # A forged token.
    replies = _raw_exchange(port, encode(Hello(1, [1], "raw", "forged")))
    assert replies[0].code == ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]
    # A request before the handshake.
    replies = _raw_exchange(port, encode(Query(5, "SELECT 1")))
    assert replies[0].code == ErrorCode.HANDSHAKE_REQUIRED  # type: ignore[attr-defined]


async def test_idempotency_key_applies_a_write_once(
    db: client.Client, router: RouterProcess
) -> None:
    cfg = router.config
    item = new_id(number(cfg, "europe"))
    key = f"test-{uuid.uuid4()}"
    sql = "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', 'once') RETURNING payload"
    first = await db.fetch(sql, item, idempotency_key=key)
    # The same request again (as a client retry after a lost reply would send it): no
    # duplicate-key error, no second row, the same reply.
    again = await db.fetch(sql, item, idempotency_key=key)
    assert [r.values() for r in again] == [r.values() for r in first] == [["once"]]
    counter = f"test-{uuid.uuid4()}"
    for _ in range(3):
        await db.execute(
            "UPDATE rt_items SET payload = payload || '+' WHERE item_id = $1", item,
            idempotency_key=counter,
        )
    assert await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item) == "once+"
    # Concurrent duplicates: still exactly once.
    racer = f"test-{uuid.uuid4()}"
    await asyncio.gather(*(
        db.execute("UPDATE rt_items SET payload = payload || '!' WHERE item_id = $1", item,
                   idempotency_key=racer)
        for _ in range(5)
    ))
    assert await db.fetchval("SELECT payload FROM rt_items WHERE item_id = $1", item) == "once+!"


async def test_wrong_token_raises_auth_error(router: RouterProcess) -> None:
    with pytest.raises(client.AuthError):
        await client.connect(router.dsn, token="wrong", connect_rounds=1)


async def test_metrics_count_requests(db: client.Client, router: RouterProcess) -> None:
    url = f"http://127.0.0.1:{router.config.metrics.port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def ok_queries(text: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if line.startswith("georoute_requests_total{") and 'kind="query"' in line \
                    and 'outcome="ok"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = ok_queries(await asyncio.to_thread(scrape))
    for _ in range(7):
        await db.fetchval("SELECT 1")
    text = await asyncio.to_thread(scrape)
    assert ok_queries(text) - before == 7
    for name in ("georoute_request_duration_seconds_bucket", "georoute_pool_connections",
                 "georoute_replica_lag_bytes", "georoute_parse_cache_total",
                 "georoute_errors_total"):
        assert name in text, name


async def test_node_down_fails_fast_and_recovers(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    """A stopped replica: reads fall back to the primary at once; after restart they return."""
    cfg = router.config
    name = "asia-replica1"
    cluster.stop_node(name)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        port = await db.fetchval(
            "SELECT inet_server_port() FROM rt_items WHERE region = 'asia' LIMIT 1",
            consistency="replica",
        )
        assert port == port_of(cfg, "asia", "primary")
        assert loop.time() - started < 5
    finally:
        cluster.start_node(name)

    async def back() -> bool:
        nodes = (await db.topology())["shards"]["asia"]["nodes"]
        node = next(n for n in nodes if n["name"] == name)
        return node["health"] == "up" and node["lag_bytes"] is not None

    await wait_until(back, within=30, what="replica back up")
    port = await db.fetchval(
        "SELECT inet_server_port() FROM rt_items WHERE region = 'asia' LIMIT 1",
        consistency="replica",
    )
    assert port == port_of(cfg, "asia", "replica")


async def test_primary_down_fails_fast_with_retryable_error(
    db: client.Client, router: RouterProcess, cluster: LocalCluster
) -> None:
    """Writes to a shard whose primary is down fail fast, typed and retryable; other shards
    keep serving; once the primary is back, writes succeed again."""
    cfg = router.config
    name = "north_america-primary"
    cluster.stop_node(name)
    try:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            started = loop.time()
            with pytest.raises(client.NodeUnavailableError) as info:
                await db.execute(
                    "INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')",
                    new_id(number(cfg, "north_america")),
                )
            assert info.value.retryable
            assert loop.time() - started < 5
        item = new_id(number(cfg, "asia"))
        await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", item)
    finally:
        cluster.start_node(name)

    async def writable() -> bool:
        try:
            await db.execute(
                "INSERT INTO rt_items (item_id, region) VALUES ($1, 'north_america')",
                new_id(number(cfg, "north_america")),
            )
        except client.NodeUnavailableError:
            return False
        return True

    await wait_until(writable, within=30, what="writes to the restarted primary")


async def test_sighup_reload_and_bad_reload(router: RouterProcess, db: client.Client) -> None:
    cfg = router.config
    await db.execute(
        "CREATE OR REPLACE FUNCTION rt_answer() RETURNS int LANGUAGE sql STABLE AS 'SELECT 42'",
        shard="europe",
    )
    sql = "SELECT rt_answer(), inet_server_port() FROM rt_items WHERE region = 'europe' LIMIT 1"
    # Not a known read-only function: the statement counts as a write, on the primary.
    row = await db.fetchrow(sql, consistency="replica")
    assert row is not None and row[1] == port_of(cfg, "europe", "primary")

    original = router.path.read_text()
    try:
        router.path.write_text(original.replace(
            'read_only_functions = [', 'read_only_functions = ["rt_answer", ', 1))
        router.signal(signal.SIGHUP)
        assert await asyncio.to_thread(router.wait_for_output, "reloaded", 10)

        async def on_replica() -> bool:
            r = await db.fetchrow(sql, consistency="replica")
            return r is not None and r[1] == port_of(cfg, "europe", "replica")

        await wait_until(on_replica, within=10, what="reloaded read-only function list")

        router.path.write_text(original.replace("[router]", "[router]\nno_such_key = 1", 1))
        router.signal(signal.SIGHUP)
        assert await asyncio.to_thread(router.wait_for_output, "reload refused", 10)
        assert "router.no_such_key" in "".join(router.output)
        assert await db.fetchval("SELECT 1") == 1  # still serving, old config kept
        assert await on_replica()
    finally:
        router.path.write_text(original)


def test_sigterm_drains_in_flight_requests(cluster: LocalCluster, test_config: Config) -> None:
    """A request in flight when SIGTERM arrives still gets its reply; then the router exits."""
    config = router_config(test_config, port_shift=50, drain_timeout_seconds=10.0)
    path = Path(test_config.cluster.state_dir) / "router-drain.toml"
    with running_router(config, path) as proc:

        primary = test_config.shards["europe"].primary

        async def scenario() -> object:
            c = await client.connect(proc.dsn, token=TOKEN)
            pg = await asyncpg.connect(host=primary.host, port=primary.port,
                                       database=primary.database, user=test_config.database.user)
            try:
                slow = asyncio.create_task(
                    c.fetchval("SELECT 7 FROM pg_sleep(0.8)", shard="europe", idempotent=False,
                               consistency="strong")
                )

                async def running() -> bool:
                    n = await pg.fetchval("SELECT count(*) FROM pg_stat_activity "
                                          "WHERE query = 'SELECT 7 FROM pg_sleep(0.8)'")
                    return bool(n)

                await wait_until(running, within=10, what="the slow query to reach PostgreSQL")
                proc.signal(signal.SIGTERM)
                return await slow
            finally:
                await pg.close()
                await c.close()

        assert asyncio.run(scenario()) == 7
        assert proc.proc.wait(timeout=20) == 0
        assert any("stopped" in line for line in proc.output)


async def test_ids_from_the_schema_route_home(db: client.Client, migrated: Config) -> None:
    """georoute_id() generated on a shard's primary routes back to that shard."""
    for region in REGIONS:
        generated = await db.fetchval("SELECT georoute_id()", shard=region)
        assert isinstance(generated, uuid.UUID)
        shard_number = await db.fetchval(
            "SELECT georoute_shard_of($1::uuid)", generated, shard=region
        )
        assert shard_number == migrated.shards[region].number
        target = await db.fetchval(
            "SELECT inet_server_port() FROM users WHERE user_id = $1 UNION ALL "
            "SELECT inet_server_port() LIMIT 1",
            generated,
            consistency="strong",
        )
        assert target == migrated.shards[region].primary.port


async def test_document_store_through_the_router(db: client.Client, migrated: Config) -> None:
    """Course content and preferences go through the router to the real document store;
    a document of the wrong shape is refused with a typed error naming the field."""
    from datetime import UTC, datetime

    user = str(new_id(migrated.shards["europe"].number))
    prefs = db.docs("user_preferences")
    doc = {
        "_id": user,
        "user_id": user,
        "region": "europe",
        "language": "fr-FR",
        "timezone": "Europe/Paris",
        "theme": "dark",
        "notifications": {"email": True, "push": False, "weekly_digest": True},
        "interests": ["sql", "rust"],
        "updated_at": datetime.now(UTC),
    }
    await prefs.insert_one(doc)
    found = await prefs.find_one({"user_id": user})
    assert found is not None and found["language"] == "fr-FR" and found["interests"] == ["sql", "rust"]
    with pytest.raises(client.DuplicateKeyError):
        await prefs.insert_one(doc)
    bad = dict(doc, _id=str(new_id(2)), user_id=None)
    bad["user_id"] = bad["_id"]
    bad["theme"] = "neon"
    with pytest.raises(client.DocumentStoreError) as info:
        await prefs.insert_one(bad)
    assert "theme" in str(info.value)
    assert await prefs.count({"_id": bad["_id"]}) == 0
    assert (await prefs.update_one({"_id": user}, {"$set": {"theme": "light"}}))["modified"] == 1
    assert (await prefs.find_one({"_id": user}))["theme"] == "light"
    assert (await prefs.delete_one({"_id": user}))["deleted"] == 1
