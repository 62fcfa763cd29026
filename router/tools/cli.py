"""The `georoute` command line: a global --config and subcommands registered by the modules
named in COMMAND_MODULES (each exposes `register(subparsers)`; handlers are
`func(args, config) -> int`). Everything else lives in router.toml."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from router.config import load_config
from router.errors import ClusterError, ConfigError, GeorouteError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# Modules that add subcommands; append yours here.
COMMAND_MODULES: tuple[str, ...] = (
    "router.tools.localcluster.cli",
    "router.tools.daemon_cli",
    "router.tools.demo_cli",
    "router.tools.db.cli",
    "api.serve",  # `georoute api`: the REST facade (a tool: nothing in router imports api)
    "router.tools.backup.cli",
    "router.tools.usermove",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="georoute", description="A query router for geo-sharded PostgreSQL."
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=os.environ.get("GEOROUTE_CONFIG", "router.toml"),
        help="the router.toml to use (default: $GEOROUTE_CONFIG, else ./router.toml)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        return int(args.func(args, config))
    except ConfigError as exc:
        print(f"georoute: invalid config: {exc.key}: {exc.message}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"georoute: {exc}", file=sys.stderr)
        return 1
    except GeorouteError as exc:
        print(f"georoute: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
