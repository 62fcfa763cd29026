"""`kill -9` of a shard's primary under the checker's load (tests/support/checker.py), with
managed failover: a scratch cluster of its own whose europe shard replicates synchronously,
three router nodes that hear each other's heartbeats (`[failover] mode = "managed"`), and
sessions that write and read back through all three (a multi-host DSN).

The promise checked is the one README's "High availability" makes for a synchronous shard:
no acknowledged write is lost, none is applied twice, every write whose outcome a client was
told is unknown turns out applied or not, and writes resume on the promoted node by themselves.
(With asynchronous replication a write acknowledged just before the kill may be lost: that is
tests/integration/test_managed_failover.py's subject, not this one's.) Before that, on the same
cluster: a flood of forged heartbeats claiming the primary is down changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest

import client
from protocol.heartbeat import MAX_DATAGRAM_BYTES, HeartbeatSender, ReportedHealth
from router.config import Config
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.integration.test_managed_failover import SECRET, managed_configs, start_router
from tests.support.checker import Checker, SqlTarget, with_checker_table
from tests.support.nodeproc import gone, signal_node
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess
from tests.support.scratch import scratch_cluster

# Far from the session's cluster and the other scratch ones (5000-5800, 6000, 6300).
SCRATCH_OFFSET = 6650
SHARD = "europe"


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    shards = dict(test_config.shards)
    shards[SHARD] = replace(shards[SHARD], synchronous=True)
    with scratch_cluster(replace(test_config, shards=shards), SCRATCH_OFFSET,
                         "scratch-reliability-failover") as (local, config):
        asyncio.run(migrate(config))  # keyed writes need georoute_idempotency
        asyncio.run(SqlTarget(config).prepare())
        yield local, config


@pytest.fixture(scope="module")
def routers(scratch: tuple[LocalCluster, Config]) -> Iterator[list[RouterProcess]]:
    local, config = scratch
    configs = [with_checker_table(c) for c in managed_configs(config)]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(start_router(c, local.state_dir / f"router-rf{i}.toml",
                                                SECRET))
               for i, c in enumerate(configs)]


@pytest.fixture
async def views(routers: list[RouterProcess]) -> AsyncIterator[list[client.Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(await client.connect(r.dsn, token=TOKEN))
               for r in routers]


def _dsn(routers: list[RouterProcess]) -> str:
    return "georoute://" + ",".join(
        f"{r.config.router.listen_host}:{r.config.router.listen_port}" for r in routers)


async def _primary(db: client.Client) -> str:
    return str((await db.topology())["shards"][SHARD]["primary"])


async def test_a_flood_of_forged_heartbeats_changes_nothing(
    scratch: tuple[LocalCluster, Config], routers: list[RouterProcess],
    views: list[client.Client],
) -> None:
    """Someone on the network without the shared secret floods router A's heartbeat port,
    in managed mode, with datagrams claiming europe's primary is down (as each real peer, and
    as a stranger), oversized and malformed ones, while the checker writes: each is dropped
    and counted, the real peers stay alive, europe keeps its primary on every router, nothing
    is promoted, and the writes never pause."""
    _, config = scratch
    a = routers[0]
    names = [r.config.router.node_name for r in routers]

    async def all_alive() -> bool:  # peers start dead ("never heard") until heard in a row
        for proc, name in zip(routers, names, strict=True):
            if peer_states(await heartbeat_report(proc)) != {n: "alive" for n in names
                                                             if n != name}:
                return False
        return True

    await wait_until(all_alive, within=30, what="the three routers alive to one another")
    old = await _primary(views[0])
    before = (await heartbeat_report(a))["dropped"]
    down = {old: ReportedHealth.DOWN}
    views_claimed = {SHARD: "europe-2"}
    forgers = [HeartbeatSender(b"not the shared secret", name, time.time_ns())
               for name in [*names[1:], "stranger"]]
    sent = {"forged": 0, "oversized": 0, "malformed": 0}
    checker = Checker(SqlTarget(config), _dsn(routers), TOKEN, writers=3)
    async with checker.running():
        await checker.progress(50, what="before the flood")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            address = ("127.0.0.1", a.config.heartbeat.port)
            for i in range(6000):
                kind = ("forged", "forged", "oversized", "malformed")[i % 4]
                data = (forgers[i % len(forgers)].encode(down, views_claimed)
                        if kind == "forged" else
                        b"\0" * (MAX_DATAGRAM_BYTES + 1) if kind == "oversized" else
                        bytes([i % 256]) * (1 + i % 30))  # shorter than a MAC
                try:
                    sock.sendto(data, address)
                    sent[kind] += 1
                except BlockingIOError:  # the socket's buffer is full: let the router read
                    await asyncio.sleep(0)
                if i % 200 == 0:
                    await asyncio.sleep(0)  # the checker's sessions go on meanwhile

        async def counted() -> bool:
            dropped = (await heartbeat_report(a))["dropped"]
            got = {k: dropped[k] - before[k] for k in sent}
            return all(got.values()) and sum(got.values()) >= sum(sent.values()) // 2

        # Loopback drops datagrams when the router's receive buffer is full (a third, in a
        # burst like this): at least half must reach the router, each dropped as what it is.
        await wait_until(counted, within=20, what=f"A to count the drops of {sent} "
                         f"({before} before; now {(await heartbeat_report(a))['dropped']})")
        await checker.progress(50, what="after the flood")
    report = await checker.report()
    dropped = {k: n - before[k] for k, n in (await heartbeat_report(a))["dropped"].items()}
    states = peer_states(await heartbeat_report(a))
    record("a flood of forged heartbeats (managed mode)",
           f"{sum(sent.values())} UDP datagrams to a router's heartbeat port in a burst: "
           "signed without the secret, as each peer and a stranger, claiming europe's primary "
           "down; oversized; malformed", report, sent=sent, dropped=dropped)
    report.assert_safe()
    assert report.longest_unavailability < 2, report.summary()
    assert states == {n: "alive" for n in names[1:]}, states
    assert dropped["replayed"] == dropped["unknown_peer"] == 0  # nothing passed the MAC check
    for db in views:
        assert await _primary(db) == old
    for proc in routers:
        assert (await heartbeat_report(proc))["promoter"]["promotions"] == []


async def test_kill_9_of_a_primary_with_managed_failover(
    scratch: tuple[LocalCluster, Config], routers: list[RouterProcess],
    views: list[client.Client],
) -> None:
    """europe's primary dies (SIGKILL to its postmaster and every process of it) while six
    sessions write (half of them with idempotency keys) and read back on all three shards.
    The routers promote europe's standby; europe's writes are held meanwhile, so a session
    sees at most the writes in flight at the kill fail (outcome unknown); nothing
    acknowledged is lost, nothing is applied twice; the other shards never pause."""
    local, config = scratch
    old = await _primary(views[0])
    target = SqlTarget(config)
    # A held write waits up to [failover] write_buffer_seconds (5 s here) for the new primary:
    # the call's own bound must outlast it, or a held write would time out as unknown.
    checker = Checker(target, _dsn(routers), TOKEN, writers=6, op_timeout=8.0)
    async with checker.running():
        await checker.progress(150, what="before the kill")
        killed = signal_node(local, old, signal.SIGKILL)
        killed_at = time.monotonic()

        async def promoted_everywhere() -> bool:
            return all([await _primary(db) != old for db in views])

        await wait_until(promoted_everywhere, within=30, what="every router on a new primary")
        promoted_after = time.monotonic() - killed_at
        new = await _primary(views[0])
        target.primaries[SHARD] = new
        mark = checker.attempted

        def europe_again() -> bool:
            return sum(1 for a in checker.attempts_since(mark)
                       if a.home == SHARD and a.outcome.value == "acknowledged") >= 20

        await wait_until(lambda: asyncio.sleep(0, europe_again()), within=30,
                         what=f"20 {SHARD} writes on the promoted {new}")
        await checker.progress(150, within=30, what="after the failover")
        await gone(killed)
    report = await checker.report()
    others = checker.longest_gap_of(tuple(h for h in config.shards if h != SHARD))
    record("kill -9 of a primary (managed failover, synchronous shard)",
           f"SIGKILL to {SHARD}'s primary and its processes under load; 3 router nodes "
           "(managed mode) promote its standby; 6 sessions with a three-host DSN", report,
           promoted_after_s=round(promoted_after, 2), other_shards_longest_gap_s=round(others, 2))
    report.assert_safe()
    assert new != old
    assert report.longest_unavailability < 10, report.summary()
    # The other shards go on. Measured 0.2-0.35 s; the bound allows one false "down" of
    # another primary on a machine so loaded that the monitor's probe outlasts this test's
    # down_after_seconds (0.5 s): its writes are then held for write_buffer_seconds (5 s) and
    # refused retryably, as a full-suite run beside two others once showed (5.5 s).
    assert others < 8, f"{others:.2f}s without a write on the other shards: {report.summary()}"
    # Only writes in flight at the kill (one per europe session) may fail; the rest were held.
    europe_failures = sum(1 for a in checker.attempts_since(0)
                          if a.home == SHARD and a.outcome.value != "acknowledged")
    assert europe_failures <= 2 * checker.writers, report.summary()
