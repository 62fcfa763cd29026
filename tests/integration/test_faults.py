"""Faults injected between a real router process and the real cluster, with the test kit's
proxies (tests/support/faultproxy.py): europe's primary is reached through a TCP proxy that
stalls or resets its connections under a request, and one router's heartbeats reach the other
through a lossy UDP proxy. Each time the client gets a typed error (or none), and the router
keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from protocol import ErrorCode, Hints, Query, QueryKind
from router.config import Config
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.faultproxy import LOOPBACK, TcpFaultProxy, UdpFaultProxy
from tests.support.ids import new_id
from tests.support.router_proc import (
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    number,
    primary_through,
    raw_request,
    router_config,
    running_router,
)

PROXIED_SHIFT = 171  # this module's routers: ports of the session's router moved by these
HEARTBEAT_SHIFTS = (172, 173)
SECRET = "fault-proxy-heartbeat-secret-0123"


# ---- europe's primary behind a TCP fault proxy -----------------------------------------------


@pytest.fixture(scope="module")
def primary_proxy(cluster: LocalCluster, migrated: Config) -> Iterator[TcpFaultProxy]:
    """A proxy in front of europe's primary, on a thread of its own: the router connects
    through it while the test blocks starting that router."""
    primary = migrated.shards["europe"].primary
    proxy = TcpFaultProxy((primary.host, primary.port), lifetime=300)
    with proxy.running_in_thread():
        yield proxy
    assert proxy.open_sockets() == []


@pytest.fixture(scope="module")
def proxied_router(migrated: Config, primary_proxy: TcpFaultProxy) -> Iterator[RouterProcess]:
    base = router_config(migrated, port_shift=PROXIED_SHIFT)
    config = primary_through(base, "europe", primary_proxy.port)
    path = Path(migrated.cluster.state_dir) / "router-faults.toml"
    with running_router(config, path) as proc:
        yield proc


@pytest.fixture
async def faulty(proxied_router: RouterProcess,
                 primary_proxy: TcpFaultProxy) -> AsyncIterator[client.Client]:
    """A client of the proxied router; the proxy passes everything again afterwards."""
    db = await client.connect(proxied_router.dsn, token=TOKEN)
    try:
        async with db:
            for region in ("europe", "asia"):
                await db.execute(SCRATCH_DDL, shard=region)
            yield db
    finally:
        primary_proxy.resume()
        primary_proxy.set_latency(0)


@pytest.fixture
async def europe_primary(migrated: Config) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to europe's primary, around the proxy, to see what reached it."""
    conn = await connect_node(migrated, migrated.shards["europe"].primary)
    yield conn
    await conn.close()


def _insert(config: Config, region: str) -> tuple[str, uuid.UUID]:
    item = new_id(number(config, region))
    return f"INSERT INTO rt_items (item_id, region) VALUES ($1, '{region}')", item


async def test_a_stalled_primary_gives_a_typed_timeout_and_the_router_serves_on(
    faulty: client.Client, proxied_router: RouterProcess, primary_proxy: TcpFaultProxy,
    europe_primary: asyncpg.Connection,
) -> None:
    cfg = proxied_router.config
    sql, item = _insert(cfg, "europe")
    await faulty.execute(sql, item)  # through the proxy, before any fault
    assert primary_proxy.stats().to_server > 0

    primary_proxy.stall()  # the primary's connections stay up, but nothing gets through
    sql, stalled = _insert(cfg, "europe")
    loop = asyncio.get_running_loop()
    started = loop.time()
    query = Query(2, sql, [stalled], QueryKind.EXECUTE, Hints(timeout_ms=800))
    reply = await raw_request(cfg.router.listen_port, query, "faults")
    assert (reply.code, reply.retryable) == (ErrorCode.TIMEOUT, False)  # a write: may apply
    assert "800 ms" in reply.message
    assert 0.8 <= loop.time() - started < 5
    # Meanwhile the router serves whatever does not need europe's primary.
    sql, elsewhere = _insert(cfg, "asia")
    await faulty.execute(sql, elsewhere)
    assert await faulty.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", elsewhere,
                                 consistency="strong") == 1
    assert await faulty.fetchval("SELECT 1", shard="europe", consistency="replica") == 1
    assert primary_proxy.stats().held > 0  # the stalled insert, held by the proxy

    primary_proxy.resume()
    # The timed-out write was only held up: it reaches the primary and applies, which is why
    # its TIMEOUT said "not retryable".
    async def applied() -> bool:
        found = await europe_primary.fetchval(
            "SELECT count(*) FROM rt_items WHERE item_id = $1", stalled)
        return bool(found == 1)

    await wait_until(applied, within=20, what="the held insert to reach the primary")

    async def writes_again() -> bool:
        sql, item = _insert(cfg, "europe")
        try:
            await faulty.execute(sql, item, timeout=5)
        except (client.NodeUnavailableError, client.RequestTimeoutError):
            return False  # the monitor may have marked it down during the stall
        return True

    await wait_until(writes_again, within=30, what="writes to europe through the proxy")
    assert proxied_router.proc.poll() is None


