"""TLS to PostgreSQL, chosen by `database.sslmode` as libpq names its modes, for every
connection the router opens to a node: asyncpg's (pools, lag monitor, WAL reads) and the
pipelined ones (router/backend/pipeline.py), so neither path is weaker than the other. What
each mode does (disable, prefer, require, verify-ca, verify-full) is the table in
protocol/tlsmode.py, which the client library builds its contexts from too. Unix sockets
never use TLS (as in libpq): they do not leave the machine.

The router's own TCP listener speaks TLS too when `router.tls_cert_file` and `tls_key_file`
are set (`server_context`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg

from protocol.sockets import keep_alive
from protocol.tlsmode import TLSPolicy, tls_policy
from router.backend.errors import TLSRefused
from router.config import DatabaseConfig, NodeAddress, RouterConfig

__all__ = ["ListenerTLS", "TLSRefused", "asyncpg_ssl", "client_context", "connect_asyncpg",
           "forget_contexts", "open_stream", "server_context"]

# SSLRequest: length 8, then the code 1234.5679 (PostgreSQL's protocol, section 53.2.10).
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)

P = TypeVar("P", bound=asyncio.Protocol)
log = logging.getLogger(__name__)


def _policy(db: DatabaseConfig) -> TLSPolicy:
    return tls_policy(db.sslmode, has_root_cert=bool(db.sslrootcert))


@functools.lru_cache(maxsize=8)
def _context(policy: TLSPolicy, rootcert: str, cert: str, key: str) -> ssl.SSLContext:
    if policy.verify_chain:
        ctx = ssl.create_default_context(cafile=rootcert or None)
        ctx.check_hostname = policy.verify_host
    else:  # prefer's TLS is never checked: a failed check would only send it back to clear
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and policy.client_cert:  # router/config.py refuses a certificate it cannot send
        ctx.load_cert_chain(cert, key or None, password=_no_password)
    return ctx


def _no_password() -> str:
    raise ValueError("the key is encrypted; give an unencrypted key file")


def client_context(db: DatabaseConfig) -> ssl.SSLContext | None:
    """The TLS context for `db.sslmode` (None for disable), with the router's client
    certificate when `database.sslcert` is set; built once per mode and files."""
    policy = _policy(db)
    if not policy.encrypt:
        return None
    return _context(policy, db.sslrootcert, db.sslcert, db.sslkey)


def forget_contexts() -> None:
    """Build the contexts afresh from the files from now on (SIGHUP: a renewed certificate at
    the same path). Connections already open keep theirs."""
    _context.cache_clear()


def _keep_node_alive(transport: Any, db: DatabaseConfig) -> None:
    keep_alive(transport, int(db.tcp_user_timeout_seconds * 1000))


async def connect_asyncpg(db: DatabaseConfig, address: NodeAddress, settings: dict[str, str],
                          statement_cache_size: int = 100) -> asyncpg.Connection:
    """An asyncpg connection to a node, as the router opens them all (pools, lag monitor, WAL
    reads, `georoute db`): TLS as `db.sslmode` says, and on TCP the pipeline's keepalives."""
    host = db.host_for(address)
    conn = await asyncpg.connect(
        host=host, port=address.port, database=address.database, user=db.user,
        password=db.password(), timeout=db.connect_timeout_seconds, ssl=asyncpg_ssl(db, host),
        statement_cache_size=statement_cache_size, server_settings=settings,
    )
    _keep_node_alive(getattr(conn, "_transport", None), db)  # asyncpg has no option for it
    return conn


def asyncpg_ssl(db: DatabaseConfig, host: str) -> Any:
    """What to pass as asyncpg.connect(ssl=...) to reach `host` under `db.sslmode`."""
    policy = _policy(db)
    if host.startswith("/") or not policy.encrypt:
        return False
    if policy.clear_fallback:
        return "prefer"  # asyncpg falls back to clear text itself
    return client_context(db)


