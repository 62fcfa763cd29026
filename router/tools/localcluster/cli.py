"""`georoute cluster up | down | status | rejoin | switchover`: the local cluster from the
command line."""

from __future__ import annotations

import argparse
import time
from typing import Any

from router.config import Config
from router.tools.localcluster.manager import LocalCluster
from router.tools.localcluster.status import format_table, to_json

__all__ = ["register"]


def register(subparsers: Any) -> None:
    cluster = subparsers.add_parser("cluster", help="run a local cluster for development")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="start every node (idempotent) and wait until ready")
    up.add_argument("--json", action="store_true", help="print node status as JSON")
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="stop the nodes georoute started")
    down.add_argument("--purge", action="store_true", help="also delete all cluster data")
    down.set_defaults(func=_down)

    status = actions.add_parser("status", help="show each node's role, state and lag")
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(func=_status)

    rejoin = actions.add_parser(
        "rejoin", help="make a node (a fenced old primary) a streaming replica of its shard's "
        "primary: pg_rewind, then start it as a standby")
    rejoin.add_argument("node", help="the node's name, as `georoute cluster status` lists it")
    rejoin.set_defaults(func=_rejoin)

    switch = actions.add_parser(
        "switchover", help="planned change of a shard's primary: stop it, let a standby replay "
        "all of its WAL, promote that one, rejoin the old primary as a standby")
    switch.add_argument("shard", help="a shard (a region of router.toml)")
    switch.add_argument("--to", metavar="NODE", help="the standby to promote (default: the "
                        "most advanced)")
    switch.set_defaults(func=_switchover)


def _up(args: argparse.Namespace, config: Config) -> int:
    started = time.monotonic()
    statuses = LocalCluster(config).up()
    print(to_json(statuses) if args.json else format_table(statuses))
    if not args.json:
        print(f"cluster up in {time.monotonic() - started:.1f} s")
    return 0


def _down(args: argparse.Namespace, config: Config) -> int:
    LocalCluster(config).down(purge=args.purge)
    print("cluster down" + (" (data purged)" if args.purge else ""))
    return 0


def _rejoin(args: argparse.Namespace, config: Config) -> int:
    print(LocalCluster(config).rejoin(args.node).describe())
    return 0


def _switchover(args: argparse.Namespace, config: Config) -> int:
    print(LocalCluster(config).switchover(args.shard, args.to).describe())
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    statuses = LocalCluster(config).status()
    print(to_json(statuses) if args.json else format_table(statuses))
    return 0
