"""The soak (`pytest -m soak`, never in `make test`): mixed load for GEOROUTE_SOAK_SECONDS
(1,800 by default) with a fault every GEOROUTE_SOAK_FAULT_SECONDS (180 by default, at most a
sixth of the run), on a scratch cluster of its own with managed failover (europe synchronous)
and three router nodes. The load: the SQL checker (six sessions writing with and without
idempotency keys and reading back, through all three routers), the document checker, and a
reader of cross-shard counts. The faults, in turn: kill -9 of a replica (restarted), of the
document store (restarted), of one router node (restarted), and of europe's primary (the
routers promote its standby; the old one is rejoined as a standby with `georoute cluster
rejoin`). Between faults the load must go on; at the end nothing acknowledged is lost or
applied twice, and the two routers never killed hold no more memory or descriptors than after
the warm-up, within a margin.

    GEOROUTE_SOAK_SECONDS=180 GEOROUTE_SOAK_FAULT_SECONDS=30 pytest -m soak
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import client
from router.config import Config
from router.tools.db.migrate import migrate
from router.tools.localcluster import DOCSTORE, LocalCluster
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.integration.test_managed_failover import SECRET, managed_configs, start_router
from tests.support.checker import Checker, DocTarget, SqlTarget, with_checker_table
from tests.support.nodeproc import gone, signal_node
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess
from tests.support.scratch import scratch_cluster

pytestmark = pytest.mark.soak

SCRATCH_OFFSET = 6950  # far from the session's cluster and the other scratch ones
SECONDS = float(os.environ.get("GEOROUTE_SOAK_SECONDS", "1800"))
FAULT_EVERY = float(os.environ.get("GEOROUTE_SOAK_FAULT_SECONDS", "180"))
FAILOVER_SHARD = "europe"
MIB = 1 << 20


@dataclass
class Usage:
    """One router process's resident memory and open descriptors."""

    rss: int
    fds: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = next(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:"))
        return cls(rss_kib * 1024, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Soak:
    local: LocalCluster
    config: Config
    configs: list[Config]
    routers: list[RouterProcess]  # [A, B, C]: C is the one killed and restarted
    target: SqlTarget
    sql: Checker
    docs: Checker
    faults: dict[str, int] = field(default_factory=dict)
    fault_seconds: dict[str, float] = field(default_factory=dict)  # each kind's longest
    c_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start_c(self) -> None:
        self.c_stack = contextlib.ExitStack()
        self.routers[2] = self.c_stack.enter_context(start_router(
            self.configs[2], self.local.state_dir / "router-soak-2.toml", SECRET))

    async def view(self, proc: RouterProcess, shard: str) -> dict[str, object]:
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            return dict((await db.topology())["shards"][shard])


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    shards = dict(test_config.shards)
    shards[FAILOVER_SHARD] = replace(shards[FAILOVER_SHARD], synchronous=True)
    with scratch_cluster(replace(test_config, shards=shards), SCRATCH_OFFSET,
                         "scratch-soak") as (local, config):
        asyncio.run(migrate(config))
        asyncio.run(SqlTarget(config).prepare())
        yield local, config


async def _node_health(soak: Soak, shard: str, node: str) -> str:
    view = await soak.view(soak.routers[0], shard)
    nodes = view["nodes"]
    assert isinstance(nodes, list)
    return str(next(n["health"] for n in nodes if n["name"] == node))


async def _standby(soak: Soak, shard: str) -> str:
    view = await soak.view(soak.routers[0], shard)
    nodes = view["nodes"]
    assert isinstance(nodes, list)
    return str(next(n["name"] for n in nodes if n["name"] != view["primary"]))


async def kill_replica(soak: Soak) -> None:
    victim = await _standby(soak, "asia")
    killed = signal_node(soak.local, victim, signal.SIGKILL)

    async def health_is(state: str) -> bool:
        return await _node_health(soak, "asia", victim) == state

    await wait_until(lambda: health_is("down"), within=20, what=f"{victim} down")
    await gone(killed)
    await asyncio.to_thread(soak.local.start_node, victim)
    await wait_until(lambda: health_is("up"), within=30, what=f"{victim} up again")


async def kill_docstore(soak: Soak) -> None:
    mark = soak.docs.attempted
    killed = signal_node(soak.local, DOCSTORE, signal.SIGKILL)

    def refused() -> bool:
        return bool(soak.docs.errors_since(mark))

    await wait_until(lambda: asyncio.sleep(0, refused()), within=30,
                     what="a document write refused")
    await gone(killed)
    await asyncio.to_thread(soak.local.start_node, DOCSTORE)
    await soak.docs.progress(10, within=60, what="documents after the store's restart")


async def kill_router(soak: Soak) -> None:
    c = soak.routers[2]
    c.proc.send_signal(signal.SIGKILL)
    await wait_until(lambda: asyncio.sleep(0, c.proc.poll() is not None), within=10,
                     what="router C to die")
    soak.c_stack.close()
    await soak.sql.progress(50, within=30, what="with router C dead")
    await asyncio.to_thread(soak.start_c)
    names = [cfg.router.node_name for cfg in soak.configs]

    async def all_alive() -> bool:
        for proc, name in zip(soak.routers, names, strict=True):
            states = peer_states(await heartbeat_report(proc))
            if states != {n: "alive" for n in names if n != name}:
                return False
        return True

    await wait_until(all_alive, within=30, what="the three routers alive to one another")


async def kill_primary(soak: Soak) -> None:
    old = str((await soak.view(soak.routers[0], FAILOVER_SHARD))["primary"])
    killed = signal_node(soak.local, old, signal.SIGKILL)

    async def promoted() -> bool:
        return all([(await soak.view(p, FAILOVER_SHARD))["primary"] != old
                    for p in soak.routers])

    await wait_until(promoted, within=30, what="every router on a new primary")
    soak.target.primaries[FAILOVER_SHARD] = str(
        (await soak.view(soak.routers[0], FAILOVER_SHARD))["primary"])
    await soak.sql.progress(50, within=30, what="after the failover")
    await gone(killed)
    await asyncio.to_thread(soak.local.rejoin, old)

    async def standby_everywhere() -> bool:
        for proc in soak.routers:
            view = await soak.view(proc, FAILOVER_SHARD)
            nodes = view["nodes"]
            assert isinstance(nodes, list)
            if view["fenced"] or any(n["in_recovery"] is not True for n in nodes
                                     if n["name"] != view["primary"]):
                return False
        return True

    await wait_until(standby_everywhere, within=30, what=f"{old} a standby on every router")


FAULTS: list[tuple[str, Callable[[Soak], Awaitable[None]]]] = [
    ("kill -9 of a replica", kill_replica),
    ("kill -9 of the document store", kill_docstore),
    ("kill -9 of a router node", kill_router),
    ("kill -9 of a primary (managed failover, then rejoin)", kill_primary),
]


async def _steady_until(soak: Soak, deadline: float) -> None:
    """Load goes on until `deadline`: each stretch of 50 SQL writes must be acknowledged
    within 30 s."""
    while time.monotonic() < deadline:
        await soak.sql.progress(50, within=30, what="between faults")


async def _cross_shard_reads(dsn: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with await client.connect(dsn, token=TOKEN, client_name="soak-reader") as db:
        while not stop.is_set():
            try:
                await db.fetchval("SELECT count(*) FROM chk_writes", timeout=5)
                counts["ok"] += 1
            except (client.GeorouteError, TimeoutError, OSError):
                counts["failed"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)


async def test_soak(scratch: tuple[LocalCluster, Config]) -> None:
    local, config = scratch
    configs = [with_checker_table(c) for c in managed_configs(config)]
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-soak-{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs[:2])]
        routers.append(routers[0])  # a placeholder for C, started below
        target = SqlTarget(config)
        dsn = "georoute://" + ",".join(
            f"{c.router.listen_host}:{c.router.listen_port}" for c in configs)
        soak = Soak(local, config, configs, routers, target,
                    Checker(target, dsn, TOKEN, writers=6, op_timeout=8.0),
                    Checker(DocTarget(config), dsn, TOKEN, writers=2, op_timeout=6.0))
        soak.start_c()
        stack.callback(lambda: soak.c_stack.close())
        reads = {"ok": 0, "failed": 0}
        stop_reads = asyncio.Event()
        reader = asyncio.create_task(_cross_shard_reads(dsn, stop_reads, reads))
        samples: list[tuple[float, Usage, Usage]] = []

        def sample() -> None:
            a, b = (Usage.of(r.proc.pid) for r in routers[:2])
            samples.append((time.monotonic() - started, a, b))

        try:
            async with soak.sql.running(), soak.docs.running():
                await soak.sql.progress(300, within=60, what="the warm-up")
                await soak.docs.progress(30, within=60, what="the warm-up's documents")
                sample()  # the baseline: pools filled, sessions connected, caches warm
                end = started + SECONDS
                interval = min(FAULT_EVERY, SECONDS / 6)
                n = 0
                while time.monotonic() + interval < end:
                    await _steady_until(soak, time.monotonic() + interval)
                    name, fault = FAULTS[n % len(FAULTS)]
                    began = time.monotonic()
                    print(f"{began - started:7.1f}s  {name}", flush=True)
                    await fault(soak)
                    took = time.monotonic() - began
                    print(f"{time.monotonic() - started:7.1f}s  recovered in {took:.1f}s; "
                          f"{soak.sql.acknowledged} SQL writes acknowledged", flush=True)
                    soak.faults[name] = soak.faults.get(name, 0) + 1
                    soak.fault_seconds[name] = max(soak.fault_seconds.get(name, 0.0), took)
                    n += 1
                    sample()
                await _steady_until(soak, end)
                sample()
        finally:
            stop_reads.set()
            await reader
        sql_report, doc_report = await soak.sql.report(), await soak.docs.report()
    (_, a0, b0), (_, a1, b1) = samples[0], samples[-1]
    elapsed = time.monotonic() - started
    record(f"soak: mixed load with a fault every {interval:.0f} s ({elapsed / 60:.1f} min)",
           "SQL checker (6 sessions) + document checker (2) + cross-shard reads, through 3 "
           "managed router nodes; in turn kill -9 of a replica, the document store, a router "
           "node and europe's primary (failover + rejoin)", sql_report,
           faults=soak.faults, longest_fault_s={k: round(v, 1)
                                                for k, v in soak.fault_seconds.items()},
           documents=doc_report.summary(), cross_shard_reads=reads,
           rss_mib={"baseline": [round(a0.rss / MIB, 1), round(b0.rss / MIB, 1)],
                    "end": [round(a1.rss / MIB, 1), round(b1.rss / MIB, 1)],
                    "max": round(max(max(a.rss, b.rss) for _, a, b in samples) / MIB, 1)},
           fds={"baseline": [a0.fds, b0.fds], "end": [a1.fds, b1.fds]})
    print(sql_report.summary())
    print(doc_report.summary())
    print("faults:", soak.faults, "reads:", reads)
    for t, a, b in samples:
        print(f"{t:7.1f}s  A {a.rss / MIB:6.1f} MiB {a.fds:4d} fds   "
              f"B {b.rss / MIB:6.1f} MiB {b.fds:4d} fds")
    assert n >= 1 and len(soak.faults) == min(n, len(FAULTS)), soak.faults
    sql_report.assert_safe()
    doc_report.assert_safe()
    assert reads["ok"] > 0
    # Flat: the routers never killed end where the warm-up left them, within a margin for
    # allocator noise (a leak of a few KiB per request would be hundreds of MiB by now).
    for before, after in ((a0, a1), (b0, b1)):
        assert after.rss <= before.rss * 1.25 + 24 * MIB, (before, after)
        assert after.fds <= before.fds + 12, (before, after)