class _Negotiation(asyncio.Protocol):
    """Sends SSLRequest and waits for the server's one-byte answer. Whatever happens after
    the answer and before the stream is handed over (bytes, or the end of the connection) is
    noted, so the hand-over can refuse it: the server has nothing to say at that point."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self.unexpected: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_SSL_REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)
        else:
            self.unexpected = "data before the session started"

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("closed before answering"))
        else:
            self.unexpected = f"connection closed ({exc or 'by the server'})"


async def open_stream(
    host: str, port: int, db: DatabaseConfig, factory: Callable[[], P]
) -> tuple[asyncio.Transport, P]:
    """Connect `factory()`'s protocol to a node (a Unix socket when `host` is a directory),
    through TLS when `db.sslmode` asks for it and the server agrees. The protocol sees
    `connection_made` only once the stream is ready for PostgreSQL's startup message. TCP
    connections get keepalives (protocol/sockets.py) and `database.tcp_user_timeout_seconds`."""
    loop = asyncio.get_running_loop()
    if host.startswith("/"):
        return await loop.create_unix_connection(factory, f"{host}/.s.PGSQL.{port}")
    ctx = client_context(db)
    if ctx is None:
        plain, protocol = await loop.create_connection(factory, host, port)
        _keep_node_alive(plain, db)
        return plain, protocol
    transport, negotiation = await loop.create_connection(lambda: _Negotiation(loop), host, port)
    _keep_node_alive(transport, db)
    try:
        answer = await negotiation.answer
        if answer == b"S":
            try:
                tls = await loop.start_tls(transport, negotiation, ctx, server_hostname=host)
            except ssl.SSLError as exc:
                if not _policy(db).clear_fallback:
                    raise
                # As libpq's prefer does: a TLS attempt that fails is made again in clear.
                log.warning("%s:%d: TLS failed (%s); sslmode=prefer goes on in clear",
                            host, port, exc)
                transport.abort()
                transport, protocol = await loop.create_connection(factory, host, port)
                _keep_node_alive(transport, db)
                return transport, protocol
            if tls is None:
                raise TLSRefused(f"{host}:{port}: TLS could not start")
            transport = tls
        elif answer[:1] == b"S":
            # Bytes after the answer came before any encryption: someone may have put them
            # there (CVE-2021-23214). Never let them pass for the server's.
            raise TLSRefused(f"{host}:{port}: unencrypted data after the TLS answer")
        elif answer == b"N" and _policy(db).clear_fallback:
            pass  # the server has no TLS: prefer goes on in clear, as libpq does
        else:
            raise TLSRefused(f"{host}:{port} does not accept TLS (sslmode={db.sslmode})")
        if negotiation.unexpected or transport.is_closing():
            raise ConnectionResetError(f"{host}:{port}: {negotiation.unexpected or 'closed'}")
        protocol = factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
    except BaseException:
        transport.abort()
        raise
    return transport, protocol


def server_context(router: RouterConfig) -> ssl.SSLContext | None:
    """The TLS context of the router's TCP listener, or None when it has no certificate.
    Raises OSError (ssl.SSLError) for files that cannot be loaded or do not match."""
    if not router.tls_cert_file:
        return None
    return _listener_context(router.tls_cert_file, router.tls_key_file,
                             router.tls_client_ca_file)


def _listener_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:  # mutual TLS: no certificate from this CA, no connection
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ListenerTLS:
    """TLS of the router's TCP listener, whose certificate can be renewed while it serves.

    The listener keeps the context it was created with; each handshake is switched, from its
    SNI callback (which OpenSSL calls for every ClientHello), to the newest context. A renewal
    builds and checks a whole new context first, so a half-written file or a key that does
    not match its certificate leaves the running one untouched."""

    def __init__(self, router: RouterConfig) -> None:
        self.paths = (router.tls_cert_file, router.tls_key_file, router.tls_client_ca_file)
        context = server_context(router)
        if context is None:
            raise ValueError("router.tls_cert_file is not set")
        self.context = context
        self._current = context
        context.sni_callback = self._choose

    def _choose(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        if context is not self._current:
            conn.context = self._current

    def renew(self) -> None:
        """Load the files again from the same paths (the client CA's too: a CA bundle can be
        rotated the same way); new handshakes use them. Raises OSError
        or ValueError (the running certificate stays) when they cannot be loaded."""
        self._current = _listener_context(*self.paths)
