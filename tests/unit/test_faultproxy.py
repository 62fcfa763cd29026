"""The test kit's fault proxies (tests/support/faultproxy.py) against small servers of the
test's own on 127.0.0.1: bytes pass unchanged, each TCP fault (latency, stall, reset,
half-open, refusal) and UDP fault (drop, delay, duplicate) does what it says, and the proxy
is bounded: loopback only, a connection limit, a lifetime after which it stops by itself,
and no socket left open once it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.faultproxy import LOOPBACK, TcpFaultProxy, UdpFaultProxy
from tests.support.wait import until

# ---- a TCP server of the test's own --------------------------------------------------------


@dataclass
class Backend:
    """Echoes what it gets and records how each connection ended."""

    received: bytearray = field(default_factory=bytearray)
    ended: list[str] = field(default_factory=list)  # "eof" or "reset", per connection
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return LOOPBACK, int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            self.ended.append("eof")
        except ConnectionResetError:
            self.ended.append("reset")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    b.server = await asyncio.start_server(b.handle, LOOPBACK, 0)
    yield b
    b.server.close()
    await b.server.wait_closed()


@pytest.fixture
async def proxy(backend: Backend) -> AsyncIterator[TcpFaultProxy]:
    async with TcpFaultProxy(backend.address, lifetime=30) as p:
        yield p
    assert p.open_sockets() == []


async def connect(proxy: TcpFaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(10):
        return await reader.readexactly(n)


def socket_fds() -> set[int]:
    """This process's open sockets (Linux /proc), to check that nothing leaks."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                out.add(int(fd))
    return out


# ---- TCP -----------------------------------------------------------------------------------


async def test_bytes_pass_unchanged_both_ways_and_an_eof_ends_it_cleanly(
    backend: Backend, proxy: TcpFaultProxy
) -> None:
    assert proxy.address[0] == LOOPBACK and proxy.port > 0
    payload = os.urandom(1 << 20)
    reader, writer = await connect(proxy)
    writer.write(payload)
    await writer.drain()
    assert await read_exactly(reader, len(payload)) == payload
    writer.write_eof()
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # the server's FIN, passed on
    writer.close()
    await until(lambda: proxy.stats().open == 0, what="the link to end")
    stats = proxy.stats()
    assert (stats.to_server, stats.to_client, stats.held) == (len(payload), len(payload), 0)
    assert backend.ended == ["eof"] and bytes(backend.received) == payload


async def test_latency_delays_each_way(proxy: TcpFaultProxy) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"warm")
    assert await read_exactly(reader, 4) == b"warm"
    proxy.set_latency(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"ping")
    assert await read_exactly(reader, 4) == b"ping"
    assert loop.time() - started >= 0.1  # 50 ms there and 50 ms back
    writer.close()


async def test_a_stall_holds_the_bytes_until_resume(backend: Backend,
                                                    proxy: TcpFaultProxy) -> None:
    reader, writer = await connect(proxy)
    proxy.stall()
    writer.write(b"held")
    await until(lambda: proxy.stats().held == 4, what="the proxy to hold the bytes")
    assert bytes(backend.received) == b""  # read by the proxy, not delivered
    proxy.resume()
    assert await read_exactly(reader, 4) == b"held"
    assert bytes(backend.received) == b"held"
    writer.close()


async def test_reset_resets_both_sides_and_new_connections_still_pass(
    backend: Backend, proxy: TcpFaultProxy
) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"a")
    assert await read_exactly(reader, 1) == b"a"
    proxy.stall()
    writer.write(b"b")
    await until(lambda: proxy.stats().held == 1, what="a byte held")
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(10):
            await reader.read(1)
    await until(lambda: backend.ended == ["reset"], what="the server to see a reset")
    writer.close()
    await until(lambda: proxy.stats().open == 0, what="the link to go")
    assert proxy.stats().held == 0  # what it held went with it
    assert bytes(backend.received) == b"a"
    proxy.resume()
    reader, writer = await connect(proxy)
    writer.write(b"again")
    assert await read_exactly(reader, 5) == b"again"
    assert proxy.stats().resets == 1
    writer.close()


