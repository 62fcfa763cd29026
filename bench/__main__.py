"""`python -m bench`: start the bench cluster, the router and the peers, run every workload
against every target, print the table, save JSON and a chart, update bench/RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench import peers
from bench.placement import reads_by_port
from bench.profile import find_py_spy, profile_router
from bench.report import (
    machine_info,
    profile_md,
    render_table,
    write_chart,
    write_json,
    write_results_md,
)
from bench.runner import Plan, Recorder, run_main, run_scatter, run_sweep
from bench.stack import (
    BENCH_PORT_OFFSET,
    REPO,
    TOKEN,
    RouterProcess,
    bench_config,
    prepare_data,
    rss_kib,
    smoke_offset,
    start_cluster,
)
from bench.targets import AsyncpgTarget, Endpoint, GeorouteTarget, ScatterTarget, Target
from bench.workloads import MAIN_WORKLOADS, POINT_READ, SCATTER_WORKLOADS, load_sample
from router.config import Config
from router.tools.localcluster.users import ensure_server_user

SHARD = "europe"
BENCH_DIR = Path(__file__).resolve().parent
TARGET_THROUGHPUT, TARGET_P99 = 0.7, 2.0  # the router issue's speed target for point reads
PROFILE_BELOW = TARGET_THROUGHPUT  # profile the router when point reads are under the target


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long check that the harness works (no RESULTS.md update)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="JSON and chart dir")
    p.add_argument("--users", type=int, default=None, help="users to seed (default 300)")
    p.add_argument("--concurrency", type=int, default=None, help="clients (default 16)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--sweep", default=None, help="client counts (default 1,4,16,64,256)")
    p.add_argument("--data-sweep", default=None,
                   help="further user counts to reseed and rerun point reads at, after the "
                        "main run (default 20000; 0 = none)")
    p.add_argument("--no-peers", action="store_true", help="skip pgbouncer and pgpool-II")
    p.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                   help="py-spy the router (auto: when point reads fall under 0.7x direct)")
    p.add_argument("--keep-cluster", action="store_true", help="leave the bench cluster up")
    p.add_argument("--only", choices=["all", "scatter"], default="all",
                   help="scatter: only the cross-shard reads (catalogue, count_by_region), "
                        "georoute against direct; prints and saves JSON, leaves RESULTS.md "
                        "alone; --profile always samples the router under each of them")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {"users": 30 if smoke else 300, "concurrency": 4 if smoke else 16,
                "duration": 0.5 if smoke else 4.0, "rounds": 1 if smoke else 3,
                "sweep": "4" if smoke else "1,4,16,64,256",
                "data_sweep": "60" if smoke else "20000"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sweep = tuple(int(x) for x in str(args.sweep).split(",") if x.strip())
    args.data_sweep = tuple(int(x) for x in str(args.data_sweep).split(",")
                            if x.strip() and int(x) > 0)
    return args


def versions(pg_version: str) -> dict[str, str]:
    bouncer, pgpool = peers.find_program("pgbouncer"), peers.find_program("pgpool")
    return {
        "postgresql": pg_version,
        "pgbouncer": peers.program_version([bouncer, "--version"]) if bouncer else "absent",
        "pgpool": peers.program_version([pgpool, "--version"]) if pgpool else "absent",
        "asyncpg": asyncpg.__version__,
        "uvloop": uvloop.__version__,
    }


class Bench:
    """One run: owns everything it starts and stops it, by pid, in `close`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # The smoke run gets its own ports and state dir, so a test session can run it while a
        # full bench (or another test session's smoke) is using the +20000 cluster.
        if args.smoke:  # the first block of ports nobody listens on (another session's smoke)
            offset = smoke_offset(REPO / "router.toml")
            state = REPO / f".georoute-bench-smoke-{offset}"
        else:
            offset, state = BENCH_PORT_OFFSET, REPO / ".georoute-bench"
        self.config: Config = bench_config(offset, state)
        self.state_dir = state
        self.rec = Recorder(router_pid=None)
        self.skipped: list[str] = []
        self.router: RouterProcess | None = None
        self.peer_procs: list[peers.PeerProcess] = []
        self.cluster: Any = None

    # ---- set-up ------------------------------------------------------------------------------

    def start(self) -> None:
        say = self.rec.say
        if not self.args.no_peers and not self.args.smoke:
            log: list[str] = []
            peers.ensure_installed(log)
            self.skipped += log
        say(f"bench cluster: state {self.state_dir}, {SHARD} primary on port "
            f"{self.config.shards[SHARD].primary.port}")
        started = time.monotonic()
        self.cluster = start_cluster(self.config)
        say(f"  cluster up in {time.monotonic() - started:.1f} s; migrating and seeding "
            f"{self.args.users} users")
        asyncio.run(prepare_data(self.config, self.args.users))
        self.router = RouterProcess(self.config, self.state_dir / "router.toml")
        self.router.start()
        self.rec.router_pid = self.router.pid
        say(f"  router pid {self.router.pid} on {self.router.dsn}")
        if self.args.no_peers:
            self.skipped.append("pgbouncer and pgpool-II: --no-peers")
            return
        shard = self.config.shards[SHARD]
        user = ensure_server_user(self.config.cluster.server_user)
        db, db_user = shard.primary.database, self.config.database.user
        p, r = shard.primary.port, shard.replicas[0].port
        if peers.find_program("pgbouncer"):
            self._start_peer(lambda: peers.start_pgbouncer(
                self.state_dir, user, db_user,
                {db: (p, db), f"{db}_ro": (r, db), "pgbench": (p, "pgbench"),
                 "pgbench_ro": (r, "pgbench")},
                self.config.database.pool_max_size), db)
        else:
            self.skipped.append("pgbouncer: not installed")
        if peers.find_program("pgpool"):
            self._start_peer(lambda: peers.start_pgpool(
                self.state_dir, user, db_user, p, r, children=2 * 32 + 8), db)
        else:
            self.skipped.append("pgpool-II: not installed")

    def _start_peer(self, start: Any, database: str) -> None:
        try:
            proc: peers.PeerProcess = start()
        except Exception as exc:
            self.skipped.append(f"{exc}")
            return
        self.peer_procs.append(proc)
        try:
            asyncio.run(peers.wait_accepting(proc, database, self.config.database.user, 20))
        except Exception as exc:
            self.skipped.append(f"{proc.name}: did not start: {str(exc)[-600:]}")
            proc.stop()
            self.peer_procs.remove(proc)
            return
        self.rec.say(f"  {proc.name} pid {proc.pid} on 127.0.0.1:{proc.port}")

    def targets(self) -> list[Target]:
        shard = self.config.shards[SHARD]
        db, user = shard.primary.database, self.config.database.user
        # Direct connections reach the nodes the way the router does (Unix sockets when
        # [database] socket_dir is set), so the baseline is never the weaker transport.
        via = self.config.database.host_for
        primary = Endpoint(shard.primary.port, db, via(shard.primary))
        replica = Endpoint(shard.replicas[0].port, db, via(shard.replicas[0]))
        assert self.router is not None
        out: list[Target] = [
            AsyncpgTarget("direct", "asyncpg straight to the right node (replica for reads, "
                          "primary for writes), own connections, statement cache on, same "
                          "transport as the router's backends",
                          replica, primary, user, 100),
            GeorouteTarget(self.router.dsn, TOKEN, pool_size=4),
        ]
        for proc in self.peer_procs:
            if proc.name == "pgbouncer":
                out.append(AsyncpgTarget(
                    "pgbouncer", "asyncpg via pgbouncer (transaction mode, pool 16 per node; "
                    "reads to a replica entry), statement_cache_size=0",
                    Endpoint(proc.port, f"{db}_ro"), Endpoint(proc.port, db), user, 0))
            elif proc.name == "pgpool":
                out.append(AsyncpgTarget(
                    "pgpool", "asyncpg via pgpool-II (streaming replication, load balancing "
                    "per session over primary+replica), statement cache on",
                    Endpoint(proc.port, db), Endpoint(proc.port, db), user, 100))
        return out

    # ---- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args, shard = self.args, self.config.shards[SHARD]
        db_user = self.config.database.user
        sample = await load_sample(shard.primary.port, shard.primary.database, db_user)
        conn = await asyncpg.connect(host="127.0.0.1", port=shard.primary.port, user=db_user,
                                     database=shard.primary.database)
        pg_version = str(await conn.fetchval("SELECT version()")).split(" on ")[0]
        await conn.close()
        plan = Plan(args.concurrency, args.duration, 0.1 if args.smoke else 0.5, args.rounds,
                    args.sweep, 0.5 if args.smoke else 2.0)
        targets = self.targets()
        failed: dict[str, str] = {}
        replicas = [Endpoint(s.replicas[0].port, s.replicas[0].database,
                             self.config.database.host_for(s.replicas[0]))
                    for s in self.config.shards.values()]
        georoute = next(t for t in targets if isinstance(t, GeorouteTarget))
        if args.only == "scatter":
            return await self.run_scatter_only(georoute, replicas, sample, plan, pg_version)
        workloads = await run_main(self.rec, targets, MAIN_WORKLOADS, sample, plan, failed)
        workloads.update(await run_scatter(
            self.rec, ScatterTarget(replicas, db_user), georoute,
            [t.name for t in targets if t.name not in ("direct", "georoute")], sample, plan))
        sweep = await run_sweep(self.rec, targets, sample, plan, failed)
        results: dict[str, Any] = {"workloads": workloads, "sweep": sweep}
        ports = {shard.primary.port: "primary", shard.replicas[0].port: "replica"}
        placement: dict[str, dict[str, int]] = {}
        for target in targets:
            counts = await reads_by_port(target, sample, args.concurrency,
                                         200 if args.smoke else 2000)
            placement[target.name] = {ports.get(p, str(p)): n for p, n in counts.items()}
            self.rec.say(f"  reads of {target.name} landed on {placement[target.name]}")
        results["placement"] = placement
        ratio = workloads["point_read"]["ratios"].get("georoute/direct", {}).get("throughput")
        py_spy = find_py_spy()
        want = args.profile == "always" or (
            args.profile == "auto" and not args.smoke and ratio is not None
            and ratio < PROFILE_BELOW)
        if want and py_spy and self.router is not None:
            self.rec.say("profiling the router with py-spy during point reads")
            # Python frames (non-blocking sampling), then native frames too (pauses per sample).
            for key, native in (("profile", False), ("profile_native", True)):
                results[key] = await profile_router(
                    py_spy, self.router.pid, GeorouteTarget(self.router.dsn, TOKEN, 4), sample,
                    args.concurrency, 2 if args.smoke else 5, args.out, native)
        elif want:
            self.skipped.append("router profile: py-spy is not installed (pip install py-spy)")
        if not args.smoke:
            results["pgbench"] = await asyncio.to_thread(self.pgbench, args.concurrency)
        sizes = [n for n in args.data_sweep if n != args.users]
        if sizes:  # last: it reseeds the cluster
            results["data_sweep"] = await self.data_sweep(
                targets, sizes, plan, failed, workloads["point_read"])
        results["pg_version"] = pg_version
        results["target_descriptions"] = {t.name: t.description for t in targets}
        return results

    async def run_scatter_only(self, georoute: GeorouteTarget, replicas: list[Endpoint],
                               sample: Any, plan: Plan, pg_version: str) -> dict[str, Any]:
        """`--only scatter`: the cross-shard workloads alone, and with `--profile always` a
        py-spy profile of the router under each."""
        args = self.args
        workloads = await run_scatter(self.rec, ScatterTarget(replicas, self.config.database.user),
                                      georoute, [], sample, plan)
        results: dict[str, Any] = {"workloads": workloads}
        py_spy = find_py_spy()
        if args.profile == "always" and py_spy and self.router is not None:
            for workload in SCATTER_WORKLOADS:
                self.rec.say(f"profiling the router with py-spy during {workload.name}")
                for suffix, native in (("", False), ("_native", True)):
                    results[f"profile_{workload.name}{suffix}"] = await profile_router(
                        py_spy, self.router.pid, GeorouteTarget(self.router.dsn, TOKEN, 4),
                        sample, args.concurrency, 2 if args.smoke else 5, args.out, native,
                        workload)
        elif args.profile == "always":
            self.skipped.append("router profile: py-spy is not installed (pip install py-spy)")
        results["pg_version"] = pg_version
        results["target_descriptions"] = {
            "direct": "asyncpg to every shard's replica, merged in the client",
            "georoute": georoute.description}
        return results

    async def data_sweep(self, targets: list[Target], sizes: list[int], plan: Plan,
                         failed: dict[str, str], base: dict[str, Any]) -> dict[str, Any]:
        """Point reads again after reseeding with more users: does throughput hold as data
        grows? One round per size (the main run already interleaved three)."""
        shard, user = self.config.shards[SHARD], self.config.database.user
        steps = [{"users": self.args.users, **base}]
        one_round = dataclasses.replace(plan, rounds=1)
        for users in sizes:
            self.rec.say(f"data sweep: reseeding with {users} users")
            started = time.monotonic()
            await prepare_data(self.config, users)
            await _wait_replayed(shard.primary.port, shard.replicas[0].port, user)
            self.rec.say(f"  seeded in {time.monotonic() - started:.0f} s")
            sample = await load_sample(shard.primary.port, shard.primary.database, user)
            found = await run_main(self.rec, targets, (POINT_READ,), sample, one_round, failed)
            steps.append({"users": users, **found["point_read"]})
        return {"steps": steps}

    def pgbench(self, clients: int) -> dict[str, Any]:
        exe = peers.pgbench_path()
        if exe is None:
            self.skipped.append("pgbench: not found")
            return {}
        shard, user = self.config.shards[SHARD], self.config.database.user
        p, r = shard.primary.port, shard.replicas[0].port
        self.rec.say(f"pgbench -S, {clients} clients, 4 s per target")
        try:
            asyncio.run(_create_database(p, user, "pgbench"))
            peers.init_pgbench(exe, p, "pgbench", user)
            asyncio.run(_wait_replayed(p, r, user))
        except Exception as exc:
            self.skipped.append(f"pgbench: set-up failed: {exc}")
            return {}
        runs = {"direct": (r, "pgbench")}
        for proc in self.peer_procs:
            runs[proc.name] = (proc.port, "pgbench_ro" if proc.name == "pgbouncer" else "pgbench")
        out: dict[str, Any] = {}
        for name, (port, db) in runs.items():
            try:
                out[name] = peers.run_pgbench(exe, port, db, user, clients, 4)
                self.rec.say(f"  pgbench {name}: {out[name]['tps']:,.0f} tps")
            except Exception as exc:
                out[name] = {"status": f"failed: {exc}"[:300]}
        return out

    # ---- tear-down ---------------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.peer_procs:
            proc.stop()
        if self.router is not None:
            self.router.stop()
        if self.cluster is not None and not self.args.keep_cluster:
            self.cluster.down(purge=self.args.smoke)


