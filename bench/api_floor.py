"""`python -m bench.api_load --front floor`: the least an HTTP front could do for the API
workload's three operations, to measure what the API's own HTTP stack (uvicorn, Starlette,
api/http) costs on top of it. A bare uvloop protocol reads each request's line and headers,
calls the same domain methods `georoute api` calls (api/domain: the same statements, the same
client session to the router, the same pydantic models and JSON), and writes the answer. It
does no validation, routing, rate limiting, logging or error handling, and knows only these
three requests: a measuring stick, never a server.

`python -m bench.api_floor --config PATH --port N`, with GEOROUTE_TOKEN and
GEOROUTE_JWT_SECRET in the environment, as bench/api_load.py starts `georoute api`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from typing import Any, cast

import uvloop

import client
from api.domain import Domain
from api.serve import router_dsn, tune_gc
from api.settings import Settings
from router.config import load_config

__all__ = ["answer"]


async def answer(domain: Domain, method: bytes, path: str, token: str | None,
                 body: bytes) -> bytes:
    """The JSON answer to one of the workload's requests (bench/api_load.py, api_requests)."""
    parts = path.split("/")  # "", "api", "v1", resource, id, ...
    result: Any
    if method == b"GET" and parts[3] == "courses":
        result = await domain.courses.get(uuid.UUID(parts[4]))
    elif method == b"GET":
        assert token is not None
        result = await domain.enrollments.mine(by=domain.auth.authenticate(token))
    else:
        assert token is not None
        result = await domain.enrollments.complete_lesson(
            uuid.UUID(parts[4]), uuid.UUID(parts[6]), json.loads(body)["seconds_spent"],
            by=domain.auth.authenticate(token))
    return bytes(result.__pydantic_serializer__.to_json(result, by_alias=True))


class _Front(asyncio.Protocol):
    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is a Transport in all but its base classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            request_line, *headers = self.buffer[:end].split(b"\r\n")
            method, path, _ = request_line.split(b" ")
            token, length = None, 0
            for line in headers:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"authorization":
                    token = value.strip().removeprefix(b"Bearer ").decode()
                elif name == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            asyncio.get_running_loop().create_task(
                self._respond(method, path.decode(), token, body))

    async def _respond(self, method: bytes, path: str, token: str | None, body: bytes) -> None:
        out = await answer(self.domain, method, path, token, body)
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(out), out))


async def _serve(config_path: str, port: int) -> None:
    config = load_config(config_path)
    db = await client.connect(router_dsn(config), token=os.environ["GEOROUTE_TOKEN"],
                              client_name="georoute-api-floor", pool_size=4)
    async with db:
        domain = Domain(db, Settings(jwt_secret=os.environ["GEOROUTE_JWT_SECRET"]).validate())
        server = await asyncio.get_running_loop().create_server(
            lambda: _Front(domain), "127.0.0.1", port)
        tune_gc()  # as georoute api does
        print(f"api floor ready on http://127.0.0.1:{port}/api/v1", flush=True)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.api_floor", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    uvloop.run(_serve(arguments.config, arguments.port))
