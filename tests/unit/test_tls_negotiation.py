"""The SSLRequest exchange of router/backend/tls.py against a scripted server on loopback (the real
server's side is tested in tests/integration/test_tls.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from protocol.sockets import keep_alive
from router.backend.tls import TLSRefused, asyncpg_ssl, client_context, forget_contexts, open_stream
from router.config import DatabaseConfig

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set_result(transport)


@pytest.fixture
async def answering() -> AsyncIterator[tuple[list[bytes], list[bytes], int]]:
    """A server that reads the SSLRequest and answers with the bytes queued in `answers`;
    what it received is in `received`."""
    answers: list[bytes] = []
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readexactly(8))
        writer.write(answers.pop(0))
        await writer.drain()
        received.append(await reader.read(100))  # what the client sent next, if anything
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield answers, received, port


async def test_prefer_goes_on_in_clear_when_the_server_says_no(
    answering: tuple[list[bytes], list[bytes], int],
) -> None:
    answers, received, port = answering
    answers.append(b"N")
    transport, protocol = await open_stream("127.0.0.1", port, DatabaseConfig(), Recorder)
    assert await protocol.made is transport  # handed over, ready for the startup message
    assert received == [SSL_REQUEST]  # the server answered only after reading it
    transport.close()


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
async def test_a_server_that_says_no_is_refused_when_tls_is_required(
    answering: tuple[list[bytes], list[bytes], int], mode: str
) -> None:
    answers, _, port = answering
    answers.append(b"N")
    with pytest.raises(TLSRefused, match="does not accept TLS"):
        await open_stream("127.0.0.1", port, DatabaseConfig(sslmode=mode), Recorder)


async def test_bytes_after_the_yes_are_refused(
    answering: tuple[list[bytes], list[bytes], int],
) -> None:
    """Unencrypted bytes that follow 'S' could be injected by anyone on the path."""
    answers, _, port = answering
    answers.append(b"SZ\x00\x00\x00\x05I")
    with pytest.raises(TLSRefused, match="unencrypted data"):
        await open_stream("127.0.0.1", port, DatabaseConfig(sslmode="require"), Recorder)


def test_contexts_follow_the_mode(tmp_path: Path) -> None:
    assert client_context(DatabaseConfig(sslmode="disable")) is None
    require = client_context(DatabaseConfig(sslmode="require"))
    verify_ca = client_context(DatabaseConfig(sslmode="verify-ca"))
    verify_full = client_context(DatabaseConfig(sslmode="verify-full"))
    assert require is not None and verify_ca is not None and verify_full is not None
    assert not require.check_hostname and require.verify_mode.name == "CERT_NONE"
    assert not verify_ca.check_hostname and verify_ca.verify_mode.name == "CERT_REQUIRED"
    assert verify_full.check_hostname and verify_full.verify_mode.name == "CERT_REQUIRED"
    # Unix sockets never use TLS; prefer is left to asyncpg's own fallback.
    assert asyncpg_ssl(DatabaseConfig(sslmode="verify-full"), "/tmp") is False
    assert asyncpg_ssl(DatabaseConfig(), "10.0.0.5") == "prefer"
    assert asyncpg_ssl(DatabaseConfig(sslmode="require"), "10.0.0.5") is require
    # require with a root certificate checks the chain, as libpq does.
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    checked = client_context(DatabaseConfig(sslmode="require", sslrootcert=str(ca_file)))
    assert checked is not None and checked.verify_mode.name == "CERT_REQUIRED"
    # prefer never checks: a failed check would only send it back to clear text.
    preferred = client_context(DatabaseConfig(sslmode="prefer", sslrootcert=str(ca_file)))
    assert preferred is not None and preferred.verify_mode.name == "CERT_NONE"


async def test_prefer_tries_again_in_clear_when_the_tls_handshake_fails() -> None:
    """libpq's prefer: a server that says yes to TLS, then cannot do it, gets a plain try."""
    script = ["bad tls", "plain", "bad tls"]  # what the server does, connection by connection
    seen: list[str] = []
    plain_seen = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        act = script[len(seen)]
        seen.append(act)
        if act == "bad tls":
            assert await reader.readexactly(8) == SSL_REQUEST
            writer.write(b"S")  # yes to TLS...
            await writer.drain()
            await reader.read(100)  # ...then the ClientHello is answered with nonsense
            writer.write(b"not a TLS record" * 4)
            await writer.drain()
        else:
            plain_seen.set()
            await reader.read(100)  # a plain client sends its startup message here
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        transport, protocol = await open_stream("127.0.0.1", port, DatabaseConfig(), Recorder)
        assert await protocol.made is transport
        await asyncio.wait_for(plain_seen.wait(), 5)  # a second, plain connection
        assert seen == ["bad tls", "plain"]
        assert transport.get_extra_info("ssl_object") is None
        transport.close()
        with pytest.raises(ssl.SSLError):  # require does not fall back
            await open_stream("127.0.0.1", port, DatabaseConfig(sslmode="require"), Recorder)
        assert seen == ["bad tls", "plain", "bad tls"]


async def test_tcp_connections_to_nodes_are_kept_alive(
    answering: tuple[list[bytes], list[bytes], int],
) -> None:
    """A node that vanishes without a word must not hold requests for TCP's quarter hour."""
    answers, _, port = answering
    answers.append(b"N")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes
        writer.close()

    plain_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    plain_port = plain_server.sockets[0].getsockname()[1]
    async with plain_server:
        for db, to in ((DatabaseConfig(), port), (DatabaseConfig(sslmode="disable"), plain_port)):
            transport, _ = await open_stream("127.0.0.1", to, db, Recorder)
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            transport.close()


async def test_keep_alive_on_a_closed_or_unix_socket_is_a_no_op() -> None:
    """A socket closed under us (setsockopt raises) or a Unix socket: nothing to set, and
    nothing raised into connection set-up."""

    class Closed:
        def __init__(self) -> None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.close()

        def get_extra_info(self, name: str) -> socket.socket | None:
            return self.sock if name == "socket" else None

    assert not keep_alive(Closed(), 1000)
    left, right = socket.socketpair()
    with left, right:
        unix, _ = await asyncio.get_running_loop().create_unix_connection(
            asyncio.Protocol, sock=left)
        assert not keep_alive(unix)
        unix.abort()


def test_renewed_files_at_the_same_paths_are_read_after_forget_contexts(tmp_path: Path) -> None:
    """Contexts are built once per mode and paths; a SIGHUP (forget_contexts) makes new
    connections read renewed files, e.g. a rotated CA bundle or client certificate."""
    ca_file = tmp_path / "ca.pem"
    first, second = trustme.CA(), trustme.CA()
    first.cert_pem.write_to_path(str(ca_file))
    db = DatabaseConfig(sslmode="verify-full", sslrootcert=str(ca_file))

    def trusted() -> list[bytes]:
        ctx = client_context(db)
        assert ctx is not None
        return list(ctx.get_ca_certs(binary_form=True))

    before = trusted()
    second.cert_pem.write_to_path(str(ca_file))
    assert trusted() == before  # cached: the renewed file is not read yet
    forget_contexts()
    after = trusted()
    assert after != before and len(after) == 1
