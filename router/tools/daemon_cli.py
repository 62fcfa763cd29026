"""`georoute router`: run one router node in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from router.config import Config
from router.logs import JsonFormatter, RequestIdFilter, TextFormatter

__all__ = ["register"]


def _setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())  # each line names the request it is about, if any
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(TextFormatter(fmt))
        logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _run(args: argparse.Namespace, config: Config) -> int:
    from router.node import run_router

    _setup_logging(args.log_level, args.log_json)
    run_router(config, args.config)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("router", help="run a router node (the protocol daemon)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.set_defaults(func=_run)
