"""Fault-injecting proxies for tests, on 127.0.0.1 only: TCP (latency, stall, reset,
half-open) and UDP (drop, delay, duplicate). asyncpg's `_testbase/fuzzer.py`
(TCPFuzzingProxy) is the model: a listener in front of one real server, every connection
relayed through it, faults switched on and off while traffic flows.

    with TcpFaultProxy(("127.0.0.1", pg_port)).running_in_thread() as proxy:
        ... point the router's node at proxy.port ...
        proxy.stall()            # bytes are held both ways until resume()
        proxy.reset()            # every open connection gets a TCP RST, both sides

Each proxy runs on an asyncio loop: the test's (`async with proxy:`) or a thread of its own
(`running_in_thread()`, for a peer started by blocking code such as a router process that
connects through the proxy while the test waits for it). Every control method may be called
from any thread. Bounded: the proxy listens on a free port of 127.0.0.1 (the kernel picks
it), refuses targets off loopback, holds at most `max_connections` connections and a
bounded backlog of bytes or datagrams, stops by itself `lifetime` seconds after it started,
and closes every socket it opened when it stops (`open_sockets()` lists any left: none).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, cast

__all__ = ["LOOPBACK", "TcpFaultProxy", "TcpStats", "UdpFaultProxy", "UdpStats"]

log = logging.getLogger("tests.faultproxy")

LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = (LOOPBACK, "localhost")
_CHUNK = 65536
_QUEUE_CHUNKS = 256  # per direction and connection: at most 16 MiB held, then backpressure
_CONTROL_SECONDS = 10.0  # how long a control call from another thread waits for the loop

T = TypeVar("T")


def _loopback(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    if host not in _LOOPBACK_NAMES:
        raise ValueError(f"the fault proxy only reaches 127.0.0.1, not {host!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return LOOPBACK, port


class _Proxy:
    """What both proxies share: the loop they run on, their lifetime, their sockets."""

    kind = "proxy"

    def __init__(self, target: tuple[str, int], lifetime: float) -> None:
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.target = _loopback(target)
        self.lifetime = lifetime
        self.port = 0  # the listening port, once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._stop_begun = False
        self._expiry: asyncio.TimerHandle | None = None
        self._sockets: list[Any] = []  # every socket opened (asyncio's TransportSocket)
        self.expired = False  # stopped by its lifetime rather than by the test

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._loop is not None:
            raise RuntimeError(f"{self.kind} already started")
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        await self._open()
        self._expiry = self._loop.call_later(self.lifetime, self._expire)
        log.debug("%s on %s:%d -> %s:%d for at most %.1fs", self.kind, LOOPBACK, self.port,
                  *self.target, self.lifetime)
        return self

    async def stop(self) -> None:
        """Close everything; returns when every socket is closed. Idempotent."""
        if self._loop is None or self._stopped is None:
            return
        if asyncio.get_running_loop() is not self._loop:
            await asyncio.wrap_future(self._submit(self.stop))
            return
        if not self._stop_begun:
            self._stop_begun = True
            if self._expiry is not None:
                self._expiry.cancel()
            try:
                await self._close()
            finally:
                self._stopped.set()
        await self._stopped.wait()

    @property
    def stopped(self) -> bool:
        return self._stopped is not None and self._stopped.is_set()

    async def wait_stopped(self) -> None:
        assert self._stopped is not None, "not started"
        await self._stopped.wait()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _expire(self) -> None:
        log.warning("%s on port %d stops: its lifetime of %.1fs is over", self.kind, self.port,
                    self.lifetime)
        self.expired = True
        assert self._loop is not None
        task = self._loop.create_task(self.stop())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[Self]:
        """Run on an event loop of its own, in a thread, for as long as the block lasts (or
        its lifetime). The thread ends when the proxy stops."""
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            await self.wait_stopped()

        thread = threading.Thread(target=lambda: asyncio.run(main()), name=self.kind,
                                  daemon=True)
        thread.start()
        if not started.wait(_CONTROL_SECONDS):
            raise RuntimeError(f"{self.kind} did not start within {_CONTROL_SECONDS}s")
        if failure:
            thread.join(_CONTROL_SECONDS)
            raise failure[0]
        try:
            yield self
        finally:
            if not self.stopped:
                with contextlib.suppress(RuntimeError):  # stopped by its lifetime meanwhile
                    self._submit(self.stop).result(_CONTROL_SECONDS)
            thread.join(_CONTROL_SECONDS)
            if thread.is_alive():
                raise RuntimeError(f"{self.kind} thread did not end")

    # ---- calls from any thread ---------------------------------------------------------------

    def _submit(self, coro_fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError(f"{self.kind} is not running")
        return asyncio.run_coroutine_threadsafe(coro_fn(), loop)

    def _control(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the proxy's loop: at once when called there, else from another thread,
        waiting for it (bounded)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.kind} is not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or loop.is_closed():
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(_CONTROL_SECONDS)

    def open_sockets(self) -> list[Any]:
        """The sockets this proxy opened that are not closed yet (none once it stopped)."""
        return self._control(lambda: [s for s in self._sockets if s.fileno() != -1])

    def _track(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            if len(self._sockets) >= 256:  # forget the closed ones: the list stays bounded
                self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)

    # ---- what each kind does -------------------------------------------------------------------

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


# ---- TCP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpStats:
    accepted: int  # connections the proxy took (refused ones included)
    refused: int  # reset at once: over max_connections, refusing, or the target was down
    open: int  # relayed connections open now
    resets: int  # connections reset by reset()
    to_server: int  # bytes delivered from clients to the target
    to_client: int  # bytes delivered from the target to clients
    held: int  # bytes read but not delivered yet (latency or a stall)
    discarded: int  # bytes read and thrown away (half-open connections)


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the target."""

    number: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    half_open: bool = False
    held: int = 0  # bytes read from either side and not delivered yet