async def test_a_reset_under_a_request_gives_a_typed_error_and_the_router_serves_on(
    faulty: client.Client, proxied_router: RouterProcess, primary_proxy: TcpFaultProxy,
    europe_primary: asyncpg.Connection,
) -> None:
    cfg = proxied_router.config
    marker = f"reset-{uuid.uuid4().hex}"
    slow = f"SELECT pg_sleep(30), '{marker}'"  # not read-only: it runs on the primary
    running = asyncio.create_task(faulty.execute(slow, shard="europe"))

    async def in_flight() -> bool:
        n = await europe_primary.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
            f"%'{marker}'%")
        return bool(n)

    try:
        await wait_until(in_flight, within=20, what="the slow statement running on the primary")
        assert primary_proxy.reset() >= 1  # RST on the router's connections to the primary
        with pytest.raises(client.NodeUnavailableError) as lost:
            async with asyncio.timeout(20):
                await running
        assert not lost.value.retryable  # it was sent: a write may have applied
    finally:
        running.cancel()
        with contextlib.suppress(BaseException):
            await running
        await europe_primary.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE $1 "
            "AND pid <> pg_backend_pid()", f"%'{marker}'%")

    # Other shards never noticed; europe's primary comes back as soon as a probe gets through.
    sql, item = _insert(cfg, "asia")
    await faulty.execute(sql, item)

    async def writes_again() -> bool:
        sql, item = _insert(cfg, "europe")
        try:
            await faulty.execute(sql, item, timeout=5)
        except client.NodeUnavailableError:
            return False
        return True

    await wait_until(writes_again, within=30, what="writes to europe after the reset")
    assert primary_proxy.stats().resets >= 1
    assert proxied_router.proc.poll() is None


async def test_a_half_open_primary_connection_is_abandoned(
    faulty: client.Client, proxied_router: RouterProcess, primary_proxy: TcpFaultProxy,
) -> None:
    """The router's links to europe's primary go half-open: what it sends is acknowledged and
    lost, nothing comes back. (Found with this kit: every write to europe then timed out, for
    as long as it was watched, while the node's health read up.) The sweeper of silent links
    (router/ha/sweeper.py) finds the connections whose server sessions are gone and closes
    them: a write waiting on one fails as a lost connection whose outcome is unknown (not
    retryable), and new writes go over new connections."""
    cfg = proxied_router.config
    sql, item = _insert(cfg, "europe")
    await faulty.execute(sql, item)  # the insert is known to the pipeline as a fast one

    async def writes(within: float) -> None:
        async def one() -> bool:
            sql, item = _insert(cfg, "europe")
            try:
                await faulty.execute(sql, item, timeout=1)
            except (client.NodeUnavailableError, client.RequestTimeoutError):
                return False
            return True

        await wait_until(one, within=within, what="a write to europe to succeed")

    assert primary_proxy.half_open() >= 1  # the router's connections to it go silent
    try:
        # A write with no timeout of its own, on a silent connection: it must not wait for
        # ever. database.connect_timeout_seconds (3 s) is the bound, swept each second.
        sql, lost = _insert(cfg, "europe")
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await raw_request(cfg.router.listen_port,
                                  Query(7, sql, [lost], QueryKind.EXECUTE, Hints()), "faults")
        assert (reply.code, reply.retryable) == (ErrorCode.NODE_UNAVAILABLE, False)
        assert "connection lost" in reply.message
        assert loop.time() - started < 12
        # Then new writes go over new connections (the monitor's probe times out after
        # connect_timeout_seconds too).
        await writes(within=8)
        assert any("is lost" in line for line in proxied_router.output)
    finally:
        primary_proxy.reset()  # the silent links get their RST: the router reconnects
        await writes(within=30)


# ---- heartbeats through a lossy UDP proxy ------------------------------------------------


