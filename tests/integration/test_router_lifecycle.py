"""The router process's lifecycle: metrics it exposes, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

import client
from router.config import Config, router_socket_path
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.ids import new_id
from tests.support.router_proc import (
    REGIONS,
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    number,
    port_of,
    router_config,
    running_router,
)


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
    (open_now,) = [line for line in text.splitlines()
                   if line.startswith("georoute_client_connections_open ")]
    assert float(open_now.split()[1]) >= len(db.connections) >= 1


async def test_sighup_reload_and_bad_reload(router: RouterProcess, db: client.Client) -> None:
    cfg = router.config
    await db.execute(
        "CREATE OR REPLACE FUNCTION rt_answer() RETURNS int LANGUAGE sql STABLE AS 'SELECT 42'",
        shard="europe",
    )
    sql = "SELECT rt_answer(), current_setting('port')::int"
    # Not a known read-only function: the statement counts as a write, on the primary.
    row = await db.fetchrow(sql, shard="europe", consistency="replica")
    assert row is not None and row[1] == port_of(cfg, "europe", "primary")

    original = router.path.read_text()
    try:
        router.path.write_text(original.replace(
            'read_only_functions = [', 'read_only_functions = ["rt_answer", ', 1))
        router.signal(signal.SIGHUP)
        assert await asyncio.to_thread(router.wait_for_output, "reloaded", 10)

        async def on_replica() -> bool:
            r = await db.fetchrow(sql, shard="europe", consistency="replica")
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
        router.signal(signal.SIGHUP)


async def _backend_pids(router: RouterProcess) -> dict[str, set[int]]:
    """Each node's backends that belong to this router's pools, pooled and pipelined (their
    application_name names the router node), as PostgreSQL lists them."""
    cfg = router.config
    found: dict[str, set[int]] = {}
    for shard in cfg.shards.values():
        for address in (shard.primary, *shard.replicas):
            conn = await connect_node(cfg, address)
            try:
                rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                                        f"georoute:{cfg.router.node_name}")
            finally:
                await conn.close()
            found[f"{address.host}:{address.port}"] = {r["pid"] for r in rows}
    return found


async def test_a_reload_that_changes_database_settings_renews_every_pool(
    router: RouterProcess, db: client.Client
) -> None:
    """New [database] settings (here sslmode) reach every node, not only the ones added or
    moved: each gets a new pool and the old pools drain, so the pools and the lag monitor
    never connect under different settings. PostgreSQL shows it: every backend the router
    had on every node goes away, and new ones serve."""
    original = router.path.read_text()
    changed = original.replace(f'sslmode = "{router.config.database.sslmode}"',
                               'sslmode = "disable"', 1)
    assert changed != original
    nodes = sum(1 + len(shard.replicas) for shard in router.config.shards.values())
    renewed = f"{nodes} new nodes, {nodes} retired"
    before = sum(renewed in line for line in router.output)
    old = await _backend_pids(router)
    assert all(old.values()), old  # every node had connections of this router to replace
    try:
        router.path.write_text(changed)
        router.signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return sum(renewed in line for line in router.output) > before

        await wait_until(reloaded, within=10, what=f"a reload with {renewed}")
        for region in REGIONS:  # the new pools serve, on primaries and replicas
            for consistency in ("strong", "replica"):
                assert await db.fetchval("SELECT 1", shard=region, consistency=consistency) == 1

        async def replaced() -> bool:
            now = await _backend_pids(router)
            return all(now[node] and not now[node] & old[node] for node in old)

        await wait_until(replaced, within=15, what="every node's old backends gone, new ones in")
    finally:
        router.path.write_text(original)
        router.signal(signal.SIGHUP)

    async def renewed_back() -> bool:
        return sum(renewed in line for line in router.output) > before + 1

    await wait_until(renewed_back, within=10, what="the original settings back")


async def test_reload_replaces_the_pool_of_a_changed_node(
    router: RouterProcess, db: client.Client
) -> None:
    """SIGHUP with a replica moved to another address: the router builds a pool for the new
    address (nothing listens there, so reads fall back to the primary) and retires the old
    one; moving it back restores replica reads."""
    cfg = router.config
    replica_port = port_of(cfg, "asia", "replica")
    original = router.path.read_text()
    moved = original.replace(f"port = {replica_port},", "port = 1,", 1)
    assert moved != original

    async def replica_view() -> dict[str, object]:
        nodes = (await db.topology())["shards"]["asia"]["nodes"]
        return next(n for n in nodes if n["name"] == "asia-2")

    try:
        router.path.write_text(moved)
        router.signal(signal.SIGHUP)

        async def moved_away() -> bool:
            node = await replica_view()
            return node["port"] == 1 and node["health"] == "down"

        await wait_until(moved_away, within=15, what="the replica's new, unreachable address")
        port = await db.fetchval("SELECT current_setting('port')::int", shard="asia", consistency="replica")
        assert port == port_of(cfg, "asia", "primary")
    finally:
        router.path.write_text(original)
        router.signal(signal.SIGHUP)

    async def back() -> bool:
        node = await replica_view()
        return node["port"] == replica_port and node["health"] == "up" and (
            node["lag_bytes"] is not None
        )

    await wait_until(back, within=15, what="the replica back at its own address")
    port = await db.fetchval("SELECT current_setting('port')::int", shard="asia", consistency="replica")
    assert port == replica_port


DRAINING = "transactions open"  # the router's "draining N requests in tasks, ..." line


def test_sigterm_drains_in_flight_requests(cluster: LocalCluster, test_config: Config) -> None:
    """A request in flight when SIGTERM arrives still gets its reply, and a transaction open
    then may still run statements and commit; then the router exits. The client reaches it
    through its Unix socket, which is gone once the router stopped. The request in flight
    waits on a lock the test holds, and the lock is let go only once the router has said it
    is draining: the signal cannot land after the request is over."""
    config = router_config(test_config, port_shift=50, drain_timeout_seconds=10.0)
    path = Path(test_config.cluster.state_dir) / "router-drain.toml"
    socket_path = router_socket_path(config.router)
    assert socket_path is not None
    blocked = "SELECT 7 FROM pg_advisory_xact_lock(4210)"
    with running_router(config, path) as proc:
        assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
        primary = test_config.shards["europe"].primary
        unix_dsn = f"georoute://{quote(config.router.listen_socket_dir, safe='')}:" \
                   f"{config.router.listen_port}"

        async def scenario() -> tuple[object, object]:
            c = await client.connect(unix_dsn, token=TOKEN)
            pg = await asyncpg.connect(host=primary.host, port=primary.port,
                                       database=primary.database, user=test_config.database.user)
            try:
                await pg.execute("BEGIN; SELECT pg_advisory_xact_lock(4210)")
                async with c.transaction(shard="europe") as tx:
                    first = await tx.fetchval("SELECT txid_current()")
                    slow = asyncio.create_task(c.fetchval(
                        blocked, shard="europe", idempotent=False, consistency="strong"))

                    async def waiting() -> bool:  # (its query text may not show while it waits)
                        n = await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = "
                                              "'advisory' AND objid = 4210 AND NOT granted")
                        return bool(n)

                    await wait_until(waiting, within=10, what="the request to wait on the lock")
                    proc.signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait_for_output, DRAINING, 10), \
                        "the router did not start draining"
                    assert not slow.done()  # in flight when the drain began (it holds the lock)
                    # Draining: a request outside the transaction is refused; the transaction
                    # goes on (the same one), and commits at the end.
                    with pytest.raises(client.ShuttingDownError):
                        await c.fetchval("SELECT 1", shard="europe", idempotent=False)
                    assert await tx.fetchval("SELECT txid_current()") == first
                    await pg.execute("COMMIT")  # lets the request in flight finish
                    value = await asyncio.wait_for(slow, 10)
                return value, first
            finally:
                await pg.close()  # (ends its transaction, if the test failed inside it)
                await c.close()

        value, _ = asyncio.run(scenario())
        assert value == 7
        assert proc.proc.wait(timeout=20) == 0
        assert any("stopped" in line for line in proc.output)
        assert not os.path.exists(socket_path)


def test_transactions_open_at_the_drain_timeout_are_rolled_back(
    cluster: LocalCluster, migrated: Config
) -> None:
    """A transaction still open when drain_timeout_seconds ends is rolled back, not
    committed: its statements run while the router drains, then the router waits out the
    whole window for a commit that never comes, rolls back and exits."""
    drain = 1.5
    config = router_config(migrated, port_shift=51, drain_timeout_seconds=drain)
    path = Path(migrated.cluster.state_dir) / "router-drain-timeout.toml"
    primary = migrated.shards["europe"].primary
    items = [new_id(number(migrated, "europe")) for _ in range(2)]
    insert = "INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')"
    with running_router(config, path) as proc:

        async def scenario() -> float:
            c = await client.connect(proc.dsn, token=TOKEN)
            try:
                await c.execute(SCRATCH_DDL, shard="europe")
                tx = c.transaction(shard="europe")
                await tx.start()
                await tx.execute(insert, items[0])
                signalled = time.monotonic()
                proc.signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait_for_output, DRAINING, 10)
                await tx.execute(insert, items[1])  # still open, inside the window
                assert await asyncio.to_thread(proc.proc.wait, drain + 20) == 0
                exited = time.monotonic() - signalled
                with pytest.raises(client.GeorouteError):
                    await tx.commit()  # too late: the router is gone
                return exited
            finally:
                await c.close()

        exited = asyncio.run(scenario())
        assert exited >= drain, f"exited {exited:.2f}s after SIGTERM, within its {drain}s window"
        assert any("stopped" in line for line in proc.output)

    async def committed() -> int:
        pg = await asyncpg.connect(host=primary.host, port=primary.port,
                                   database=primary.database, user=migrated.database.user)
        try:
            return int(await pg.fetchval(
                "SELECT count(*) FROM rt_items WHERE item_id = ANY($1::uuid[])", items))
        finally:
            await pg.close()

    assert asyncio.run(committed()) == 0


def test_a_drain_left_with_an_idle_transaction_ends_when_the_router_rolls_it_back(
    cluster: LocalCluster, migrated: Config
) -> None:
    """Nothing of its client's tells the drain that an idle transaction was rolled back (its
    idle timeout did it): the transactions' own word does, and the router exits then, long
    before drain_timeout_seconds."""
    drain, idle = 20.0, 0.5
    config = router_config(migrated, port_shift=52, drain_timeout_seconds=drain,
                           transaction_idle_timeout_seconds=idle)
    path = Path(migrated.cluster.state_dir) / "router-drain-idle.toml"
    with running_router(config, path) as proc:

        async def scenario() -> float:
            c = await client.connect(proc.dsn, token=TOKEN)
            try:
                tx = c.transaction(shard="europe")
                await tx.start()
                await tx.fetchval("SELECT 1")
                signalled = time.monotonic()
                proc.signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait_for_output, DRAINING, 10)
                assert await asyncio.to_thread(proc.proc.wait, drain + 20) == 0
                return time.monotonic() - signalled
            finally:
                await c.close()

        exited = asyncio.run(scenario())
        assert exited < drain / 2, f"exited {exited:.2f}s after SIGTERM: the drain ran out"
        assert any("stopped" in line for line in proc.output)