class TcpFaultProxy(_Proxy):
    kind = "tcp fault proxy"

    def __init__(self, target: tuple[str, int], *, lifetime: float = 60.0,
                 max_connections: int = 64, connect_timeout: float = 5.0) -> None:
        super().__init__(target, lifetime)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._links: dict[int, _Link] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._latency = 0.0
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._closing = False
        self._trigger: tuple[bytes, str, bool] | None = None  # fault_on(): marker, fault, deliver
        self._fired = False
        self._counts = dict.fromkeys(
            ("accepted", "refused", "resets", "to_server", "to_client", "discarded"), 0)

    # ---- faults ------------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Deliver each chunk `seconds` after it was read, each way, in order."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._control(lambda: setattr(self, "_latency", seconds))

    def stall(self) -> None:
        """Hold every byte, both ways, on every connection (new ones too) until resume():
        a peer that stopped answering but whose connection is still up."""
        self._control(lambda: self._flow().clear())

    def resume(self) -> None:
        """Deliver what a stall held, in order, and flow again."""
        self._control(lambda: self._flow().set())

    def reset(self) -> int:
        """Reset (TCP RST) every open connection on both sides; new connections are relayed as
        before. Returns how many were reset."""
        return self._control(self._reset_all)

    def half_open(self) -> int:
        """Every open connection goes half-open: the target's side is reset, the client's stays
        open and silent: what it sends is accepted (and so acknowledged by this host's TCP,
        which TCP_USER_TIMEOUT and keepalives cannot tell from a live peer) and discarded,
        and nothing comes back, not even a FIN. A server process that hangs, or a middlebox
        that lost the connection's state, looks like this. Returns how many."""
        return self._control(self._half_open_all)

    def fault_on(self, marker: bytes, fault: str, *, deliver: bool) -> None:
        """Arm a one-shot fault for the first chunk a client sends that contains `marker` (a
        statement's text, say): `fault` is "reset" (every connection, as reset()) or "stall"
        (as stall()), applied before that chunk reaches the target (`deliver` False: it never
        does, or after a resume()) or right after it did (True: the target acts on it, and
        its answer is lost or held). `triggered()` says whether it fired."""
        if fault not in ("reset", "stall"):
            raise ValueError(f"unknown fault {fault!r} (reset, stall)")
        self._control(lambda: setattr(self, "_trigger", (marker, fault, deliver)))

    def triggered(self) -> bool:
        return self._control(lambda: self._fired)

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections at once (a server that is down), or relay them again."""
        self._control(lambda: setattr(self, "_refusing", refusing))

    def stats(self) -> TcpStats:
        def now() -> TcpStats:
            held = sum(link.held for link in self._links.values())
            return TcpStats(open=len(self._links), held=held, **self._counts)

        return self._control(now)

    # ---- inside ------------------------------------------------------------------------------

    def _flow(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    async def _open(self) -> None:
        self._flow()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0,
                                                  backlog=self.max_connections)
        for sock in self._server.sockets:
            self._sockets.append(sock)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        self._closing = True
        self._flow().set()  # nothing waits on a stall any more
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            self._abort(link.client)
            self._abort(link.server)
            for task in link.tasks:
                task.cancel()
        # Each handler then ends by itself (asyncio logs an error for a cancelled one); one
        # still connecting to the target within connect_timeout. A connection accepted just
        # before the listener closed reaches its handler a few turns of the loop later, sees
        # `_closing` and resets it.
        for _ in range(8):
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        """Close with a TCP RST (SO_LINGER 0), at once, dropping what is unsent."""
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.fileno() != -1:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(cast("asyncio.Task[None]", task))
        self._track(writer.transport)
        self._counts["accepted"] += 1
        try:
            if self._refusing or len(self._links) >= self.max_connections or self._closing:
                self._counts["refused"] += 1
                self._abort(writer)
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(
                        *self.target, local_addr=(LOOPBACK, 0))
            except (OSError, TimeoutError) as exc:
                log.debug("%s: target %s:%d unreachable: %s", self.kind, *self.target, exc)
                self._counts["refused"] += 1
                self._abort(writer)
                return
            self._track(up_writer.transport)
            link = _Link(next(self._numbers), writer, up_writer)
            self._links[link.number] = link
            clean = False
            try:
                if not self._closing:
                    clean = await self._relay(link, reader, up_reader)
            except Exception as exc:  # a handler must not raise: asyncio would log it
                log.debug("%s: link %d failed: %r", self.kind, link.number, exc)
            finally:
                self._links.pop(link.number, None)
                for w in (writer, up_writer):
                    if clean:
                        w.close()  # both ways ended with an EOF: end with a FIN too
                    else:
                        self._abort(w)  # a reset on one side is a reset on the other
                for w in (writer, up_writer):
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
        finally:
            self._handlers.discard(cast("asyncio.Task[None]", task))
            if not writer.transport.is_closing():
                self._abort(writer)
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, link: _Link, client: asyncio.StreamReader,
                     server: asyncio.StreamReader) -> bool:
        """Relay until both ways have ended (True) or one side failed (False)."""
        up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        down: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        link.tasks = [
            asyncio.create_task(self._read(link, client, up)),
            asyncio.create_task(self._write(link, up, link.server, "to_server")),
            asyncio.create_task(self._read(link, server, down)),
            asyncio.create_task(self._write(link, down, link.client, "to_client")),
        ]
        try:
            # Either side's reset ends the link; an EOF is passed on and the other way goes on.
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_EXCEPTION)
            return all(t.done() and not t.cancelled() and t.exception() is None
                       for t in link.tasks)
        finally:
            for t in link.tasks:
                t.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)

    async def _read(self, link: _Link, src: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await src.read(_CHUNK)
            if not data:
                await queue.put(None)
                return
            if link.half_open:
                self._counts["discarded"] += len(data)
                continue
            link.held += len(data)
            await queue.put((loop.time() + self._latency, data))

    async def _write(self, link: _Link, queue: asyncio.Queue[tuple[float, bytes] | None],
                     dst: asyncio.StreamWriter, counter: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                # Half-open: the client's side hears nothing, not even the end.
                if not link.half_open and not dst.transport.is_closing():
                    dst.write_eof()
                return
            due, data = item
            if due > loop.time():
                await asyncio.sleep(due - loop.time())  # the latency being injected
            await self._flow().wait()
            link.held -= len(data)
            if link.half_open:
                self._counts["discarded"] += len(data)
                continue
            if dst.transport.is_closing():
                raise ConnectionResetError("the other side is gone")
            trigger = self._trigger
            fire = (trigger is not None and counter == "to_server" and trigger[0] in data)
            if fire and trigger is not None and not trigger[2]:
                self._fire(trigger[1])  # before it reaches the target
                if trigger[1] == "reset":
                    raise ConnectionResetError("reset by fault_on()")
                await self._flow().wait()  # held until resume()
            dst.write(data)
            await dst.drain()
            self._counts[counter] += len(data)
            if fire and trigger is not None and trigger[2]:
                self._fire(trigger[1])  # it reached the target; the answer is lost or held

    def _fire(self, fault: str) -> None:
        self._trigger = None
        self._fired = True
        if fault == "stall":
            self._flow().clear()
        else:
            self._reset_all()

    def _reset_all(self) -> int:
        links = list(self._links.values())
        for link in links:
            self._abort(link.client)
            self._abort(link.server)
            for task in link.tasks:  # what it held (a stall, a latency) goes with it
                task.cancel()
        self._counts["resets"] += len(links)
        return len(links)

    def _half_open_all(self) -> int:
        links = [link for link in self._links.values() if not link.half_open]
        for link in links:
            link.half_open = True
            self._abort(link.server)
        return len(links)


# ---- UDP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UdpStats:
    received: int  # datagrams from clients
    forwarded: int  # datagrams sent on to the target (duplicates included)
    dropped: int  # datagrams thrown away (the drop rate, or too many delayed at once)
    duplicated: int  # datagrams sent twice
    delayed: int  # datagrams waiting for their delay now
    replies: int  # datagrams from the target relayed to the client that sent last


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Any], None]) -> None:
        self.received = received
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp fault proxy: %s", exc)  # e.g. ECONNREFUSED: nobody listens there


class UdpFaultProxy(_Proxy):
    """Datagrams sent to `address` go on to `target`, each one dropped with probability
    `drop`, sent twice with probability `duplicate`, and delayed by `delay` seconds plus up to
    `jitter` more (so a jitter reorders them). The choices come from a Random seeded with
    `seed`: a run's pattern of losses is the same every time for the same traffic."""

    kind = "udp fault proxy"

    def __init__(self, target: tuple[str, int], *, lifetime: float = 60.0, seed: int = 0,
                 max_delayed: int = 10_000) -> None:
        super().__init__(target, lifetime)
        self.max_delayed = max_delayed
        self._random = random.Random(seed)
        self._drop = self._duplicate = self._delay = self._jitter = 0.0
        self._listen: asyncio.DatagramTransport | None = None
        self._upstream: asyncio.DatagramTransport | None = None
        self._endpoints: list[_Endpoint] = []
        self._client: Any = None  # the address that sent last, for replies
        self._delayed: dict[int, asyncio.TimerHandle] = {}
        self._keys = itertools.count()
        self._counts = dict.fromkeys(
            ("received", "forwarded", "dropped", "duplicated", "replies"), 0)

    def set_faults(self, *, drop: float | None = None, duplicate: float | None = None,
                   delay: float | None = None, jitter: float | None = None) -> None:
        """Change the faults given; the others stay as they are."""
        for name, value in (("drop", drop), ("duplicate", duplicate)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, got {value}")
        for name, value in (("delay", delay), ("jitter", jitter)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")

        def apply() -> None:
            self._drop = self._drop if drop is None else drop
            self._duplicate = self._duplicate if duplicate is None else duplicate
            self._delay = self._delay if delay is None else delay
            self._jitter = self._jitter if jitter is None else jitter

        self._control(apply)

    def stats(self) -> UdpStats:
        return self._control(lambda: UdpStats(delayed=len(self._delayed), **self._counts))

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        listen, endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_client), local_addr=(LOOPBACK, 0))
        self._listen = listen
        self._endpoints.append(endpoint)
        self._track(listen)
        upstream, endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_target), local_addr=(LOOPBACK, 0),
            remote_addr=self.target)
        self._upstream = upstream
        self._endpoints.append(endpoint)
        self._track(upstream)
        self.port = int(listen.get_extra_info("sockname")[1])

    async def _close(self) -> None:
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()
        for transport in (self._listen, self._upstream):
            if transport is not None:
                transport.close()
        await asyncio.gather(*(e.closed for e in self._endpoints))  # the sockets are closed

    def _from_client(self, data: bytes, addr: Any) -> None:
        self._counts["received"] += 1
        self._client = addr
        # Two draws per datagram whatever the settings: the pattern depends on the seed only.
        lost, twice = self._random.random() < self._drop, self._random.random() < self._duplicate
        if lost:
            self._counts["dropped"] += 1
            return
        if twice:
            self._counts["duplicated"] += 1
        for _ in range(2 if twice else 1):
            wait = self._delay + (self._random.uniform(0, self._jitter) if self._jitter else 0)
            if wait <= 0:
                self._send(data)
            elif len(self._delayed) >= self.max_delayed:
                self._counts["dropped"] += 1
            else:
                assert self._loop is not None
                key = next(self._keys)
                self._delayed[key] = self._loop.call_later(wait, self._send_delayed, key, data)

    def _send_delayed(self, key: int, data: bytes) -> None:
        del self._delayed[key]
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self._upstream is None or self._upstream.is_closing():
            return
        self._upstream.sendto(data)
        self._counts["forwarded"] += 1

    def _from_target(self, data: bytes, addr: Any) -> None:
        if self._client is None or self._listen is None or self._listen.is_closing():
            return
        self._listen.sendto(data, self._client)
        self._counts["replies"] += 1
