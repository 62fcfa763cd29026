"""Too many clients, too few connections, and clients that misbehave, against a real router
process of this module's own (its memory measured from /proc): a client that stops reading
its replies, a pool held by ten times more transactions than it has connections, and a storm
of clients that connect and vanish. Waits are bounded and failures clear, memory stays
bounded, other clients are served meanwhile, and the router serves normally afterwards."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import client
from protocol import Begin, FrameDecoder, Hello, Hints, Query, QueryKind, encode
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import LOOPBACK
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router
from tests.support.wait import until

SHIFT = 194  # this module's router: the session router's ports moved by this
POOL = 4  # backend connections per node in this module's router
ACQUIRE_TIMEOUT = 1.0
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def router(migrated: Config) -> Iterator[RouterProcess]:
    base = router_config(migrated, port_shift=SHIFT, pool_acquire_timeout_seconds=ACQUIRE_TIMEOUT,
                         handshake_timeout_seconds=2.0)
    config = replace(base, database=replace(base.database, pool_min_size=1,
                                            pool_max_size=POOL))
    with running_router(config, Path(migrated.cluster.state_dir) / "router-load.toml") as proc:
        yield proc


@pytest.fixture
async def db(router: RouterProcess) -> AsyncIterator[client.Client]:
    async with await client.connect(router.dsn, token=TOKEN) as conn:
        yield conn


def rss(router: RouterProcess) -> int:
    """The router process's resident memory, in bytes."""
    for line in Path(f"/proc/{router.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _europe_idle(db: client.Client) -> bool:
    """Nothing in flight on europe's nodes (pipelined or pooled)."""
    nodes = (await db.topology())["shards"]["europe"]["nodes"]
    return all(n["pipeline_in_flight"] == 0 and n["pool_in_use"] == 0 for n in nodes)


async def _connections(db: client.Client) -> int:
    return int((await db.topology())["connections"])


async def _point_reads(db: client.Client, n: int) -> list[float]:
    """`n` reads one after another, each one's seconds."""
    took = []
    for _ in range(n):
        started = time.monotonic()
        assert await db.fetchval("SELECT 1", shard="europe", consistency="strong") == 1
        took.append(time.monotonic() - started)
    return took


async def test_a_client_that_stops_reading(router: RouterProcess, db: client.Client) -> None:
    """A client sends 20,000 requests for 256 KiB replies (5 GiB in all) and never reads
    one. The router stops reading from it and running its requests once its replies back up,
    disconnects it once 64 MiB of them are unread, and serves another client meanwhile.
    (Before, it ran every request it had read, 1,024 at a time, and kept every reply: 369
    MiB more for this one client.)"""
    baseline = await _point_reads(db, 50)
    before = rss(router)
    sock = socket.create_connection((LOOPBACK, router.config.router.listen_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sql = "SELECT repeat('x', 262144)"
    requests = b"".join(encode(Query(i, sql, [], QueryKind.FETCH, Hints(shard="europe")))
                        for i in range(2, 20002))
    sock.sendall(encode(Hello(1, [1], "slow-consumer", TOKEN)))
    sock.setblocking(False)
    sent = 0
    try:
        loop = asyncio.get_running_loop()
        try:  # as much as the router takes: it stops reading once the replies back up
            async with asyncio.timeout(5):
                while sent < len(requests):
                    chunk = requests[sent:sent + 16384]
                    await loop.sock_sendall(sock, chunk)
                    sent += len(chunk)
        except TimeoutError:
            pass
        # The router answers what it read, into its buffers, while another client reads.
        peak = before
        during: list[float] = []

        async def settled() -> bool:
            nonlocal peak
            peak = max(peak, rss(router))
            during.extend(await _point_reads(db, 5))
            return await _europe_idle(db)

        await wait_until(settled, within=60, what="the slow consumer's requests answered")
        peak = max(peak, rss(router))
        grown = peak - before
    finally:
        sock.close()
    after_reads = await _point_reads(db, 50)
    record("slow consumer (a client that stops reading)",
           "20,000 requests for 256 KiB replies sent on one connection, never read; another "
           "client's point reads meanwhile", None, disconnected=True,
           request_bytes_taken=sent, router_rss_growth_mib=round(grown / MiB, 1),
           other_client_p50_ms_before=round(sorted(baseline)[25] * 1000, 2),
           other_client_max_ms_during=round(max(during) * 1000, 2),
           other_client_p50_ms_after=round(sorted(after_reads)[25] * 1000, 2))
    assert router.wait_for_output("stopped reading", timeout=10)
    assert grown < 150 * MiB, f"the router grew by {grown / MiB:.0f} MiB for a slow consumer"
    assert max(during) < 1.0, during  # the other client was served throughout


async def test_pool_exhaustion_ten_times_more_transactions_than_connections(
    router: RouterProcess, db: client.Client,
) -> None:
    """40 sessions each begin a transaction on europe's primary, whose pool has 4
    connections: 4 get one, the other 36 wait at most router.pool_acquire_timeout_seconds
    and fail with POOL_EXHAUSTED (retryable); autocommit reads are served meanwhile (they
    are pipelined, not pooled); once the 4 end, every session gets its turn."""
    sessions = [await client.connect(router.dsn, token=TOKEN, max_retries=0)
                for _ in range(10 * POOL)]
    before = rss(router)
    try:
        async def begin(s: client.Client) -> tuple[Any, float]:
            started = time.monotonic()
            tx = s.transaction(shard="europe")
            try:
                await tx.start()
            except client.GeorouteError as exc:
                return exc, time.monotonic() - started
            return tx, time.monotonic() - started

        reads = asyncio.create_task(_point_reads(db, 100))
        outcomes = await asyncio.gather(*(begin(s) for s in sessions))
        reads_took = await reads
        held = [tx for tx, _ in outcomes if not isinstance(tx, Exception)]
        refused = [(exc, took) for exc, took in outcomes if isinstance(exc, Exception)]
        for tx in held:
            assert await tx.fetchval("SELECT 1") == 1
            await tx.rollback()

        async def one_after_another(s: client.Client) -> None:
            async with s.transaction(shard="europe") as tx:
                assert await tx.fetchval("SELECT 1") == 1

        for s in sessions:  # the pool serves every session normally again
            await one_after_another(s)
        grown = rss(router) - before
    finally:
        for s in sessions:
            await s.close()
    codes = {type(exc).__name__ for exc, _ in refused}
    longest = max(took for _, took in refused)
    record("pool exhaustion (10x more transactions than pool slots)",
           "40 sessions begin a transaction on one node at once; its pool has 4 connections, "
           "pool_acquire_timeout_seconds = 1", None,
           began=len(held), refused=len(refused), refused_as=sorted(codes),
           longest_wait_s=round(longest, 2), point_reads_meanwhile_max_ms=round(
               max(reads_took) * 1000, 1), router_rss_growth_mib=round(grown / MiB, 1))
    assert len(held) == POOL and len(refused) == 9 * POOL
    assert codes == {"PoolExhaustedError"} and all(
        isinstance(exc, client.GeorouteError) and exc.retryable for exc, _ in refused)
    assert longest < ACQUIRE_TIMEOUT + 2.0  # bounded: the acquire timeout, and some slack
    assert max(reads_took) < 1.0
    assert grown < 50 * MiB


async def test_a_storm_of_clients_that_connect_and_vanish(
    router: RouterProcess, db: client.Client,
) -> None:
    """400 connections in waves of 100, each vanishing its own way: at once, after Hello,
    with a query unread, half way through a frame, in the middle of a transaction (its
    pooled connection must come back), or silent until the handshake timeout (2 s here). A
    steady client is served throughout; afterwards the router holds no more connections,
    file descriptors or memory than before (within bounds) and serves a transaction at
    once."""
    port = router.config.router.listen_port
    baseline_conns = await _connections(db)
    baseline_fds = _fds(router)
    before = rss(router)
    hello = encode(Hello(1, [1], "storm", TOKEN))
    query = encode(Query(2, "SELECT 1", [], QueryKind.FETCH, Hints(shard="europe")))
    begin = encode(Begin(3, Hints(shard="europe"), None, False))

    async def vanish(kind: int) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            if kind == 1:
                writer.write(hello)
            elif kind == 2:
                writer.write(hello + query)
            elif kind == 3:
                writer.write(hello + query[: len(query) // 2])
            elif kind == 4:  # a transaction left open: its connection goes back to the pool
                writer.write(hello + begin)
                await asyncio.wait_for(_until_reply(reader, 3), 10)
            elif kind == 5:  # says nothing: the handshake timeout closes it
                await asyncio.wait_for(reader.read(), 10)
            await writer.drain()
        finally:
            writer.transport.abort()  # gone without a goodbye (a RST)

    steady: list[float] = []
    for wave in range(4):
        reads = asyncio.create_task(_point_reads(db, 50))
        await asyncio.gather(*(vanish(i % 6) for i in range(wave * 100, wave * 100 + 100)))
        steady.extend(await reads)

    async def calm() -> bool:
        return await _connections(db) <= baseline_conns

    await wait_until(calm, within=20, what="the storm's connections to be gone")
    await until(lambda: _fds(router) <= baseline_fds + 8, within=20,
                what="the router's file descriptors back to their level")
    grown = rss(router) - before
    async with await client.connect(router.dsn, token=TOKEN, max_retries=0) as fresh:
        started = time.monotonic()
        for _ in range(POOL):  # every pooled connection the storm's transactions held is back
            async with fresh.transaction(shard="europe") as tx:
                assert await tx.fetchval("SELECT 1") == 1
        after = time.monotonic() - started
    record("connection storm (clients that connect and vanish)",
           "400 connections in waves of 100: closed at once, after Hello, with a query unread, "
           "mid-frame, mid-transaction, or silent until the handshake timeout", None,
           steady_client_max_ms=round(max(steady) * 1000, 1),
           router_rss_growth_mib=round(grown / MiB, 1), fds_after_minus_before=_fds(router)
           - baseline_fds, transactions_after_s=round(after, 2))
    assert max(steady) < 1.0
    assert grown < 50 * MiB
    assert after < ACQUIRE_TIMEOUT


def _fds(router: RouterProcess) -> int:
    return len(list(Path(f"/proc/{router.proc.pid}/fd").iterdir()))


async def _until_reply(reader: asyncio.StreamReader, request_id: int) -> None:
    decoder = FrameDecoder(1 << 20)
    while data := await reader.read(65536):
        for reply in decoder.feed(data):
            if getattr(reply, "id", None) == request_id:
                return
    raise AssertionError("closed without a reply")