async def test_a_fault_armed_on_a_marker_fires_once_before_or_after_delivering_it(
    backend: Backend, proxy: TcpFaultProxy
) -> None:
    # A reset before: the marked chunk never reaches the target; new connections pass.
    reader, writer = await connect(proxy)
    proxy.fault_on(b"COMMIT", "reset", deliver=False)
    writer.write(b"hello")
    assert await read_exactly(reader, 5) == b"hello"
    assert not proxy.triggered()
    writer.write(b"COMMIT")
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(10):
            await reader.read(1)
    assert proxy.triggered() and bytes(backend.received) == b"hello"
    writer.close()
    # A stall after: the target gets the chunk, its answer is held until resume().
    reader, writer = await connect(proxy)
    proxy.fault_on(b"COMMIT", "stall", deliver=True)
    writer.write(b"COMMIT")
    await until(lambda: bytes(backend.received).endswith(b"helloCOMMIT"),
                what="the target to get the marked chunk")
    await until(lambda: proxy.stats().held == 6, what="its answer held")
    proxy.resume()
    assert await read_exactly(reader, 6) == b"COMMIT"
    writer.write(b"COMMIT")  # fired once: passes now
    assert await read_exactly(reader, 6) == b"COMMIT"
    writer.close()
    with pytest.raises(ValueError, match="unknown fault"):
        proxy.fault_on(b"x", "explode", deliver=True)


async def test_half_open_keeps_the_client_side_open_and_silent(
    backend: Backend, proxy: TcpFaultProxy
) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"a")
    assert await read_exactly(reader, 1) == b"a"
    assert proxy.half_open() == 1
    await until(lambda: backend.ended == ["reset"], what="the server's side to be reset")
    writer.write(b"into the void")  # the client's writes still succeed
    await writer.drain()
    await until(lambda: proxy.stats().discarded == 13, what="the proxy to discard them")
    assert not reader.at_eof()
    with pytest.raises(TimeoutError):  # a bounded wait for what must not come: silence
        async with asyncio.timeout(0.1):
            await reader.read(1)
    assert bytes(backend.received) == b"a"
    writer.close()
    await until(lambda: proxy.stats().open == 0, what="the link to end with the client")


async def test_refusal_the_connection_limit_and_a_target_that_is_down(
    backend: Backend,
) -> None:
    async with TcpFaultProxy(backend.address, max_connections=2) as proxy:
        kept = [await connect(proxy) for _ in range(2)]
        for reader, writer in kept:
            writer.write(b"k")
            assert await read_exactly(reader, 1) == b"k"
        reader, writer = await connect(proxy)  # the third: over the limit
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(10):
                await reader.read(1)
        writer.close()
        for _, w in kept:
            w.close()
        await until(lambda: proxy.stats().open == 0, what="the kept links to end")
        proxy.refuse()
        reader, writer = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(10):
                await reader.read(1)
        writer.close()
        assert proxy.stats().refused == 2 and backend.connections == 2
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind((LOOPBACK, 0))
        async with TcpFaultProxy(probe.getsockname()) as proxy:
            reader, writer = await connect(proxy)
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(10):
                    await reader.read(1)
            writer.close()
            assert proxy.stats().refused == 1


async def test_it_stops_by_itself_and_closes_every_socket(backend: Backend) -> None:
    before = socket_fds()
    proxy = TcpFaultProxy(backend.address, lifetime=0.3)
    await proxy.start()
    reader, writer = await connect(proxy)
    writer.write(b"x")
    assert await read_exactly(reader, 1) == b"x"
    async with asyncio.timeout(10):
        await proxy.wait_stopped()  # nobody asked it to stop
    assert proxy.expired and proxy.open_sockets() == []
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(10):
            await reader.read(1)
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)
    await proxy.stop()  # idempotent
    await until(lambda: backend.ended == ["reset"], what="the server's side to end")
    assert socket_fds() <= before  # the proxy's listener and both links' sockets are gone


def test_only_loopback_targets() -> None:
    for target in (("10.0.0.1", 5432), ("example.com", 53), ("0.0.0.0", 5432)):
        with pytest.raises(ValueError, match=r"only reaches 127\.0\.0\.1"):
            TcpFaultProxy(target)
        with pytest.raises(ValueError, match=r"only reaches 127\.0\.0\.1"):
            UdpFaultProxy(target)
    with pytest.raises(ValueError, match="lifetime"):
        TcpFaultProxy((LOOPBACK, 5432), lifetime=0)


def test_in_a_thread_of_its_own_driven_by_blocking_code() -> None:
    """As an integration test uses it: the peer connects through it while the test blocks."""
    with socket.create_server((LOOPBACK, 0)) as server:
        server.settimeout(10)
        with TcpFaultProxy(server.getsockname()).running_in_thread() as proxy:
            thread = next(t for t in threading.enumerate() if t.name == proxy.kind)
            with socket.create_connection(proxy.address, timeout=10) as client:
                upstream, _ = server.accept()
                with upstream:
                    upstream.settimeout(10)
                    client.sendall(b"hello")
                    assert upstream.recv(5) == b"hello"
                    proxy.stall()  # from this thread, while the proxy's loop runs in its own
                    upstream.sendall(b"later")
                    assert _wait_held(proxy, 5)
                    proxy.resume()
                    assert client.recv(5) == b"later"
                    assert proxy.reset() == 1
                    with pytest.raises(ConnectionResetError):
                        client.recv(1)
        assert not thread.is_alive() and proxy.stopped
        assert proxy.open_sockets() == []


