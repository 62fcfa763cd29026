"""The edge every request crosses first (pure ASGI): it gives the request an id
(X-Request-ID, taken from the client when well-formed, else made; echoed in the response and
sent with every request to the router, whose log lines name it), refuses a client IP over its
rate and a body over the limit (413, by Content-Length before reading, or while reading), turns
any unexpected exception into a 500 problem with no stack trace, and writes one access-log
line."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from starlette.types import Message, Receive, Scope, Send

import client as georoute_client
from api.errors import ApiError, PayloadTooLarge, RateLimited
from api.http.dispatch import Dispatch
from api.http.problems import problem_parts
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
    """In front of the operations' dispatch: an operation it finds is called directly (it
    sends its own id header and leaves its status in the scope); anything else goes on to the
    dispatch's app (Starlette) with a `send` that adds the id header."""

    def __init__(self, dispatch: Dispatch, *, max_body_bytes: int,
                 ip_buckets: TokenBuckets | None) -> None:
        self.dispatch = dispatch
        self.max_body_bytes = max_body_bytes
        self.ip_buckets = ip_buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.dispatch.app(scope, receive, send)
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
        client = scope.get("client")
        client_ip = client[0] if client else "-"
        try:
            refusal = self._refusal(length, client_ip)
            if refusal is not None:
                await _send_problem(send, refusal, scope, request_id)
                return
            if length is None:  # no declared length (chunked): counted while read
                receive = _limited(receive, self.max_body_bytes)
            # (A declared length was checked above, and the parser reads no more than it.)
            found = (None if scope.get("root_path")
                     else self.dispatch.match(scope["method"], scope["path"]))
            # Every request the client sends for it carries its id to the router's logs.
            with georoute_client.request_id(request_id):
                if found is not None:
                    await found[0](scope, receive, send, found[1])
                else:
                    await self.dispatch.app(scope, receive, _with_id(send, scope, request_id))
        except ApiError as exc:  # a body over the limit found while reading it
            if "georoute.status" not in scope:
                await _send_problem(send, exc, scope, request_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope["method"],
                          scope["path"], request_id)
            if "georoute.status" not in scope:
                await _send_problem(send, ApiError("the request could not be completed"),
                                    scope, request_id)
        finally:
            # The record (and its dict) only when the logger would write it.
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                status = scope.get("georoute.status", 0)
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


def _with_id(send: Send, scope: Scope, request_id: str) -> Send:
    """`send` adding the request's id header to the response, whose status it leaves in the
    scope (`georoute.status`)."""
    id_header = (b"x-request-id", request_id.encode("latin-1"))

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            scope["georoute.status"] = message["status"]
            # A new list: the message's may be a Response's own headers.
            message["headers"] = [*message.get("headers", ()), id_header]
        await send(message)

    return send_with_id


def _limited(receive: Receive, max_body_bytes: int) -> Receive:
    """`receive` refusing (413) a body once more than `max_body_bytes` of it is read."""
    bytes_in = 0

    async def limited_receive() -> Message:
        nonlocal bytes_in
        message = await receive()
        if message["type"] == "http.request":
            bytes_in += len(message.get("body", b""))
            if bytes_in > max_body_bytes:
                raise _BodyTooLarge(f"the body is over {max_body_bytes} bytes")
        return message

    return limited_receive


async def _send_problem(send: Send, exc: ApiError, scope: Scope, request_id: str) -> None:
    body, headers = problem_parts(exc, instance=scope["path"], request_id=request_id)
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    if exc.status == 413:
        headers.append((b"connection", b"close"))
    scope["georoute.status"] = exc.status
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
