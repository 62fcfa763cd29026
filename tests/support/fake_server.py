"""An in-process router stand-in that speaks the real protocol, for client tests.

`async with FakeRouter(handler) as router:` listens on 127.0.0.1 (a free port), answers Hello
itself (checking the token), records every other message and hands it to `handler(conn, msg)`,
which replies with `conn.send(...)` now or later, drops the connection, or does nothing. Tests
wait on `await router.wait_for(predicate)` instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from protocol import (
    Admin,
    AdminReply,
    Batch,
    Begin,
    Commit,
    Doc,
    DocReply,
    Encoder,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Query,
    QueryKind,
    Rejected,
    Reply,
    Rollback,
    Rows,
    Status,
    TxStarted,
    choose_version,
)

__all__ = ["FakeConnection", "FakeRouter", "Handler", "default_handler"]

Handler = Callable[["FakeConnection", Message], Awaitable[None] | None]


class FakeConnection(asyncio.Protocol):
    def __init__(self, router: FakeRouter) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.encoder = Encoder()
        self.reads = 0  # data_received calls: shows whether the client coalesced its writes
        self.closed = False
        self.received: list[Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.router._connections.append(self)
        self.router._notify()

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            self.send(Error(0, exc.code, exc.code.name, str(exc)))
            self.drop()
            return
        for message in messages:
            if isinstance(message, Rejected):  # refused alone, as the router answers it
                self.send(Error(message.id, message.code, message.code.name, message.message))
            else:
                self.router._on_message(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.router._notify()

    def send(self, *replies: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.encoder.encode_many(replies))

    def drop(self) -> None:
        """Abort the TCP connection, as a crashed router would."""
        if self.transport is not None:
            self.transport.abort()


def default_handler(conn: FakeConnection, msg: Message) -> None:
    """Echo-style answers: Rows [[sql, params]] for fetch, Status for the rest."""
    node = conn.router.node
    if isinstance(msg, Ping):
        conn.send(Pong(msg.id))
    elif isinstance(msg, Query) and msg.kind is QueryKind.FETCH:
        conn.send(
            Rows(msg.id, ["sql", "params", "node"], [[msg.sql, msg.params, node]], "SELECT 1")
        )
    elif isinstance(msg, Query):
        conn.send(Status(msg.id, "EXECUTE", 0))
    elif isinstance(msg, Batch):
        conn.send(Status(msg.id, "INSERT 0 1", len(msg.statements)))
    elif isinstance(msg, Begin):
        conn.send(TxStarted(msg.id, 1000 + msg.id))
    elif isinstance(msg, Commit):
        conn.send(Status(msg.id, "COMMIT"))
    elif isinstance(msg, Rollback):
        conn.send(Status(msg.id, "ROLLBACK"))
    elif isinstance(msg, Doc):
        conn.send(DocReply(msg.id, {"op": msg.op, "args": msg.args}))
    elif isinstance(msg, Admin):
        conn.send(AdminReply(msg.id, {"node": node, "op": msg.op}))


class FakeRouter:
    def __init__(
        self,
        handler: Handler = default_handler,
        *,
        node: str = "fake-router",
        token: str | None = "secret",
        versions: tuple[int, ...] = (1,),
    ) -> None:
        self.handler = handler
        self.node = node
        self.token = token
        self.versions = versions
        self.received: list[Message] = []
        self.hellos: list[Hello] = []
        self._connections: list[FakeConnection] = []
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    async def __aenter__(self) -> FakeRouter:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FakeConnection(self), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()
        for task in list(self._tasks):
            task.cancel()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def dsn(self) -> str:
        return f"georoute://{self.address}"

    @property
    def connections(self) -> list[FakeConnection]:
        return list(self._connections)

    @property
    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self._connections if not c.closed]

    def requests(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]

    async def kill(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self._connections:
            conn.drop()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until predicate() holds (re-checked on every message and connection event)."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(predicate)

    # -- internals

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._spawn(notify())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_message(self, conn: FakeConnection, msg: Message) -> None:
        if isinstance(msg, Hello):
            self.hellos.append(msg)
            if self.token is not None and msg.token != self.token:
                code = ErrorCode.AUTH_FAILED
                conn.send(Error(msg.id, code, code.name, "bad token"))
                conn.drop()
            else:
                try:
                    version = choose_version(msg.versions, self.versions)
                except ProtocolError as exc:
                    conn.send(Error(msg.id, exc.code, exc.code.name, str(exc)))
                    conn.drop()
                else:
                    conn.send(HelloOk(msg.id, version, self.node, {"fake": True}))
            self._notify()
            return
        self.received.append(msg)
        conn.received.append(msg)
        result = self.handler(conn, msg)
        if inspect.isawaitable(result):
            self._spawn(result)
        self._notify()
