"""The edge every request crosses first (pure ASGI): it gives the request an id
(X-Request-ID, taken from the client when well-formed, else made; echoed in the response and
sent with every request to the router, whose log lines name it), refuses a client IP over its
rate and a body over the limit (413, by Content-Length before reading, or while reading), turns
any unexpected exception into a 500 problem with no stack trace, and writes one access-log
line."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import client as georoute_client
from api.errors import ApiError, PayloadTooLarge, RateLimited
from api.http.problems import MEDIA_TYPE, problem_body
from api.http.ratelimit import TokenBuckets

__all__ = ["ACCESS_LOG", "Edge"]

ACCESS_LOG = logging.getLogger("api.access")
log = logging.getLogger("api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A made id: 32 hex digits, this process's random half then a count (unique without a
# uuid4's system call for random bytes on every request).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNT = itertools.count(int.from_bytes(secrets.token_bytes(4)))


def _made_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNT) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


class _BodyTooLarge(PayloadTooLarge):
    pass


class Edge:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int,
                 ip_buckets: TokenBuckets | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.ip_buckets = ip_buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        inbound = length = None
        for name, value in scope["headers"]:  # the two headers read here, not a dict of all
            if name == b"x-request-id":
                inbound = value.decode("latin-1")
            elif name == b"content-length":
                length = value.decode("latin-1")
        request_id = (inbound if inbound is not None and _REQUEST_ID.match(inbound)
                      else _made_id())
        scope["georoute.request_id"] = request_id
        status = 0
        bytes_in = 0
        max_body_bytes = self.max_body_bytes

        id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new list: the message's may be a Response's own headers.
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        async def limited_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
                if bytes_in > max_body_bytes:
                    raise _BodyTooLarge(f"the body is over {max_body_bytes} bytes")
            return message

        client = scope.get("client")
        client_ip = client[0] if client else "-"
        try:
            refusal = self._refusal(length, client_ip)
            if refusal is not None:
                await _send_problem(send_with_id, refusal, scope, request_id)
            else:
                # Every request the client sends for it carries its id to the router's logs.
                with georoute_client.request_id(request_id):
                    await self.app(scope, limited_receive, send_with_id)
        except ApiError as exc:  # a body over the limit found while reading it
            if status == 0:
                await _send_problem(send_with_id, exc, scope, request_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope["method"],
                          scope["path"], request_id)
            if status == 0:
                await _send_problem(send_with_id, ApiError("the request could not be completed"),
                                    scope, request_id)
        finally:
            # The record (and its dict) only when the logger would write it.
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                ACCESS_LOG.info("%s %s %s", scope["method"], scope["path"], status, extra={
                    "access": {
                        "request_id": request_id, "method": scope["method"],
                        "path": scope["path"], "status": status, "client": client_ip,
                        "user": scope.get("georoute.user"),
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                    }})

    def _refusal(self, length: str | None, client_ip: str) -> ApiError | None:
        if self.ip_buckets is not None:
            wait = self.ip_buckets.take(f"ip:{client_ip}")
            if wait:
                return RateLimited(TokenBuckets.retry_after(wait),
                                   "this client's request rate is over the limit")
        if length is not None:
            if not length.isdigit():
                return PayloadTooLarge("Content-Length is not a number")
            if int(length) > self.max_body_bytes:
                return PayloadTooLarge(f"the body is over {self.max_body_bytes} bytes")
        return None


async def _send_problem(send: Send, exc: ApiError, scope: Scope, request_id: str) -> None:
    body = json.dumps(problem_body(exc.status, exc.slug, exc.title, exc.detail,
                                   instance=scope["path"], request_id=request_id,
                                   extra=exc.extra)).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.status == 413:
        headers.append((b"connection", b"close"))
    start: dict[str, Any] = {"type": "http.response.start", "status": exc.status,
                             "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
