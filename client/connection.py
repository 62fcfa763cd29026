"""One TCP connection to a router node: an asyncio.Protocol that feeds a FrameDecoder, matches
replies to in-flight requests by id, and coalesces the frames written in one event-loop turn
into a single transport.write (loopback syscalls dominate the cost of small requests)."""

# A per-request `timeout=` (not an asyncio.timeout around the call) because it is also sent to
# the router as timeout_ms and bounds all retries together.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Callable
from typing import Any, cast

from client.errors import (
    ConnectionLostError,
    GeorouteError,
    ProtocolViolationError,
    RequestTimeoutError,
    error_from_reply,
)
from protocol import (
    EncodeError,
    Encoder,
    Error,
    FrameDecoder,
    Hello,
    HelloOk,
    Message,
    ProtocolError,
    Rejected,
    Reply,
    Request,
)
from protocol.sockets import keep_alive

__all__ = ["Connection", "open_connection"]


class Connection(asyncio.Protocol):
    """Requests are pipelined: each gets a fresh id and a Future; replies may come in any order.
    A request whose caller gave up (timeout, cancellation) leaves no trace, so its late reply
    is dropped."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_frame_bytes: int,
        on_lost: Callable[[Connection], None] | None = None,
    ) -> None:
        self.address = address
        self.node: str | None = None  # the router node's name, from HelloOk
        self.version: int | None = None
        self.server_info: dict[str, Any] = {}
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame_bytes)
        self._encoder = Encoder(max_frame_bytes)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._next_id = 1
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._close_error: GeorouteError | None = None
        self._closed_event = asyncio.Event()
        self._on_lost = on_lost

    # -- asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._dispatch(getattr(exc, "messages", []))
            self._fail(ProtocolViolationError(f"bad data from router: {exc}", code=exc.code))
            return
        self._dispatch(messages)

    def _dispatch(self, messages: list[Message | Rejected]) -> None:
        pending = self._pending
        for message in messages:
            if message.id == 0 and isinstance(message, Error):
                # A connection-level error (e.g. the router is shutting down): fail everything.
                self._fail(error_from_reply(message))
                return
            future = pending.pop(message.id, None)
            if future is None or future.done():
                continue
            if isinstance(message, Rejected):  # a reply of a type this client does not know
                future.set_exception(ProtocolViolationError(
                    f"bad reply from router: {message.message}", code=message.code))
                continue
            future.set_result(message)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._mark_closed(ConnectionLostError(f"connection to {self.label} lost{reason}"))

    # -- public surface

    @property
    def label(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def request(self, message: Request, timeout: float | None = None) -> Reply:
        """Send `message` (its id is assigned here) and wait for its reply, at most `timeout`
        seconds (then RequestTimeoutError). The wait is a timer on the reply's future, not an
        asyncio.timeout: that costs a task-cancelling context on every request."""
        future = self.send(message)
        request_id = message.id
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, _expire, future, timeout)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(request_id, None)

    def send(self, message: Request) -> asyncio.Future[Reply]:
        """Send `message` (its id is assigned here); the Future gets its reply. The caller must
        `forget(message.id)` once it stops waiting, whatever the outcome (as `request` does)."""
        if self._closed:
            raise self._close_error or ConnectionLostError(f"connection to {self.label} closed")
        request_id = self._next_id
        self._next_id = request_id + 1
        message.id = request_id
        try:
            frame = self._encoder.encode(message)
        except EncodeError as exc:
            raise ProtocolViolationError(str(exc), code=exc.code) from exc
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[request_id] = future
        self._outgoing.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def forget(self, request_id: int) -> None:
        """Stop tracking a request: its reply, if it still comes, is dropped."""
        self._pending.pop(request_id, None)

    async def handshake(
        self, versions: list[int], client_name: str, token: str | None, timeout: float | None
    ) -> HelloOk:
        reply = await self.request(Hello(0, versions, client_name, token), timeout)
        if isinstance(reply, Error):
            raise error_from_reply(reply)
        if not isinstance(reply, HelloOk):
            raise ProtocolViolationError(f"expected HelloOk, got {type(reply).__name__}")
        self.node = reply.node
        self.version = reply.version
        self.server_info = reply.server_info
        return reply

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._flush()
            self._transport.close()
        self._mark_closed(ConnectionLostError(f"connection to {self.label} closed"))

    # -- internals

    def _flush(self) -> None:
        self._flush_scheduled = False
        frames = self._outgoing
        if not frames or self._transport is None or self._closed:
            frames.clear()
            return
        self._outgoing = []
        self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _fail(self, error: GeorouteError) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._mark_closed(error)

    def _mark_closed(self, error: GeorouteError) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_error = error
        self._outgoing.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        self._closed_event.set()
        if self._on_lost is not None:
            self._on_lost(self)


async def open_connection(
    address: tuple[str, int],
    *,
    max_frame_bytes: int,
    timeout: float | None,
    on_lost: Callable[[Connection], None] | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> Connection:
    """Connect to a router node (no handshake yet): over TCP (through TLS with `ssl`), or,
    when the host is a directory (it starts with "/"), to the router's Unix socket
    <host>/.s.georoute.<port> in it."""
    loop = asyncio.get_running_loop()
    host, port = address

    def factory() -> Connection:
        return Connection(address, max_frame_bytes=max_frame_bytes, on_lost=on_lost)

    async with asyncio.timeout(timeout):
        if host.startswith("/"):
            _, protocol = await loop.create_unix_connection(
                factory, f"{host.rstrip('/')}/.s.georoute.{port}"
            )
        else:
            transport, protocol = await loop.create_connection(
                factory, host, port, ssl=ssl, server_hostname=host if ssl is not None else None
            )
            keep_alive(transport)  # a router that vanished is noticed (protocol/sockets.py)
    return protocol


def _expire(future: asyncio.Future[Reply], timeout: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeoutError(f"no reply within {timeout:.3f}s"))
