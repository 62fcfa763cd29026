"""`[failover] mode = "managed"` on a scratch cluster of its own, with three real router nodes,
one of them cut off (its heartbeats are signed with another secret, so the other two drop
them as forged and it drops theirs). Also: two promoters at once promote once; rejoin and
switchover; a synchronous shard loses no acknowledged write to kill -9; a primary frozen with
SIGSTOP is failed over and fenced when it wakes.

`kill -9` of europe's primary while a client writes continuously with unique ids: the two
routers that hear each other agree, the lowest-named of them promotes europe-2 exactly once
(one promotion in all three routers' reports, one row in georoute_failovers, timeline 2), the
cut-off router promotes nothing (its plan says `isolated`) yet follows the new primary by its
timeline, and the writes resume on europe-2. Then the old primary is restarted as it was
(writable, timeline 1): every router fences it (topology view and metrics), and it gets no
writes and no reads; a restarted router still agrees (nothing is stored in a router).
Replication is asynchronous here: README says what that does and does not promise."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from router.core.failover import Promote
from router.ha.promoter import Promoter
from router.ha.topology import Topology
from router.tools.db.health_report import check_health
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.support.router_proc import (
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    router_config,
    running_router,
)
from tests.support.scratch import scratch_cluster

# Far from the session's cluster and the other scratch ones (5000, 5100, 5400, 5600, 5800).
SCRATCH_OFFSET = 6300
SECRET, OTHER_SECRET = "managed-test-secret-0123456789", "another-secret-9876543210"
INSERT = "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', $2)"
INSERT_IN = "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, $2, 'w')"


def managed_configs(base: Config) -> list[Config]:
    base = replace(base, failover=replace(base.failover, mode="managed", down_after_seconds=0.5,
                                          write_buffer_seconds=5.0))
    configs = [router_config(base, port_shift=s, lag_poll_interval_seconds=0.05)
               for s in (1, 2, 3)]
    addresses = [f"{c.router.node_name}@127.0.0.1:{c.heartbeat.port}" for c in configs]
    return [
        replace(c, heartbeat=replace(
            c.heartbeat, interval_seconds=0.2, suspect_after_seconds=1.0, dead_after_seconds=2.0,
            alive_after_heartbeats=2,
            peers=tuple(a for a in addresses if not a.startswith(c.router.node_name + "@")),
        ))
        for c in configs
    ]


@contextlib.contextmanager
def start_router(config: Config, path: Any, secret: str) -> Iterator[RouterProcess]:
    with pytest.MonkeyPatch.context() as mp:  # the environment is copied at start
        mp.setenv(config.heartbeat.secret_env, secret)
        cm = running_router(config, path)
        proc = cm.__enter__()
    try:
        yield proc
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    # north_america replicates synchronously ([shards.north_america] synchronous = true).
    shards = dict(test_config.shards)
    shards["north_america"] = replace(shards["north_america"], synchronous=True)
    with scratch_cluster(replace(test_config, shards=shards), SCRATCH_OFFSET,
                         "scratch-managed") as pair:
        # Migrated, as a cluster in service is: georoute_failovers, which the promoter records
        # each promotion in, is sql/023's (the promoter once made it on first use).
        asyncio.run(migrate(pair[1], documents=False))
        yield pair


async def topology(proc: RouterProcess) -> dict[str, Any]:
    async with await client.connect(proc.dsn, token=TOKEN) as db:
        return dict(await db.topology())


def scrape(proc: RouterProcess) -> str:
    url = f"http://127.0.0.1:{proc.config.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def fetch_ids(dsn: str) -> set[uuid.UUID]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["item_id"] for r in await conn.fetch("SELECT item_id FROM rt_items")}
    finally:
        await conn.close()


class Reader:
    """Reads europe's rows through one router, allowing a replica, until stopped."""

    def __init__(self, db: client.Client) -> None:
        self.db = db
        self.done = 0
        self.failed: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self.db.fetch("SELECT count(*) FROM rt_items WHERE region = 'europe'",
                                    consistency="replica")
                self.done += 1
            except client.GeorouteError as exc:
                self.failed.append(repr(exc))
            await asyncio.sleep(0.005)


