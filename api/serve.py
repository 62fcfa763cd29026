"""`georoute api`: serve the REST facade with uvicorn (uvloop, httptools) until SIGTERM/SIGINT.

It connects to the router named by router.toml (its Unix socket when it has one, else TCP)
with the token in `router.auth_token_env`, reads the JWT secret from the environment or a
`.env` file in the working directory, and refuses to start without one unless `--demo`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast
from urllib.parse import quote

import client
from api.http import create_app
from api.settings import Settings, SettingsError, load_dotenv_file, router_token

__all__ = ["main", "register", "router_dsn", "tune_gc"]

log = logging.getLogger("api")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; an access-log record's fields are top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                "logger": record.name}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            record.msg = ("{method} {path} {status} {ms}ms request_id={request_id} "
                          "client={client} user={user}").format(**access)
            record.args = ()
        return super().format(record)


def _setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def router_dsn(config: Any) -> str:
    r = config.router
    if r.listen_socket_dir:
        return f"georoute://{quote(r.listen_socket_dir, safe='')}:{r.listen_port}"
    return f"georoute://{r.listen_host}:{r.listen_port}"


class _Coalesced:
    """A connection's transport whose writes within one step of the event loop go out as
    one send: uvicorn writes a response's status line and headers, then its body, each
    with a system call of its own (on loopback about a tenth of the API's CPU per request).
    Anything but `write` is the transport's own; `close` sends what is held first."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._send)
        else:
            self._held.append(data)

    def _send(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._send()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _protocol_class() -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):
        """uvicorn's httptools protocol over a `_Coalesced` transport."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = cast(asyncio.Transport, _Coalesced(transport, self.loop))

    return Protocol


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM/SIGINT only ask it to stop (drain, then exit 0):
        uvicorn's own handlers raise the signal again after shutdown, exiting by it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            stops = (signal.SIGTERM, signal.SIGINT)
            for sig in stops:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in stops:
                    loop.remove_signal_handler(sig)

    return Server


# Requests allocate many short-lived containers, freed by reference counting; Python's default
# young-generation collection every 700 allocations then runs often and finds nothing (the
# router does the same: router/node.py).
_GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Once the app is built: start-up's objects (every imported module's, about 50 ms to
    scan) are frozen out of the collector's reach, so a full collection under load no longer
    stalls every request in flight for that long; and young objects are collected less often.
    The API reloads nothing, so nothing frozen is ever garbage."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)


async def _serve(config: Any, settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    token = router_token(config)
    dsn = args.router or router_dsn(config)
    db = await client.connect(dsn, token=token, client_name="georoute-api", pool_size=4,
                              command_timeout=args.request_timeout)
    async with db:
        app = create_app(db, settings)
        host = args.host or config.api.host
        port = config.api.port if args.port is None else args.port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        server = _server_class()(uvicorn.Config(
            app, loop="none", http=_protocol_class(), lifespan="off", access_log=False,
            log_config=None, server_header=False, proxy_headers=False,
            timeout_graceful_shutdown=10))
        tune_gc()
        # The socket listens already: connections wait in its backlog until uvicorn accepts.
        print(f"georoute api ready on http://{host}:{bound}/api/v1 (docs: /docs)", flush=True)
        await server.serve(sockets=[sock])
    return 0


def _run(args: argparse.Namespace, config: Any) -> int:
    _setup_logging(args.log_level, args.log_json)
    load_dotenv_file()  # after: its warning about a file others may read must be seen
    try:
        settings = Settings.from_config(config, demo=args.demo)
        router_token(config)
    except SettingsError as exc:
        print(f"georoute api: {exc}", file=sys.stderr)
        return 2
    if args.demo and not os.environ.get(config.api.jwt_secret_env):
        log.warning("demo: JWT secret made up for this run (set $%s to keep tokens valid "
                    "across restarts)", config.api.jwt_secret_env)
    import uvloop

    try:
        return uvloop.run(_serve(config, settings, args))
    except client.GeorouteError as exc:
        print(f"georoute api: cannot reach the router: {exc}", file=sys.stderr)
        return 1


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="listen address (default: [api] host)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: [api] port)")
    p.add_argument("--router", default=None, metavar="DSN",
                   help="the router to use (default: router.toml's own node)")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds a data request may take, retries included (default 10)")
    p.add_argument("--demo", action="store_true",
                   help="make up a JWT secret when none is set (the demo only)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.set_defaults(func=_run)


def register(subparsers: Any) -> None:
    _options(subparsers.add_parser("api", help="serve the REST API (/api/v1, docs at /docs)"))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m api.serve [--config PATH] [options]`: the same as `georoute api`."""
    from router.config import load_config

    parser = argparse.ArgumentParser(prog="georoute api")
    parser.add_argument("--config", default=os.environ.get("GEOROUTE_CONFIG", "router.toml"))
    _options(parser)
    args = parser.parse_args(argv)
    return int(args.func(args, load_config(args.config)))


if __name__ == "__main__":
    sys.exit(main())
