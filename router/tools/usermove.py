"""`georoute user move USER_ID REGION`: move a user and everything that is theirs to another
region's shard (README, "Moving a user between regions"). The move is the router's admin
request `move_user` (router/engine/usermove.py): this command sends it to the router node of
router.toml (its Unix socket when it has one, else TCP without TLS), with the token in
`router.auth_token_env`, and prints what the move did. Running it again is harmless, and
finishes what an interrupted run left."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from protocol import Admin, AdminReply, Encoder, Error, FrameDecoder, Hello, HelloOk
from protocol.versions import SUPPORTED_VERSIONS
from router.config import Config, router_socket_path
from router.errors import RouterCallError

__all__ = ["admin_call", "register"]

# A move holds its user's rows locked while it runs; it waits at most this long for an answer.
_TIMEOUT_SECONDS = 120.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = subparsers.add_parser("user", help="operations on one user")
    actions = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    move = actions.add_parser(
        "move", help="move a user and everything theirs to another region's shard")
    move.add_argument("user_id", help="the user's id (an old id of a moved user works too)")
    move.add_argument("region", help="the region (a shard of router.toml) to move them to")
    move.add_argument("--json", action="store_true", help="print the report as JSON")
    move.set_defaults(func=_move)


def _move(args: argparse.Namespace, config: Config) -> int:
    try:
        user_id = uuid.UUID(args.user_id)
    except ValueError:
        print(f"georoute: {args.user_id!r} is not a user id (a uuid)", file=sys.stderr)
        return 2
    report = asyncio.run(admin_call(config, "move_user",
                                    {"user_id": str(user_id), "region": args.region}))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif report["moved"]:
        rows = ", ".join(f"{n} {table}" for table, n in sorted(report["rows"].items()))
        print(f"moved {report['user_id']} from {report['from_region']} to {report['region']}: "
              f"now {report['current_id']} ({rows}; {report['documents']} document(s))")
    else:
        print(f"{report['user_id']} already lives in {report['region']} as "
              f"{report['current_id']}; nothing to move"
              + (f" ({report['documents']} document(s) re-keyed)" if report["documents"] else ""))
    return 0


async def admin_call(config: Config, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Send one admin request to the router node of `config` and return its reply's payload
    (waiting at most _TIMEOUT_SECONDS)."""
    r = config.router
    token = os.environ.get(r.auth_token_env)
    path = router_socket_path(r)
    try:
        if path is not None:
            reader, writer = await asyncio.open_unix_connection(path)
        elif r.tls_cert_file:
            raise RouterCallError("the router takes TLS on TCP and has no Unix socket "
                                 "(router.listen_socket_dir): send the request with the "
                                 "client library (client.move_user)")
        else:
            reader, writer = await asyncio.open_connection(r.listen_host, r.listen_port)
    except OSError as exc:
        where = path or f"{r.listen_host}:{r.listen_port}"
        raise RouterCallError(f"cannot reach the router at {where}: {exc}") from exc
    encoder, decoder = Encoder(r.max_frame_bytes), FrameDecoder(r.max_frame_bytes)
    try:
        async with asyncio.timeout(_TIMEOUT_SECONDS):
            for message in (Hello(1, list(SUPPORTED_VERSIONS), "georoute-user", token),
                            Admin(2, op, args)):
                writer.write(encoder.encode(message))
                reply = await _next(reader, decoder)
                if isinstance(reply, Error):
                    raise RouterCallError(f"{reply.name}: {reply.message}"
                                         + (f" (SQLSTATE {reply.sqlstate})"
                                            if reply.sqlstate else ""))
                if not isinstance(reply, HelloOk | AdminReply):
                    raise RouterCallError(f"unexpected reply {type(reply).__name__}")
    except TimeoutError:
        raise RouterCallError(f"no answer from the router within {_TIMEOUT_SECONDS:g} s"
                              ) from None
    finally:
        writer.close()
    assert isinstance(reply, AdminReply)
    return reply.payload


async def _next(reader: asyncio.StreamReader, decoder: FrameDecoder) -> Any:
    while True:
        data = await reader.read(65536)
        if not data:
            raise RouterCallError("the router closed the connection")
        messages = decoder.feed(data)
        if messages:
            return messages[0]
