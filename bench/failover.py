"""`python -m bench.failover`: the write-unavailability window after `kill -9` of a shard's
primary, in managed failover mode, with `synchronous` off and on.

A cluster of its own (bench ports + 3000, its own state dir), three router nodes with
router.toml's heartbeat and failover timings (demo_routers.py, as `make demo` runs them), and
`--writers` clients that each write rows with unique ids through the first router node, one
after another. Each run kills europe's current primary with SIGKILL and measures the longest
time in which no write was acknowledged (the window), then checks which acknowledged writes
the promoted node has, and rejoins the old primary (`georoute cluster rejoin`) for the next
run. Prints one line per run and a markdown table of the median and worst window per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import signal
import statistics
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg

import client
from bench.stack import BENCH_PORT_OFFSET, REPO, TOKEN, RouterProcess, bench_config, start_cluster
from router.config import TableConfig
from router.tools.demo_routers import demo_router_configs
from router.tools.localcluster import LocalCluster

OFFSET = BENCH_PORT_OFFSET + 3000
SHARD = "europe"
TABLE = TableConfig(name="bf_items", region_column="region", id_columns=("item_id",))
DDL = "CREATE TABLE IF NOT EXISTS bf_items (item_id uuid PRIMARY KEY, region text NOT NULL)"
INSERT = "INSERT INTO bf_items (item_id, region) VALUES ($1, $2)"


@dataclass
class RunResult:
    synchronous: bool
    old_primary: str
    new_primary: str
    window: float  # the longest time without an acknowledged write, around the kill
    acked: int
    lost: int
    failed: int


async def _write(db: client.Client, acked: list[tuple[float, uuid.UUID]], stop: asyncio.Event,
                 failed: list[int]) -> None:
    while not stop.is_set():
        item = uuid.uuid4()
        try:
            await db.execute(INSERT, item, SHARD)
        except client.GeorouteError:
            failed[0] += 1
            await asyncio.sleep(0.01)
            continue
        acked.append((time.monotonic(), item))


async def _topology(dsn: str) -> dict[str, Any]:
    async with await client.connect(dsn, token=TOKEN) as db:
        return dict((await db.topology())["shards"][SHARD])


async def _until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def one_run(local: LocalCluster, routers: list[RouterProcess], writers: int,
                  synchronous: bool) -> RunResult:
    dsns = [f"georoute://127.0.0.1:{r.config.router.listen_port}" for r in routers]
    old = (await _topology(dsns[0]))["primary"]
    acked: list[tuple[float, uuid.UUID]] = []
    failed = [0]
    stop = asyncio.Event()
    async with await client.connect(dsns[0], token=TOKEN, pool_size=writers) as db:
        tasks = [asyncio.create_task(_write(db, acked, stop, failed)) for _ in range(writers)]
        try:
            await _until(lambda: asyncio.sleep(0, len(acked) >= 200), 30, "writes")
            pid = local.pid(old)
            assert pid is not None, f"{old} is not running"
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()

            async def switched() -> bool:
                for dsn in dsns:
                    if (await _topology(dsn))["primary"] == old:
                        return False
                return True

            await _until(switched, 60, "every router on a new primary")
            async def writing_again() -> bool:
                return bool(acked) and acked[-1][0] > killed + 0.1

            await _until(writing_again, 30, "writes again")
            more = len(acked) + 100
            await _until(lambda: asyncio.sleep(0, len(acked) >= more), 30, "more writes")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    new = (await _topology(dsns[0]))["primary"]
    times = sorted(at for at, _ in acked if at >= killed - 1.0)
    window = max(b - a for a, b in itertools.pairwise(times))
    conn = await asyncpg.connect(local.dsn(new))
    try:
        present = {r[0] for r in await conn.fetch("SELECT item_id FROM bf_items")}
    finally:
        await conn.close()
    lost = sum(1 for _, item in acked if item not in present)
    await asyncio.to_thread(local.rejoin, old)

    async def unfenced() -> bool:
        for dsn in dsns:
            view = await _topology(dsn)
            if view["fenced"] or any(n["in_recovery"] is not True for n in view["nodes"]
                                     if n["name"] != view["primary"]):
                return False
        return True

    await _until(unfenced, 30, f"{old} rejoined as a standby on every router")
    return RunResult(synchronous, old, new, window, len(acked), lost, failed[0])


async def run_mode(synchronous: bool, runs: int, writers: int, state_root: Path) -> list[RunResult]:
    config = bench_config(OFFSET, state_root / ("sync" if synchronous else "async"))
    shards = dict(config.shards)
    shards[SHARD] = replace(shards[SHARD], synchronous=synchronous)
    config = replace(config, shards=shards, tables={**config.tables, TABLE.name: TABLE})
    local = await asyncio.to_thread(start_cluster, config)
    routers = [RouterProcess(c, local.state_dir / f"bench-{c.router.node_name}.toml")
               for c in demo_router_configs(config)]
    results: list[RunResult] = []
    try:
        for router in routers:
            await asyncio.to_thread(router.start)
        primary = config.shards[SHARD].primary
        conn = await asyncpg.connect(host=primary.host, port=primary.port,
                                     database=primary.database, user=config.database.user)
        try:
            await conn.execute(DDL)
        finally:
            await conn.close()
        await _until(_quorum(routers), 30, "router nodes alive to each other")
        for i in range(runs):
            result = await one_run(local, routers, writers, synchronous)
            results.append(result)
            print(f"{'sync ' if synchronous else 'async'} run {i + 1}: kill -9 {result.old_primary}"
                  f" -> {result.new_primary}: no write acknowledged for {result.window:.2f} s; "
                  f"{result.lost} of {result.acked} acknowledged writes lost, "
                  f"{result.failed} failed", flush=True)
    finally:
        for router in routers:
            router.stop()
        await asyncio.to_thread(local.down, True)
    return results


def _quorum(routers: list[RouterProcess]) -> Any:
    async def check() -> bool:
        for router in routers:
            dsn = f"georoute://127.0.0.1:{router.config.router.listen_port}"
            async with await client.connect(dsn, token=TOKEN) as db:
                peers = (await db.topology())["heartbeat"]["peers"]
            if any(p["state"] != "alive" for p in peers):
                return False
        return True

    return check


def table(results: list[RunResult]) -> str:
    lines = ["| synchronous | runs | median window (s) | worst window (s) | acknowledged writes "
             "lost (all runs) |", "|---|---|---|---|---|"]
    for mode, group in itertools.groupby(results, key=lambda r: r.synchronous):
        rs = list(group)
        windows = [r.window for r in rs]
        lines.append(f"| {'on' if mode else 'off'} | {len(rs)} | {statistics.median(windows):.2f}"
                     f" | {max(windows):.2f} | {sum(r.lost for r in rs)} of "
                     f"{sum(r.acked for r in rs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--mode", choices=("both", "async", "sync"), default="both")
    args = parser.parse_args()
    os.environ.setdefault("GEOROUTE_HEARTBEAT_SECRET", secrets.token_urlsafe(24))
    state_root = REPO / ".georoute-bench-failover"
    state_root.mkdir(exist_ok=True)
    (state_root / ".gitignore").write_text("*\n")  # git status stays clean
    modes = {"both": (False, True), "async": (False,), "sync": (True,)}[args.mode]
    results: list[RunResult] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for synchronous in modes:
        results += asyncio.run(run_mode(synchronous, args.runs, args.writers, state_root))
    print(f"\n`python -m bench.failover --runs {args.runs} --writers {args.writers}` "
          f"started {started} UTC\n")
    print(table(results))


if __name__ == "__main__":
    main()