class Writer:
    """Writes rows with unique ids through one router, one after another, until stopped;
    remembers which ones were acknowledged."""

    def __init__(self, db: client.Client, region: str = "europe") -> None:
        self.db = db
        self.region = region
        self.acked: list[tuple[float, uuid.UUID]] = []
        self.failed = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            item = uuid.uuid4()
            try:
                await self.db.execute(INSERT_IN, item, self.region)
            except client.GeorouteError:
                self.failed += 1
                await asyncio.sleep(0.01)  # a retryable failure: the next row, a moment later
                continue
            self.acked.append((time.monotonic(), item))


async def test_two_promoters_at_once_promote_once(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """Two router nodes that each believe they are the promoter (their snapshots differ) run
    at the same moment: the replica locks serialise them, and the second finds the replica
    already out of recovery and adopts it. One promotion, one record, timeline 2."""
    local, base = scratch
    config = managed_configs(base)[0]
    local.stop_node("asia-1")
    plan = Promote("asia", "test-router-1", "asia-2", 0, ("test-router-1", "test-router-2"))
    topologies = [Topology.from_config(config), Topology.from_config(config)]
    promoters = [Promoter(config, lambda t=t: t) for t in topologies]  # type: ignore[misc]
    for promoter in promoters:
        promoter.request(plan)
    await asyncio.gather(*(p._tasks["asia"] for p in promoters))
    done = [record for p in promoters for record in p.promotions]
    assert [(r.old_primary, r.new_primary) for r in done] == [("asia-1", "asia-2")]
    other = next(p for p in promoters if not p.promotions)
    assert other.last_step["asia"].startswith("adopt: asia-2 is already out of recovery")
    conn = await asyncpg.connect(local.dsn("asia-2"))
    try:
        rows = await conn.fetch("SELECT new_primary, timeline FROM georoute_failovers")
        assert [tuple(r) for r in rows] == [("asia-2", 2)]
    finally:
        await conn.close()
    # Asked again later (the plan repeats each heartbeat until the monitors follow): nothing.
    winner = next(p for p in promoters if p.promotions)
    winner.request(plan)
    await winner._tasks["asia"]
    assert len(winner.promotions) == 1
    assert winner.last_step["asia"].startswith("adopt:")


async def test_kill_9_the_majority_promotes_once_and_the_old_primary_is_fenced(
    scratch: tuple[LocalCluster, Config], tmp_path: Any,
) -> None:
    local, base = scratch
    configs = managed_configs(base)
    # The cut-off one is also the quickest to judge the primary down, so it reaches the
    # quorum question (and must answer it "isolated") before the majority has promoted.
    configs[2] = replace(configs[2], failover=replace(configs[2].failover,
                                                      down_after_seconds=0.1))
    secrets = [SECRET, SECRET, OTHER_SECRET]
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-m{i}.toml", s))
                   for i, (c, s) in enumerate(zip(configs, secrets, strict=True))]
        a, b, c = routers
        name_a, name_b = a.config.router.node_name, b.config.router.node_name

        async def partitioned() -> bool:
            states = [peer_states(await heartbeat_report(p)) for p in routers]
            return (states[0][name_b] == "alive" and states[1][name_a] == "alive"
                    and set(states[2].values()) == {"dead"})

        await wait_until(partitioned, within=20, what="A and B alive to each other, C cut off")

        async with await client.connect(a.dsn, token=TOKEN) as db:
            await db.execute(SCRATCH_DDL, shard="europe")
            writer, reader = Writer(db), Reader(db)
            task = asyncio.create_task(writer.run())
            reading: asyncio.Task[None] | None = None
            try:
                await wait_until(lambda: asyncio.sleep(0, len(writer.acked) >= 50), within=10,
                                 what="writes before the kill")
                reading = asyncio.create_task(reader.run())  # (the table has replicated)
                await wait_until(lambda: asyncio.sleep(0, reader.done >= 5), within=10,
                                 what="reads before the kill")
                pid = local.pid("europe-1")
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()

                async def promoted_everywhere() -> bool:
                    for proc in routers:
                        if (await topology(proc))["shards"]["europe"]["primary"] != "europe-2":
                            return False
                    return True

                await wait_until(promoted_everywhere, within=20,
                                 what="every router, the cut-off one too, on europe-2")
                switched = time.monotonic()

                async def writes_resumed() -> bool:
                    return any(at > killed for at, _ in writer.acked[-5:])

                await wait_until(writes_resumed, within=10, what="writes acknowledged again")
                before = len(writer.acked)
                await wait_until(lambda: asyncio.sleep(0, len(writer.acked) >= before + 50),
                                 within=10, what="more writes on the new primary")
            finally:
                writer.stop.set()
                reader.stop.set()
                await task
                if reading is not None:
                    await reading
            # Writes were held while europe had no primary ([failover] write_buffer_seconds),
            # so only what was in flight at the kill failed; reads went on throughout.
            assert writer.failed <= 2, writer.failed
            assert reader.failed == [] and reader.done > 0

            # Exactly one promotion, by the lowest-named node of the majority (pg_promote
            # returns to the promoter up to 0.1 s after the others see the new primary).
            async def promotions() -> list[tuple[str, dict[str, Any]]]:
                reports = [await heartbeat_report(p) for p in routers]
                return [(r["node"], p) for r in reports for p in r["promoter"]["promotions"]]

            async def promoted() -> bool:
                return len(await promotions()) >= 1

            await wait_until(promoted, within=10, what="the promoter's record")
            done = await promotions()
            assert len(done) == 1, done
            (promoter, record), = done
            assert promoter == min(name_a, name_b)
            assert (record["shard"], record["old_primary"], record["new_primary"]) == (
                "europe", "europe-1", "europe-2")
            # The cut-off router never planned a promotion (every change of plan is logged),
            # and its promoter never tried; yet it follows the new primary (checked above).
            assert not any("would promote" in line for line in c.output)
            assert c.wait_for_output("failover plan for europe (managed): no action (isolated)",
                                     timeout=1)
            assert (await heartbeat_report(c))["promoter"] == {"promotions": [], "last_step": {},
                                                               "followers": {}}
            new_primary = await asyncpg.connect(local.dsn("europe-2"))
            try:
                rows = await new_primary.fetch("SELECT shard, new_primary, timeline, promoted_by "
                                               "FROM georoute_failovers")
                assert [tuple(r) for r in rows] == [("europe", "europe-2", 2, promoter)]
            finally:
                await new_primary.close()
            for proc in routers:
                view = await topology(proc)
                nodes = {n["name"]: n for n in view["shards"]["europe"]["nodes"]}
                assert nodes["europe-2"]["timeline"] == 2 and nodes["europe-2"]["role"] == "primary"
                assert view["shards"]["europe"]["failovers"][-1]["new_primary"] == "europe-2"

            # Asynchronous replication: a write acknowledged by the old primary in the moment
            # before it died may be missing (README says so; synchronous = true is the cure).
            # Every write acknowledged once the routers had switched is there.
            present = await fetch_ids(local.dsn("europe-2"))
            assert {item for at, item in writer.acked if at >= switched} <= present
            lost = [item for _, item in writer.acked if item not in present]
            times = [at for at, _ in writer.acked]
            window = max(b - a for a, b in itertools.pairwise(times))
            print(f"failover: longest pause between acknowledged writes {window:.2f} s, "
                  f"{writer.failed} failed writes, {len(lost)} of {len(writer.acked)} "
                  f"acknowledged writes lost (asynchronous)")

            # The old primary comes back as it was: writable, on timeline 1. Fenced everywhere.
            local.start_node("europe-1")

            async def fenced_everywhere() -> bool:
                for proc in routers:
                    if (await topology(proc))["shards"]["europe"]["fenced"] != ["europe-1"]:
                        return False
                return True

            await wait_until(fenced_everywhere, within=15, what="every router fences europe-1")
            health = await check_health(base)  # `georoute health`, asking the nodes directly
            assert [n.name for n in health.nodes if n.fenced] == ["europe-1"]
            assert "primary FENCED" in health.format_table() and not health.healthy
            for proc in routers:
                text = await asyncio.to_thread(scrape, proc)
                assert re.search(r'^georoute_node_fenced\{node="europe-1"\} 1\.0$', text, re.M)
                assert re.search(r'^georoute_failovers_total\{shard="europe"\} 1\.0$', text, re.M)
            marker = uuid.uuid4()
            await db.execute(INSERT, marker, "after-fence")
            for _ in range(30):
                _, route = await db.fetch_routed(
                    "SELECT payload FROM rt_items WHERE region = 'europe'")
                assert route is not None and route.node != "europe-1"
            assert marker in await fetch_ids(local.dsn("europe-2"))
            assert marker not in await fetch_ids(local.dsn("europe-1"))
            assert len(await promotions()) == 1  # seconds later, still the one promotion

        # A router restarted after all this still agrees: europe-2 the primary, europe-1
        # fenced (the timelines are the record, not anything the router kept).
        routers[0].stop()
        again = stack.enter_context(start_router(configs[0], local.state_dir / "router-m0b.toml",
                                                 SECRET))

        async def agrees() -> bool:
            europe = (await topology(again))["shards"]["europe"]
            return bool(europe["primary"] == "europe-2" and europe["fenced"] == ["europe-1"])

        await wait_until(agrees, within=10, what="the restarted router agrees")
        async with await client.connect(again.dsn, token=TOKEN) as db:
            marker = uuid.uuid4()
            await db.execute(INSERT, marker, "after-restart")
        assert marker in await fetch_ids(local.dsn("europe-2"))
        assert marker not in await fetch_ids(local.dsn("europe-1"))

        # `georoute cluster rejoin europe-1`: pg_rewind, then a standby of europe-2. Every
        # router unfences it, and reads reach it once it streams and has caught up.
        routers = [again, b, c]
        rejoined = await asyncio.to_thread(local.rejoin, "europe-1")
        assert (rejoined.node, rejoined.primary) == ("europe-1", "europe-2")

        async def unfenced_everywhere() -> bool:
            for proc in routers:
                europe = (await topology(proc))["shards"]["europe"]
                nodes = {n["name"]: n for n in europe["nodes"]}
                if europe["fenced"] or nodes["europe-1"]["in_recovery"] is not True:
                    return False
            return True

        await wait_until(unfenced_everywhere, within=10, what="europe-1 a standby everywhere")
        async with await client.connect(again.dsn, token=TOKEN) as db:

            async def reads_reach_it() -> bool:
                _, route = await db.fetch_routed(
                    "SELECT count(*) FROM rt_items WHERE region = 'europe'", consistency="replica")
                return route is not None and route.node == "europe-1"

            await wait_until(reads_reach_it, within=10, what="reads on the rejoined europe-1")

            # `georoute cluster switchover europe` under a write load: europe-1 again the
            # primary, europe-2 rejoined as its standby, no acknowledged write lost.
            writer = Writer(db)
            task = asyncio.create_task(writer.run())
            try:
                await wait_until(lambda: asyncio.sleep(0, len(writer.acked) >= 30), within=10,
                                 what="writes before the switchover")
                report = await asyncio.to_thread(local.switchover, "europe", None)
                assert (report.old_primary, report.new_primary) == ("europe-2", "europe-1")
                assert report.rejoin.primary == "europe-1"

                async def on_europe_1() -> bool:
                    for proc in routers:
                        if (await topology(proc))["shards"]["europe"]["primary"] != "europe-1":
                            return False
                    return True

                await wait_until(on_europe_1, within=15, what="every router on europe-1")
                before = len(writer.acked)
                await wait_until(lambda: asyncio.sleep(0, len(writer.acked) >= before + 30),
                                 within=10, what="writes after the switchover")
            finally:
                writer.stop.set()
                await task
        present = await fetch_ids(local.dsn("europe-1"))
        missing = [item for _, item in writer.acked if item not in present]
        assert missing == [], f"{len(missing)} acknowledged writes lost in the switchover"
        times = [at for at, _ in writer.acked]
        window = max(b - a for a, b in itertools.pairwise(times))
        print(f"switchover: paused {report.pause_seconds:.2f} s (CLI), longest pause between "
              f"acknowledged writes {window:.2f} s, {writer.failed} failed writes")


