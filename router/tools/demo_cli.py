"""`georoute demo` (what `make demo` runs): the whole local stack until Ctrl-C.

Brings up the local cluster (3 shards x primary + replica, and the document store), applies
the migrations, seeds sample data when the shards are empty, and runs three router nodes that
heartbeat each other, in managed failover mode (demo_routers.py). Ctrl-C stops what this
command started: the routers, the API, and the cluster if it was not already running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

import asyncpg

from router.config import Config
from router.tools.config_write import config_to_toml
from router.tools.db.migrate import migrate
from router.tools.db.seed import SeedOptions, seed
from router.tools.demo_routers import config_path, demo_router_configs, multi_host_dsn
from router.tools.localcluster import LocalCluster
from router.tools.localcluster.status import format_table

__all__ = ["register"]

ROUTER_NODES = 3  # on router.listen_port and the next two (6600, 6601, 6602)


async def _user_count(config: Config) -> int:
    total = 0
    for shard in config.shards.values():
        a = shard.primary
        conn = await asyncpg.connect(host=a.host, port=a.port, database=a.database,
                                     user=config.database.user,
                                     password=config.database.password())
        try:
            total += await conn.fetchval("SELECT count(*) FROM users")
        finally:
            await conn.close()
    return total


def _wait_for_line(proc: subprocess.Popen[str], marker: str, timeout: float) -> bool:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return False
        if marker in line:
            return True
    return False


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo the way Ctrl-C does


def _prepare(args: argparse.Namespace, config: Config, cluster: LocalCluster) -> None:
    print("1/4 local cluster (PostgreSQL 3 shards x primary+replica, document store) ...")
    for line in format_table(cluster.up()).splitlines():
        print("    " + line)
    print("2/4 migrations ...")
    print("    " + asyncio.run(migrate(config)).summary().replace("\n", "\n    "))
    if asyncio.run(_user_count(config)) == 0:
        print("3/4 sample data (georoute seed) ...")
        report = asyncio.run(seed(config, SeedOptions(users=args.users, progress=False)))
        print("    " + report.summary().replace("\n", "\n    "))
    else:
        print("3/4 sample data: already present (run `georoute seed` to regenerate)")


def _serve(args: argparse.Namespace, config: Config, stops_cluster: bool) -> int:
    env = dict(os.environ)
    token = env.get(config.router.auth_token_env) or secrets.token_urlsafe(18)
    env[config.router.auth_token_env] = token
    # The heartbeats' shared secret: made up for this run unless one is set.
    env.setdefault(config.heartbeat.secret_env, secrets.token_urlsafe(24))
    configs = demo_router_configs(config, ROUTER_NODES)
    print(f"4/4 {len(configs)} router nodes (heartbeats, managed failover) ...")
    routers: list[subprocess.Popen[str]] = []
    api: subprocess.Popen[str] | None = None
    try:
        for node in configs:
            path = config_path(node)
            path.write_text(config_to_toml(node))
            router = subprocess.Popen(
                [sys.executable, "-m", "router.tools.cli", "--config", str(path), "router"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            routers.append(router)
            if not _wait_for_line(router, "ready on", 30):
                print(f"router {node.router.node_name} failed to start", file=sys.stderr)
                return 1
        api = _start_api(args, env)
        if api is None:
            return 1
        r = config.router
        dsn = multi_host_dsn(configs)
        api_url = f"http://{config.api.host}:{config.api.port}"
        region = next(iter(config.shards))  # a configured one: router.toml may name others
        unix = (f"\n            georoute://{quote(r.listen_socket_dir, safe='')}:{r.listen_port}"
                "   (the first node's Unix socket)" if r.listen_socket_dir else "")
        metrics = ", ".join(f"http://{c.metrics.host}:{c.metrics.port}/metrics"
                            for c in configs if c.metrics.port)
        print(f"""
georoute is serving:
  routers   {dsn}   token: {token}{unix}
  metrics   {metrics}
  REST API  {api_url}/api/v1   docs: {api_url}/docs

Try it (README.md, "Try it", has more):
  export {r.auth_token_env}={token}
  .venv/bin/python -m client {dsn} \\
      "SELECT title, price_cents FROM courses WHERE region = \\$1 LIMIT 5" {region}
  curl -s '{api_url}/api/v1/courses?sort=popular&limit=3'
  curl -s {api_url}/api/v1/auth/register -H 'content-type: application/json' -d \\
      '{{"email":"me@example.com","password":"passw0rd-42","full_name":"Me","region":"{region}"}}'
Kill a primary (`kill -9` its postmaster, `georoute cluster status` shows the pids) and the
routers promote its replica; `georoute cluster rejoin NODE` brings the old one back.

Ctrl-C stops the routers{' and the cluster' if stops_cluster else ''}.""", flush=True)
        for node, router in zip(configs[1:], routers[1:], strict=True):
            _relay(router, f"[{node.router.node_name}] ")
        assert routers[0].stdout is not None
        for line in routers[0].stdout:  # relay the first node's log until it exits or Ctrl-C
            print(f"[{configs[0].router.node_name}] {line}", end="")
        return routers[0].wait()
    finally:
        for proc in [*([api] if api is not None else []), *routers]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*([api] if api is not None else []), *routers]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _relay(proc: subprocess.Popen[str], prefix: str) -> None:
    threading.Thread(target=lambda: [print(prefix + line, end="") for line in proc.stdout or ()],
                     daemon=True).start()


def _start_api(args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen[str] | None:
    """`georoute api --demo` (a JWT secret made up unless one is set), its log relayed."""
    api = subprocess.Popen(
        [sys.executable, "-m", "router.tools.cli", "--config", args.config, "api", "--demo"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if not _wait_for_line(api, "ready on", 30):
        api.kill()
        print("the REST API failed to start (`georoute api --demo` shows why)", file=sys.stderr)
        return None
    threading.Thread(target=lambda: [print(line, end="") for line in api.stdout or ()],
                     daemon=True).start()
    return api


def _run(args: argparse.Namespace, config: Config) -> int:
    # Set both explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    cluster = LocalCluster(config)
    started_cluster = not any(s.running for s in cluster.status())
    print("== georoute demo ==")
    try:
        _prepare(args, config, cluster)
        return _serve(args, config, started_cluster)
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        if started_cluster:  # stop what this command started, also after Ctrl-C mid-start
            cluster.down()
            print("cluster stopped (data kept in the state dir; `georoute cluster down --purge` "
                  "removes it)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run the whole local stack until Ctrl-C")
    p.add_argument("--users", type=int, default=300, help="sample users when seeding")
    p.set_defaults(func=_run)
