"""`python -m bench.twophase`: what a transaction over two shards costs against one on one
shard, through the router (ops/s and latency), on a bench cluster of its own.

Each transaction updates two users' rows: both on europe (one shard: committed as any
transaction, begun with a shard, or without one), or one on europe and one on asia (two
shards: PREPARE on asia, the decision committed on europe, COMMIT PREPARED on asia). The
workloads run in interleaved rounds so that drift hits them alike; the median round is
reported. Results go to bench/out/twophase.json; add them to RESULTS.md by hand."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

import client
from bench.report import machine_info
from bench.stack import (
    BENCH_PORT_OFFSET,
    REPO,
    TOKEN,
    RouterProcess,
    bench_config,
    cpu_seconds,
    start_cluster,
)
from bench.stack import prepare_data as migrate_and_seed
from bench.workloads import median

UPDATE = "UPDATE users SET city = $2 WHERE user_id = $1"
OFFSET = BENCH_PORT_OFFSET + 2000  # its own ports: `make bench` may be running too
STATE = ".georoute-bench-2pc"  # under the repository, with the offset after it

Users = dict[str, list[uuid.UUID]]
Txn = Callable[[client.Client, random.Random, Users], Awaitable[None]]


async def one_shard_pinned(db: client.Client, rng: random.Random, users: Users) -> None:
    a, b = sorted(rng.sample(users["europe"], 2))  # in one order: no deadlocks between clients
    async with db.transaction(shard="europe") as tx:
        await tx.execute(UPDATE, a, "Lyon")
        await tx.execute(UPDATE, b, "Lyon")


async def one_shard(db: client.Client, rng: random.Random, users: Users) -> None:
    a, b = sorted(rng.sample(users["europe"], 2))  # in one order: no deadlocks between clients
    async with db.transaction() as tx:  # no shard named: one branch, no two-phase commit
        await tx.execute(UPDATE, a, "Lyon")
        await tx.execute(UPDATE, b, "Lyon")


async def two_shards(db: client.Client, rng: random.Random, users: Users) -> None:
    a, b = rng.choice(users["europe"]), rng.choice(users["asia"])
    async with db.transaction() as tx:
        await tx.execute(UPDATE, a, "Lyon")
        await tx.execute(UPDATE, b, "Kyoto")


WORKLOADS: dict[str, tuple[str, Txn]] = {
    "one_shard_pinned": ("two updates on europe, begun with shard='europe'", one_shard_pinned),
    "one_shard": ("two updates on europe, begun without a shard (one branch)", one_shard),
    "two_shards": ("an update on europe and one on asia (two-phase commit)", two_shards),
}


async def measure(dsn: str, txn: Txn, users: Users, clients: int, duration: float,
                  seed: int, router_pid: int) -> dict[str, Any]:
    """`clients` sessions each running `txn` back to back for `duration` seconds; with the
    router process's CPU time per transaction (less moved by other load than ops/s)."""
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    # A client (one router connection) per session: a connection may hold at most half a
    # node's pool in transactions, and a Client sends a loop turn's requests on one connection.
    sessions = [await client.connect(dsn, token=TOKEN, pool_size=1) for _ in range(clients)]
    try:
        deadline = time.perf_counter() + duration

        async def worker(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await txn(sessions[n], rng, users)
                except client.GeorouteError as exc:  # e.g. a deadlock: counted, not timed
                    errors[f"{exc.name} {exc.sqlstate or ''}".strip()] += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        cpu_before = sum(cpu_seconds(router_pid))
        await asyncio.gather(*(worker(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
        router_cpu = sum(cpu_seconds(router_pid)) - cpu_before
    finally:
        for db in sessions:
            await db.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {"ops_per_s": round(len(latencies) / elapsed, 1), "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "ops": len(latencies), "errors": sum(errors.values()),
            "router_cpu_us_per_tx": round(router_cpu / len(latencies) * 1e6) if latencies else None,
            "error_kinds": dict(errors)}


async def load_users(config: Any, per_shard: int) -> Users:
    out: Users = {}
    for shard in ("europe", "asia"):
        primary = config.shards[shard].primary
        conn = await asyncpg.connect(host="127.0.0.1", port=primary.port,
                                     user=config.database.user, database=primary.database)
        try:
            rows = await conn.fetch("SELECT user_id FROM users ORDER BY user_id LIMIT $1",
                                    per_shard)
        finally:
            await conn.close()
        out[shard] = [r[0] for r in rows]
    return out


async def run(args: argparse.Namespace, dsn: str, config: Any, pid: int) -> dict[str, Any]:
    users = await load_users(config, 200)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in WORKLOADS}
    for round_no in range(args.rounds):
        for name, (_, txn) in WORKLOADS.items():
            await measure(dsn, txn, users, args.clients, min(0.5, args.duration), round_no, pid)
            figures = await measure(dsn, txn, users, args.clients, args.duration, round_no, pid)
            rounds[name].append(figures)
            print(f"  round {round_no + 1} {name:<17} {figures['ops_per_s']:>8.0f} tx/s  "
                  f"p50 {figures['p50_ms']:>6.2f} ms  p99 {figures['p99_ms']:>6.2f} ms  "
                  f"router {figures['router_cpu_us_per_tx']} us/tx  "
                  f"errors {figures['error_kinds'] or 0}", file=sys.stderr,
                  flush=True)
    result: dict[str, Any] = {}
    for name, (what, _) in WORKLOADS.items():
        result[name] = {
            "what": what,
            "ops_per_s": median([r["ops_per_s"] for r in rounds[name]]),
            "p50_ms": median([r["p50_ms"] for r in rounds[name]]),
            "p99_ms": median([r["p99_ms"] for r in rounds[name]]),
            "router_cpu_us_per_tx": median([r["router_cpu_us_per_tx"] or 0 for r in rounds[name]]),
            "errors": sum(r["errors"] for r in rounds[name]),
            "rounds": rounds[name],
        }
    base = result["one_shard"]
    result["two_shards"]["vs_one_shard"] = {
        "throughput": round(result["two_shards"]["ops_per_s"] / base["ops_per_s"], 2),
        "p99": round(result["two_shards"]["p99_ms"] / base["p99_ms"], 2),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.twophase", description=__doc__)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=600, help="users to seed")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--smoke", action="store_true", help="a moment each, to check it runs")
    p.add_argument("--keep-cluster", action="store_true", help="leave the cluster up")
    p.add_argument("--offset", type=int, default=OFFSET,
                   help=f"ports above router.toml's (default {OFFSET})")
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.duration, args.rounds, args.users = 2, 0.3, 1, 60
    state = REPO / f"{STATE}-{args.offset}"  # a replica's data names its primary's port
    config = bench_config(args.offset, state)
    cluster = start_cluster(config)
    router = RouterProcess(config, state / "router.toml")
    try:
        asyncio.run(migrate_and_seed(config, args.users))
        router.start()
        print(f"router pid {router.pid}; {args.clients} clients, {args.rounds} rounds of "
              f"{args.duration:g} s", file=sys.stderr, flush=True)
        result = asyncio.run(run(args, router.dsn, config, router.pid))
    finally:
        router.stop()
        if not args.keep_cluster:
            cluster.down(purge=True)
    report = {"machine": machine_info(), "clients": args.clients, "duration": args.duration,
              "rounds": args.rounds, "workloads": result,
              "command": "python -m bench.twophase " + " ".join(argv or sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "twophase.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"{'workload':<17} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'router us/tx':>13}")
    for name, figures in result.items():
        print(f"{name:<17} {figures['ops_per_s']:>8.0f} {figures['p50_ms']:>8.2f} "
              f"{figures['p99_ms']:>8.2f} {figures['router_cpu_us_per_tx']:>13.0f}")
    ratio = result["two_shards"]["vs_one_shard"]
    print(f"two shards vs one (no shard named): throughput {ratio['throughput']}x, "
          f"p99 {ratio['p99']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