async def _peers(proc: RouterProcess) -> dict[str, Any]:
    async with await client.connect(proc.dsn, token=TOKEN) as db:
        report = (await db.topology())["heartbeat"]
    assert isinstance(report, dict)
    return report


def _state(report: dict[str, Any], peer: str) -> str:
    return str(next(p["state"] for p in report["peers"] if p["name"] == peer))


@contextlib.contextmanager
def _routers_with_lossy_link(
    migrated: Config, interval: float, suspect_after: float, dead_after: float
) -> Iterator[tuple[RouterProcess, RouterProcess, UdpFaultProxy]]:
    """Routers A and B; B's heartbeats reach A only through the proxy, A's reach B direct."""
    a_cfg, b_cfg = (router_config(migrated, port_shift=s) for s in HEARTBEAT_SHIFTS)
    proxy = UdpFaultProxy((LOOPBACK, a_cfg.heartbeat.port), lifetime=240, seed=14)

    def heartbeat(cfg: Config, peer: str) -> Config:
        return replace(cfg, heartbeat=replace(
            cfg.heartbeat, interval_seconds=interval, suspect_after_seconds=suspect_after,
            dead_after_seconds=dead_after, alive_after_heartbeats=2, peers=(peer,)))

    state = Path(migrated.cluster.state_dir)
    with pytest.MonkeyPatch.context() as mp, proxy.running_in_thread(), \
            contextlib.ExitStack() as stack:
        mp.setenv(migrated.heartbeat.secret_env, SECRET)  # copied into each child's environment
        a = stack.enter_context(running_router(heartbeat(
            a_cfg, f"{b_cfg.router.node_name}@{LOOPBACK}:{b_cfg.heartbeat.port}"),
            state / "router-lossy-a.toml"))
        b = stack.enter_context(running_router(heartbeat(
            b_cfg, f"{a_cfg.router.node_name}@{LOOPBACK}:{proxy.port}"),
            state / "router-lossy-b.toml"))
        yield a, b, proxy


async def test_heartbeats_through_a_lossy_link(cluster: LocalCluster, migrated: Config) -> None:
    """Losses, duplicates and reordering on B -> A: duplicates and late datagrams are
    dropped as replays, scattered losses flip nothing. Then a one-way partition: A judges B
    suspect then dead and loses its quorum, while B, still hearing A, keeps A alive. Healed,
    A sees B alive again."""
    interval, suspect_after, dead_after = 0.1, 1.0, 2.0
    slack = 1.5  # a loaded 2-core machine: scheduling and polling delays on top of the rules
    with _routers_with_lossy_link(migrated, interval, suspect_after, dead_after) as (a, b, proxy):
        name_a, name_b = a.config.router.node_name, b.config.router.node_name
        proxy.set_faults(drop=0.25, duplicate=0.3, delay=0.005, jitter=0.03)

        async def both_alive() -> bool:
            return (_state(await _peers(a), name_b) == "alive"
                    and _state(await _peers(b), name_a) == "alive")

        await wait_until(both_alive, within=20, what="A and B alive to each other")
        async def through() -> bool:
            return proxy.stats().received >= 40

        await wait_until(through, within=20, what="40 of B's heartbeats through the lossy link")
        stats = proxy.stats()
        assert stats.dropped > 0 and stats.duplicated > 0
        report = await _peers(a)
        assert _state(report, name_b) == "alive"  # scattered losses flipped nothing
        assert report["dropped"]["replayed"] > 0  # duplicates and late ones, refused
        assert report["dropped"]["forged"] == report["dropped"]["malformed"] == 0
        assert not any(f"peer {name_b} is suspect" in line for line in a.output)

        proxy.set_faults(drop=1.0)  # a one-way partition: B -> A lost, A -> B fine
        cut = asyncio.get_running_loop().time()

        async def a_judges(state: str) -> bool:
            return _state(await _peers(a), name_b) == state

        await wait_until(lambda: a_judges("suspect"), within=suspect_after + slack,
                         what="A to suspect B")
        await wait_until(lambda: a_judges("dead"), within=dead_after + slack,
                         what="A to declare B dead")
        assert asyncio.get_running_loop().time() - cut >= dead_after - interval
        report_a, report_b = await _peers(a), await _peers(b)
        assert report_a["quorum"] is False  # one of two: no majority
        assert _state(report_b, name_a) == "alive" and report_b["quorum"] is True

        proxy.set_faults(drop=0.0, duplicate=0.0, jitter=0.0)
        await wait_until(lambda: a_judges("alive"), within=20, what="A to hear B again")
        assert (await _peers(a))["quorum"] is True

