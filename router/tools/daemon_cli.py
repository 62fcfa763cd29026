"""`georoute router`: run one router node in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from router.config import Config

__all__ = ["register"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:  # an internal error's traceback, found by its reference
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
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
