"""A slow or broken link to one node, under the checker's load (tests/support/checker.py):
europe's primary is reached through the test kit's TCP fault proxy
(tests/support/faultproxy.py), which resets, delays, stalls or half-opens the router's
connections to it while sessions write to every shard and read back. Writes caught by a fault
are failed or of unknown outcome (resolved by reading the shards), the other shards never
notice, and europe comes back by itself when the fault ends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import client
from protocol import ErrorCode, Hints, Query, QueryKind
from router.config import Config
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.checker import Attempt, Checker, Outcome, Report, SqlTarget, with_checker_table
from tests.support.faultproxy import TcpFaultProxy
from tests.support.reliability import record
from tests.support.router_proc import (
    TOKEN,
    RouterProcess,
    primary_through,
    raw_request,
    router_config,
    running_router,
)
from tests.support.wait import until

SHIFT = 193  # this module's router: the session router's ports moved by this
OTHERS = ("north_america", "asia")


@pytest.fixture(scope="module")
def proxy(cluster: LocalCluster, migrated: Config) -> Iterator[TcpFaultProxy]:
    primary = migrated.shards["europe"].primary
    with TcpFaultProxy((primary.host, primary.port), lifetime=900).running_in_thread() as p:
        yield p


@pytest.fixture(scope="module")
def router(migrated: Config, proxy: TcpFaultProxy) -> Iterator[RouterProcess]:
    base = with_checker_table(router_config(migrated, port_shift=SHIFT))
    config = primary_through(base, "europe", proxy.port)
    with running_router(config, Path(migrated.cluster.state_dir) / "router-links.toml") as proc:
        yield proc


@pytest.fixture
def target(migrated: Config, proxy: TcpFaultProxy) -> Iterator[SqlTarget]:
    yield SqlTarget(migrated)
    proxy.resume()  # whatever a test left, the link passes everything again
    proxy.set_latency(0)


async def _europe_writes_again(checker: Checker, within: float) -> None:
    mark = checker.attempted

    def acknowledged() -> bool:
        return any(a.home == "europe" and a.outcome.value == "acknowledged"
                   for a in checker.attempts_since(mark))

    await until(acknowledged, within=within, what="a europe write acknowledged again")


def _check(report: Report, checker: Checker, others_within: float) -> None:
    report.assert_safe()
    others = checker.longest_gap_of(OTHERS)
    assert others < others_within, f"other shards stopped {others:.2f}s: {report.summary()}"


async def test_a_link_reset_under_load(router: RouterProcess, proxy: TcpFaultProxy,
                                       target: SqlTarget) -> None:
    """Three times, every connection to europe's primary is reset (TCP RST both ways) while
    writes are in flight on it."""
    await target.prepare()
    checker = Checker(target, router.dsn, TOKEN, writers=4)
    resets = 0
    async with checker.running():
        await checker.progress(60, what="before the resets")
        for _ in range(3):
            resets += proxy.reset()
            await _europe_writes_again(checker, within=20)
            await checker.progress(30, what="after a reset")
    report = await checker.report()
    record("broken link to a primary (TCP reset)",
           "the fault proxy resets every router connection to europe's primary, 3 times "
           "under load", report, connections_reset=resets)
    assert resets >= 3
    _check(report, checker, others_within=2)


async def _fault_then_heal(router: RouterProcess, target: SqlTarget, start: Callable[[], object],
                           heal: Callable[[], object], hold_writes: int,
                           within: float) -> tuple[Checker, Report, list[Attempt]]:
    """The checker's load; `start` a fault after 60 writes, `heal` it after `hold_writes`
    more; until europe is written again. Returns the checker, its report and the writes
    attempted during the fault."""
    await target.prepare()
    checker = Checker(target, router.dsn, TOKEN, writers=6, op_timeout=2.0)
    async with checker.running():
        await checker.progress(60, what="before the fault")
        mark = checker.attempted
        start()
        try:
            await checker.progress(hold_writes, within=30, what="during the fault")
        finally:
            during = checker.attempts_since(mark)
            heal()
        await _europe_writes_again(checker, within=within)
        await checker.progress(30, what="after the fault")
    return checker, await checker.report(), during


@pytest.mark.chaos
async def test_a_slow_link_under_load(router: RouterProcess, proxy: TcpFaultProxy,
                                      target: SqlTarget) -> None:
    """50 ms each way on every byte to and from europe's primary (a keyed write's six round
    trips take 0.6 s), until 20 europe writes are acknowledged that way: they slow down but
    go through; the other shards never notice."""
    await target.prepare()
    checker = Checker(target, router.dsn, TOKEN, writers=6, op_timeout=2.0)
    async with checker.running():
        await checker.progress(60, what="before the fault")
        mark = checker.attempted
        proxy.set_latency(0.05)
        try:
            def europe_slow() -> bool:
                return sum(1 for a in checker.attempts_since(mark) if a.home == "europe"
                           and a.outcome is Outcome.ACKNOWLEDGED) >= 20

            await until(europe_slow, within=60, what="20 europe writes over the slow link")
            slow = checker.attempts_since(mark)
        finally:
            proxy.set_latency(0)
        await checker.progress(30, what="after the fault")
    report = await checker.report()
    europe = [a for a in slow if a.home == "europe"]
    record("slow link to a primary (50 ms each way)",
           "the fault proxy delays every chunk to and from europe's primary by 50 ms, under "
           "load, until 20 europe writes went through it", report,
           europe_writes_while_slow=len(europe),
           europe_acknowledged_while_slow=sum(a.outcome is Outcome.ACKNOWLEDGED
                                              for a in europe))
    _check(report, checker, others_within=2)


@pytest.mark.chaos
async def test_a_stalled_link_under_load(router: RouterProcess, proxy: TcpFaultProxy,
                                         target: SqlTarget) -> None:
    """Nothing gets through to or from europe's primary (connections stay up) while 150
    writes go to the other shards, then the link flows again."""
    checker, report, _ = await _fault_then_heal(router, target, proxy.stall, proxy.resume,
                                             hold_writes=150, within=30)
    record("stalled link to a primary",
           "the fault proxy holds every byte to and from europe's primary while 150 writes "
           "go elsewhere, then delivers them", report)
    _check(report, checker, others_within=2)


@pytest.mark.chaos
async def test_a_half_open_link_under_load(router: RouterProcess, proxy: TcpFaultProxy,
                                           target: SqlTarget) -> None:
    """Every router connection to europe's primary goes half-open (bytes acknowledged and
    dropped, nothing back): the sweeper of silent links closes them and europe is written
    again over new connections, without the link being healed."""
    checker, report, _ = await _fault_then_heal(router, target, proxy.half_open, lambda: None,
                                             hold_writes=150, within=30)
    record("half-open link to a primary",
           "the fault proxy makes every router connection to europe's primary half-open "
           "under load (new connections pass)", report)
    _check(report, checker, others_within=2)


async def test_a_keyed_write_whose_connection_is_reset_is_reported_as_lost(
    router: RouterProcess, proxy: TcpFaultProxy, target: SqlTarget, migrated: Config,
) -> None:
    """Found by the checker under resets: a keyed write whose pooled connection died under it
    was answered POSTGRES_ERROR (asyncpg's ConnectionDoesNotExistError is a PostgresError,
    caught as the statement's own error), which tells a client it was refused, while one
    lost at its COMMIT had applied; and the dead connection went back to the pool. It is a
    lost connection: NODE_UNAVAILABLE, retryable under its key (a retry cannot apply it
    twice), and the retry applies it once."""
    await target.prepare()
    write_id = uuid.UUID(target.new_id("europe"))
    key = f"reset-probe-{write_id}"
    sql = ("INSERT INTO chk_writes (write_id, region, writer, seq) "
           "SELECT $1, 'europe', 'reset-probe', 0 FROM pg_sleep(3)")
    query = Query(2, sql, [write_id], QueryKind.EXECUTE, Hints(idempotency_key=key))
    direct = await connect_node(migrated, migrated.shards["europe"].primary)
    try:
        sent = asyncio.create_task(raw_request(router.config.router.listen_port, query, "links"))

        async def running() -> bool:
            return bool(await direct.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%reset-probe%' AND pid <> pg_backend_pid()"))

        await wait_until(running, within=20, what="the keyed write running on the primary")
        assert proxy.reset() >= 1
        reply = await asyncio.wait_for(sent, 20)
        assert reply.code == ErrorCode.NODE_UNAVAILABLE, reply
        assert reply.retryable is True  # under its key: a retry cannot apply it twice
        async with await client.connect(router.dsn, token=TOKEN) as db:
            await db.execute(sql, write_id, idempotency_key=key, timeout=20)
        copies = await direct.fetchval("SELECT count(*) FROM chk_writes WHERE write_id = $1",
                                       write_id)
        assert copies == 1
    finally:
        await direct.close()