async def test_synchronous_shard_loses_no_acknowledged_write_to_kill_9(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """north_america replicates synchronously: eight writers, kill -9 of its primary, and
    every write any of them saw acknowledged is on the promoted replica; writes resume (the
    promoter turns synchronous replication off on the new primary until a standby rejoins,
    and rejoin turns it on again)."""
    local, base = scratch
    configs = managed_configs(base)
    async with contextlib.AsyncExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-s{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        db = await stack.enter_async_context(
            await client.connect(routers[0].dsn, token=TOKEN, pool_size=8))
        await db.execute(SCRATCH_DDL, shard="north_america")
        conn = await asyncpg.connect(local.dsn("north_america-1"))
        try:
            assert await conn.fetchval("SHOW synchronous_standby_names") == "*"
        finally:
            await conn.close()
        writers = [Writer(db, "north_america") for _ in range(8)]
        tasks = [asyncio.create_task(w.run()) for w in writers]
        try:
            await wait_until(lambda: asyncio.sleep(0, sum(len(w.acked) for w in writers) >= 400),
                             within=20, what="writes before the kill")
            pid = local.pid("north_america-1")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            async def promoted() -> bool:
                view = await topology(routers[1])
                return bool(view["shards"]["north_america"]["primary"] == "north_america-2")

            await wait_until(promoted, within=20, what="north_america-2 promoted")
            switched = time.monotonic()

            async def resumed() -> bool:
                return all(w.acked and w.acked[-1][0] > switched for w in writers)

            await wait_until(resumed, within=20, what="every writer acknowledged again")
        finally:
            for w in writers:
                w.stop.set()
            await asyncio.gather(*tasks)
        present = await fetch_ids(local.dsn("north_america-2"))
        acked = [item for w in writers for _, item in w.acked]
        missing = [item for item in acked if item not in present]
        assert missing == [], f"{len(missing)} of {len(acked)} acknowledged writes lost"
        print(f"synchronous: 0 of {len(acked)} acknowledged writes lost, "
              f"{sum(w.failed for w in writers)} failed")
        # rejoin: north_america-1 streams from the new primary, which is synchronous again
        await asyncio.to_thread(local.rejoin, "north_america-1")
        conn = await asyncpg.connect(local.dsn("north_america-2"))
        try:
            assert await conn.fetchval("SHOW synchronous_standby_names") == "*"
            await conn.execute(INSERT_IN, uuid.uuid4(), "north_america")  # does not hang
        finally:
            await conn.close()


def _node_pids(postmaster: int) -> list[int]:
    """The postmaster and its children (backends, WAL sender, checkpointer...)."""
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


async def test_a_frozen_primary_is_fenced_when_it_wakes(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """SIGSTOP of north_america's primary (every process of it) looks like a dead one: the
    majority promotes the standby; SIGCONT brings the old one back writable on the older
    timeline, and every router fences it: no writes, no reads."""
    local, base = scratch
    configs = managed_configs(base)
    async with contextlib.AsyncExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-f{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        db = await stack.enter_async_context(await client.connect(routers[0].dsn, token=TOKEN))
        await db.execute(SCRATCH_DDL, shard="north_america")
        view = (await topology(routers[0]))["shards"]["north_america"]
        old = view["primary"]
        standby = next(n["name"] for n in view["nodes"] if n["name"] != old)
        postmaster = local.pid(old)
        assert postmaster is not None
        frozen = _node_pids(postmaster)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            async def promoted() -> bool:
                for proc in routers:
                    if (await topology(proc))["shards"]["north_america"]["primary"] != standby:
                        return False
                return True

            await wait_until(promoted, within=30, what=f"{standby} promoted while {old} froze")
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        async def fenced() -> bool:
            for proc in routers:
                if (await topology(proc))["shards"]["north_america"]["fenced"] != [old]:
                    return False
            return True

        await wait_until(fenced, within=20, what=f"every router fences the woken {old}")
        marker = uuid.uuid4()
        await db.execute(INSERT_IN, marker, "north_america")
        for _ in range(20):
            _, route = await db.fetch_routed(
                "SELECT count(*) FROM rt_items WHERE region = 'north_america'",
                consistency="replica")
            assert route is not None and route.node == standby
        assert marker in await fetch_ids(local.dsn(standby))
        assert marker not in await fetch_ids(local.dsn(old))
