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

import pytest

import client
from protocol import Hello, Hints, Query, QueryKind, encode
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import LOOPBACK
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router

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
