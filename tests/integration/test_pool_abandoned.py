"""A pooled connection whose statement was given up on (release(abandoned=True)) while its node
does not answer: the pool gives its slot back at once and sends the cancel beside the pool, so
the next request gets a connection (or the truth that the node cannot be reached) instead of
waiting up to database.connect_timeout_seconds for a slot. The pool runs in this process
against europe's real primary, reached through the fault proxy (tests/support/faultproxy.py).
That the cancel still stops the statement on a node that answers is
tests/integration/test_scatter.py's test_a_timed_out_read_on_pooled_connections_is_stopped_on_the_server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from router.backend.pool import Backend, BackendPool, NodeUnavailableError
from router.config import Config, NodeAddress
from router.tools.db.connect import connect_node
from tests.integration.conftest import wait_until
from tests.support.faultproxy import LOOPBACK, TcpFaultProxy

SLOTS = 2
# Long, so a slot held for the cancel's whole wait cannot pass for one given back at once.
CONNECT_TIMEOUT_S = 20.0
SLOTS_BACK_WITHIN_S = 1.0  # "promptly": a twentieth of the cancel's bound
MARKER = "pool_abandoned_read"  # names this module's statements on the server


@pytest.fixture
def proxy(migrated: Config) -> Iterator[TcpFaultProxy]:
    primary = migrated.shards["europe"].primary
    with TcpFaultProxy((primary.host, primary.port), lifetime=120).running_in_thread() as p:
        yield p
    assert p.open_sockets() == []


@pytest.fixture
async def pool(migrated: Config, proxy: TcpFaultProxy) -> AsyncIterator[BackendPool]:
    db = dataclasses.replace(migrated.database, socket_dir="", pool_min_size=0,
                             pool_max_size=SLOTS, pipeline_connections=0,
                             connect_timeout_seconds=CONNECT_TIMEOUT_S)
    address = NodeAddress(LOOPBACK, proxy.port, migrated.shards["europe"].primary.database)
    pool = BackendPool("europe-through-proxy", address, db, acquire_timeout=5,
                       statement_timeout=0)
    await pool.start()
    try:
        yield pool
    finally:
        proxy.refuse(False)
        proxy.resume()
        await pool.close(grace=CONNECT_TIMEOUT_S)
        # A statement held by the proxy while its node did not answer reaches the server when
        # the link heals, its cancel long given up: it must not sleep on beside later tests.
        direct = await connect_node(migrated, migrated.shards["europe"].primary)
        try:
            await direct.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 f"WHERE query LIKE '%{MARKER}%' AND pid <> pg_backend_pid()")
        finally:
            await direct.close()


async def _borrow_all(pool: BackendPool) -> list[Backend]:
    backends = [await pool.acquire() for _ in range(SLOTS)]
    for backend in backends:
        assert (await backend.run("SELECT 1", ()))[1] == [(1,)]
    assert pool.free_slots == 0
    return backends


async def _time_out(pool: BackendPool, backend: Backend) -> None:
    """A read given up on after 0.2 s, released as outcome.returned_after does."""
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await backend.run(f"SELECT pg_sleep(30) AS {MARKER}", ())
    finally:
        pool.release(backend, abandoned=True)


async def _slots_back(pool: BackendPool, free: int) -> float:
    started = time.monotonic()

    async def back() -> bool:
        return pool.free_slots == free

    await wait_until(back, within=SLOTS_BACK_WITHIN_S, what=f"{free} free slots")
    return time.monotonic() - started


async def test_slots_come_back_at_once_while_the_node_does_not_answer(
    pool: BackendPool, proxy: TcpFaultProxy
) -> None:
    """The node stops answering (every byte held; new connections reset, as a node that is
    down): reads time out, their connections are abandoned, and every slot is free again
    within a second while each cancel is still on its way; the next request is told at once
    that the node cannot be reached, never queued for a slot. Once the node answers again,
    the pool serves, and the cancels have ended within their bound."""
    backends = await _borrow_all(pool)
    proxy.stall()
    proxy.refuse()
    await asyncio.gather(*(_time_out(pool, b) for b in backends))
    await _slots_back(pool, SLOTS)
    assert pool.cancelling == SLOTS  # still sending their cancels, beside the pool

    started = time.monotonic()
    with pytest.raises(NodeUnavailableError):
        async with asyncio.timeout(SLOTS_BACK_WITHIN_S):
            await pool.acquire()
    assert time.monotonic() - started < SLOTS_BACK_WITHIN_S
    assert pool.waits_total == 0  # it never queued for a slot

    proxy.refuse(False)
    proxy.resume()
    backend = await pool.acquire()
    try:
        assert (await backend.run("SELECT 2", ()))[1] == [(2,)]
    finally:
        pool.release(backend)

    async def cancels_ended() -> bool:
        return pool.cancelling == 0

    await wait_until(cancels_ended, within=CONNECT_TIMEOUT_S + 5, what="the cancels to end")


async def test_at_most_pool_max_size_cancels_run_beside_the_pool(
    pool: BackendPool, proxy: TcpFaultProxy
) -> None:
    """The connections being cancelled beside the pool are bounded (pool_max_size): with that
    many cancels still waiting, the next connections given up on keep their slots until
    their own cancels end, so the node never sees more than twice pool_max_size connections
    from one pool. Here the links already open go silent (half-open) while new ones pass."""
    first = await _borrow_all(pool)
    proxy.half_open()
    await asyncio.gather(*(_time_out(pool, b) for b in first))
    await _slots_back(pool, SLOTS)
    assert pool.cancelling == SLOTS

    second = await _borrow_all(pool)  # new links: they pass
    proxy.half_open()
    await asyncio.gather(*(_time_out(pool, b) for b in second))
    assert pool.cancelling == SLOTS
    assert pool.free_slots == 0  # held until their own cancels end
    proxy.reset()  # the silent links get their RST: every cancel ends, every slot comes back
    await _slots_back(pool, SLOTS)

    async def cancels_ended() -> bool:
        return pool.cancelling == 0

    await wait_until(cancels_ended, within=SLOTS_BACK_WITHIN_S, what="the cancels to end")
