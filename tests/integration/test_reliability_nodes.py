"""Faults of the database nodes and the document store, under the checker's load
(tests/support/checker.py), on a scratch cluster of this module's own: its nodes are killed
(`kill -9` of the postmaster and every server process under it), frozen (SIGSTOP) and
restarted, which the session's cluster must never see. (`kill -9` of a primary, with managed
failover: tests/integration/test_reliability_failover.py.)"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

import client
from router.config import Config
from router.tools.db.migrate import migrate
from router.tools.localcluster import DOCSTORE, LocalCluster
from tests.integration.conftest import wait_until
from tests.support.checker import Checker, DocTarget, SqlTarget, with_checker_table
from tests.support.nodeproc import gone, signal_node
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router
from tests.support.scratch import scratch_cluster
from tests.support.wait import until

pytestmark = pytest.mark.chaos

# Far from the session's cluster and the other scratch clusters (5000-5800).
SCRATCH_OFFSET = 6000


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    with scratch_cluster(test_config, SCRATCH_OFFSET, "scratch-reliability") as (local, config):
        asyncio.run(migrate(config))  # keyed writes need georoute_idempotency
        asyncio.run(SqlTarget(config).prepare())
        yield local, config


@pytest.fixture(scope="module")
def router(scratch: tuple[LocalCluster, Config]) -> Iterator[RouterProcess]:
    local, config = scratch
    cfg = with_checker_table(router_config(config))
    with running_router(cfg, local.state_dir / "router-reliability.toml") as proc:
        yield proc


@pytest.fixture
async def db(router: RouterProcess) -> AsyncIterator[client.Client]:
    async with await client.connect(router.dsn, token=TOKEN) as conn:
        yield conn


async def _health(db: client.Client, node: str) -> str:
    topology = await db.topology()
    for shard in topology["shards"].values():
        for n in shard["nodes"]:
            if n["name"] == node:
                return str(n["health"])
    raise AssertionError(f"no node {node} in the topology")


async def _wait_health(db: client.Client, node: str, health: str, within: float) -> None:
    async def check() -> bool:
        return await _health(db, node) == health

    await wait_until(check, within=within, what=f"{node} to be {health}")


async def _restart(local: LocalCluster, node: str) -> None:
    await asyncio.to_thread(local.start_node, node)


async def test_kill_9_of_a_replica_under_load(
    scratch: tuple[LocalCluster, Config], router: RouterProcess, db: client.Client,
) -> None:
    """europe's replica dies (SIGKILL to all its processes) while sessions write and read
    back: reads in flight on it go again to the primary, writes never notice; restarted, it
    streams again and the router reads from it again."""
    local, config = scratch
    victim = "europe-2"  # the replica (a fresh scratch cluster: the configured roles)
    checker = Checker(SqlTarget(config), router.dsn, TOKEN, writers=4)
    async with checker.running():
        await checker.progress(100, what="before the kill")
        killed = signal_node(local, victim, signal.SIGKILL)
        await _wait_health(db, victim, "down", within=15)
        await checker.progress(100, within=30, what="with the replica dead")
        await gone(killed)
        await _restart(local, victim)
        await _wait_health(db, victim, "up", within=30)
        await checker.progress(100, within=30, what="after the replica came back")
    report = await checker.report()
    record("kill -9 of a replica under load",
           "SIGKILL to europe's replica (postmaster and its processes); restarted", report)
    report.assert_safe()
    assert report.read_failures == 0, report.summary()  # reads went to the primary
    assert report.longest_unavailability < 3, report.summary()


async def test_kill_9_of_the_document_store(
    scratch: tuple[LocalCluster, Config], router: RouterProcess, db: client.Client,
) -> None:
    """The document store dies under document and SQL load: document requests fail with a
    typed error (DOC_UNAVAILABLE, retryable, once the driver gives up on finding it; those
    in flight as TIMEOUT, outcome unknown), SQL never notices, and documents are served
    again once it is restarted."""
    local, config = scratch
    docs = Checker(DocTarget(config), router.dsn, TOKEN, writers=2, op_timeout=6.0)
    sql = Checker(SqlTarget(config), router.dsn, TOKEN, writers=3)
    async with docs.running(), sql.running():
        await docs.progress(20, what="documents before the kill")
        await sql.progress(20, what="SQL before the kill")
        mark = docs.attempted
        killed = signal_node(local, DOCSTORE, signal.SIGKILL)

        def refused_typed() -> bool:
            return any(e.startswith("DOC_UNAVAILABLE") for e in docs.errors_since(mark))

        await until(refused_typed, within=30, what="a document write refused as unavailable")
        await sql.progress(100, within=30, what="SQL with the document store dead")
        await gone(killed)
        await _restart(local, DOCSTORE)
        await docs.progress(20, within=60, what="documents after the restart")
        await sql.progress(20, what="SQL after the restart")
    doc_report, sql_report = await docs.report(), await sql.report()
    record("kill -9 of the document store",
           "SIGKILL to the document store under document and SQL load; restarted",
           doc_report, sql=sql_report.summary())
    doc_report.assert_safe()
    sql_report.assert_safe()
    assert sql_report.not_applied == sql_report.unknown == 0, sql_report.summary()
    assert sql_report.longest_unavailability < 3, sql_report.summary()
    # Every document error was a typed one: unavailable (retryable) or timed out.
    allowed = {"DOC_UNAVAILABLE", "TIMEOUT!", "read:DOC_UNAVAILABLE", "read:TIMEOUT"}
    assert set(doc_report.errors) <= allowed, doc_report.errors
    assert "DOC_UNAVAILABLE" in doc_report.errors


async def test_a_node_that_hangs_sigstop_then_sigcont(
    scratch: tuple[LocalCluster, Config], router: RouterProcess, db: client.Client,
) -> None:
    """europe's primary hangs (SIGSTOP to every process of it: connections stay up, nothing
    answers). europe's writes fail (timed out, or refused fast once the node is marked
    down); the other shards go on; after SIGCONT europe serves again by itself."""
    local, config = scratch
    victim = "europe-1"  # the primary (a fresh scratch cluster: the configured roles)
    checker = Checker(SqlTarget(config), router.dsn, TOKEN, writers=6, op_timeout=2.0)
    frozen: list[int] = []
    async with checker.running():
        await checker.progress(60, what="before the freeze")
        try:
            frozen = signal_node(local, victim, signal.SIGSTOP)
            await _wait_health(db, victim, "down", within=20)
            await checker.progress(100, within=30, what="on the other shards during the freeze")
        finally:
            if frozen:
                signal_node(local, victim, signal.SIGCONT)
        await _wait_health(db, victim, "up", within=30)
        mark = checker.attempted

        def europe_again() -> bool:
            return any(a.home == "europe" and a.outcome.value == "acknowledged"
                       for a in checker.attempts_since(mark))

        await until(europe_again, within=30, what="a europe write after SIGCONT")
        await checker.progress(30, what="after the thaw")
    report = await checker.report()
    record("a node that hangs (SIGSTOP, then SIGCONT)",
           "SIGSTOP to europe's primary and its processes until the router marks it down; "
           "SIGCONT", report)
    report.assert_safe()
    others = checker.longest_gap_of(("north_america", "asia"))
    assert others < 3, f"{others:.2f}s without a write on the other shards: {report.summary()}"