async def _create_database(port: int, user: str, name: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database="postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _wait_replayed(primary: int, replica: int, user: str, limit_s: float = 30) -> None:
    """Until the replica has replayed the primary's current WAL position."""
    conn = await asyncpg.connect(host="127.0.0.1", port=primary, user=user, database="postgres")
    try:
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await conn.close()
    conn = await asyncpg.connect(host="127.0.0.1", port=replica, user=user, database="postgres")
    try:
        deadline = time.monotonic() + limit_s
        while not await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn):
            if time.monotonic() > deadline:
                raise TimeoutError("replica did not replay pgbench's tables")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def headline(results: dict[str, Any]) -> list[str]:
    out = []
    for name in ("point_read", "write", "mixed", "catalogue", "count_by_region"):
        w = results["workloads"].get(name)
        if not w:
            continue
        parts = [f"{t} {v['ops_per_s']:,.0f} ops/s p99 {v['p99_ms']:.2f} ms"
                 for t, v in w["targets"].items() if v.get("status") == "ok"]
        r = w["ratios"].get("georoute/direct")
        ratio = (f"; georoute/direct {r['throughput']:.2f}x throughput, {r['p99']:.2f}x p99"
                 if r else "")
        out.append(f"{name} at {w['concurrency']} clients: " + ", ".join(parts) + ratio)
    r = results["workloads"].get("point_read", {}).get("ratios", {}).get("georoute/direct")
    if r and r["throughput"] is not None and r["throughput"] < PROFILE_BELOW:
        out.append(f"georoute is BELOW {PROFILE_BELOW}x of direct on point reads "
                   f"({r['throughput']:.2f}x); see the profile below.")
    checks = []
    for step in results.get("sweep", {}).get("steps", []):
        r = step["ratios"].get("georoute/direct")
        if r and r["throughput"] is not None and r["p99"] is not None:
            met = r["throughput"] >= TARGET_THROUGHPUT and r["p99"] <= TARGET_P99
            checks.append(f"{step['concurrency']} clients {r['throughput']:.2f}x / "
                          f"{r['p99']:.2f}x {'met' if met else 'NOT met'}")
    if checks:
        out.append(f"point-read target (georoute >= {TARGET_THROUGHPUT}x direct's throughput, "
                   f"p99 <= {TARGET_P99}x, same clients, same run) along the sweep: "
                   + "; ".join(checks))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    load_start = [round(x, 2) for x in os.getloadavg()]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    try:
        bench.start()
        # The load generator runs on uvloop, the same loop for every target.
        found = uvloop.run(bench.run())
        router_rss = rss_kib(bench.router.pid) if bench.router else 0
    finally:
        bench.close()
    results: dict[str, Any] = {
        "meta": {
            "command": command.strip(), "started": started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "machine": machine_info(), "versions": versions(found.pop("pg_version")),
            "options": {"users": args.users, "concurrency": args.concurrency,
                        "duration": args.duration, "rounds": args.rounds,
                        "sweep": list(args.sweep), "smoke": args.smoke,
                        "warmup": 0.1 if args.smoke else 0.5},
            "shard": SHARD, "targets": found.pop("target_descriptions"),
            "router_rss_kib_at_end": router_rss,
            "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        **found,
        "skipped": bench.skipped,
    }
    results["headline"] = headline(results)
    if importlib.util.find_spec("matplotlib") is None:
        results["skipped"].append("chart: matplotlib is not installed (`make bench` installs it)")
    path = write_json(results, args.out, stamp)
    chart = write_chart(results, args.out / f"bench-{stamp}.png")
    print(render_table(results))
    print()
    for line in results["headline"]:
        print(line)
    for key, profile in results.items():
        if key.startswith("profile_"):
            print(f"\n{key}:")
            print("\n".join(profile_md(profile)))
    for line in bench.skipped:
        print(f"skipped: {line}")
    print(f"results: {path}" + (f", chart: {chart}" if chart else ""))
    if not args.smoke and args.only == "all":
        write_results_md(results, BENCH_DIR / "RESULTS.md", chart)
        print(f"updated {BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