def _wait_held(proxy: TcpFaultProxy, n: int) -> bool:
    event = threading.Event()
    for _ in range(10_000):  # each stats() call is a round trip to the proxy's loop
        if proxy.stats().held == n:
            return True
        event.wait(0.001)
    return False


# ---- UDP -----------------------------------------------------------------------------------


@dataclass
class Sink(asyncio.DatagramProtocol):
    got: list[bytes] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    transport: Any = None
    reply: bool = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.at.append(asyncio.get_running_loop().time())
        if self.reply:
            self.transport.sendto(b"re:" + data, addr)

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, int(self.transport.get_extra_info("sockname")[1])


@contextlib.contextmanager
def udp_client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield sock


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Sink, local_addr=(LOOPBACK, 0))
    yield protocol
    transport.close()


async def test_udp_passes_datagrams_and_relays_replies(sink: Sink) -> None:
    sink.reply = True
    async with UdpFaultProxy(sink.address) as proxy:
        with udp_client() as client:
            client.setblocking(False)
            for i in range(20):
                client.sendto(b"%d" % i, proxy.address)
            await until(lambda: len(sink.got) == 20, what="20 datagrams at the sink")
            assert sink.got == [b"%d" % i for i in range(20)]
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
                first = await loop.sock_recv(client, 100)
            assert first == b"re:0"
            await until(lambda: proxy.stats().replies == 20, what="the replies relayed")
        assert proxy.stats().forwarded == 20
    assert proxy.open_sockets() == []


async def test_udp_drop_duplicate_delay(sink: Sink) -> None:
    async with UdpFaultProxy(sink.address) as proxy:
        with udp_client() as client:
            proxy.set_faults(drop=1.0)
            for i in range(10):
                client.sendto(b"lost %d" % i, proxy.address)
            await until(lambda: proxy.stats().received == 10, what="10 datagrams at the proxy")
            assert proxy.stats().dropped == 10 and sink.got == []

            proxy.set_faults(drop=0.0, duplicate=1.0)
            for i in range(10):
                client.sendto(b"twice %d" % i, proxy.address)
            await until(lambda: len(sink.got) == 20, what="each datagram twice")
            assert sink.got == [b"twice %d" % (i // 2) for i in range(20)]

            proxy.set_faults(duplicate=0.0, delay=0.05)
            loop = asyncio.get_running_loop()
            sent = loop.time()
            client.sendto(b"late", proxy.address)
            await until(lambda: len(sink.got) == 21, what="the delayed datagram")
            assert sink.at[-1] - sent >= 0.05
            with pytest.raises(ValueError, match="probability"):
                proxy.set_faults(drop=1.5)
            with pytest.raises(ValueError, match="negative"):
                proxy.set_faults(delay=-1)


async def _survivors(sink: Sink, seed: int) -> set[bytes]:
    """200 datagrams through a proxy that drops half of them: those that arrived."""
    sink.got.clear()
    async with UdpFaultProxy(sink.address, seed=seed) as proxy:
        proxy.set_faults(drop=0.5)
        with udp_client() as client:
            for i in range(200):
                client.sendto(b"%d" % i, proxy.address)
            await until(lambda: proxy.stats().received == 200, what="200 at the proxy")
            stats = proxy.stats()
            await until(lambda: len(sink.got) == stats.forwarded, what="the survivors")
    assert stats.dropped + stats.forwarded == 200 and 50 < stats.dropped < 150
    return set(sink.got)


async def test_udp_losses_follow_the_seed(sink: Sink) -> None:
    first = await _survivors(sink, seed=7)
    assert await _survivors(sink, seed=7) == first  # the same seed loses the same datagrams
    assert await _survivors(sink, seed=8) != first


async def test_udp_stops_by_itself_with_its_delayed_datagrams(sink: Sink) -> None:
    proxy = UdpFaultProxy(sink.address, lifetime=0.2)
    await proxy.start()
    proxy.set_faults(delay=60)
    with udp_client() as client:
        client.sendto(b"never", proxy.address)
        await until(lambda: proxy.stats().delayed == 1, what="a datagram waiting")
    async with asyncio.timeout(10):
        await proxy.wait_stopped()
    assert proxy.expired and proxy.open_sockets() == [] and proxy.stats().delayed == 0
    assert sink.got == []
