"""`georoute db migrate`, `georoute seed` and `georoute health`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from router.config import Config
from router.tools.db.health_report import check_health
from router.tools.db.migrate import migrate
from router.tools.db.seed import SeedOptions, seed

__all__ = ["register"]


def _cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    report = asyncio.run(migrate(config, documents=not args.no_documents))
    print(report.summary())
    return 0


def _cmd_seed(args: argparse.Namespace, config: Config) -> int:
    options = SeedOptions(users=args.users, seed=args.seed, documents=not args.no_documents,
                          progress=(not args.quiet and sys.stderr.isatty()) or args.progress)
    report = asyncio.run(seed(config, options))
    print(report.summary())
    return 0


def _cmd_health(args: argparse.Namespace, config: Config) -> int:
    report = asyncio.run(check_health(config))
    print(report.to_json() if args.json else report.format_table())
    # Copies of a reference table that differ are a fault too, though every node is up.
    return 0 if report.healthy and report.reference.agree else 1


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="schema migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    m = db_sub.add_parser("migrate", help="apply sql/NNN_*.sql to every shard's primary")
    m.add_argument("--no-documents", action="store_true",
                   help="do not create the document store's collections")
    m.set_defaults(func=_cmd_migrate)

    s = subparsers.add_parser("seed", help="replace all data with realistic, seeded data")
    s.add_argument("--users", type=int, default=300,
                   help="users in total, split 40/35/25 %% across regions (default 300)")
    s.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    s.add_argument("--no-documents", action="store_true", help="skip the document store")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a terminal")
    s.set_defaults(func=_cmd_seed)

    h = subparsers.add_parser("health", help="nodes, replication lag, row counts, doc store")
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(func=_cmd_health)
