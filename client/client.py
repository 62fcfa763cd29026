"""The application-facing client: `await connect(dsn)`, then fetch/execute/transaction/docs.
Its requests, and those of its transactions and collections, go through one Sender
(client/sender.py: the retry policy and the session's read-your-writes state); it makes no
routing decisions (the router does)."""

# A per-request `timeout=` (not an asyncio.timeout around the call) because it is also sent to
# the router as timeout_ms and bounds all retries together.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import functools
import re
import ssl as _ssl
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from client.connection import Connection
from client.docs import Collection
from client.dsn import parse_dsn
from client.errors import ProtocolViolationError
from client.pool import PoolConfig, RouterPool
from client.record import Record
from client.replies import rows_of, status_of
from client.sender import Sender
from client.tls import ssl_context
from client.transaction import Transaction
from protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Admin,
    AdminReply,
    Batch,
    Consistency,
    Isolation,
    Ping,
    Pong,
    Query,
    QueryKind,
    RouteInfo,
    format_ryw_token,
    parse_ryw_token,
)

__all__ = ["EVERY_SHARD", "Client", "connect", "looks_read_only"]

# shard=EVERY_SHARD: a read answered by every shard and merged by the router.
EVERY_SHARD = "*"

_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*\n?|\()*([A-Za-z]+)")
_READ_WORDS = frozenset({"select", "show", "values", "table"})
_INTO = re.compile(r"\binto\b", re.IGNORECASE)


def looks_read_only(sql: str) -> bool:
    """Whether a statement is safe to retry by default: its first keyword is SELECT, SHOW,
    VALUES or TABLE, and it has no INTO (SELECT ... INTO makes a table). Conservative: a
    block comment before the first word (they nest in PostgreSQL, which a pattern cannot
    follow) makes it not. (WITH is excluded: a CTE may write. A SELECT of a function that
    writes must be sent with idempotent=False.)"""
    match = _FIRST_WORD.match(sql)
    return (match is not None and match.group(1).lower() in _READ_WORDS
            and _INTO.search(sql) is None)


# Applications send the same few statement texts over and over; the regex ran on every call.
_looks_read_only_cached = functools.lru_cache(maxsize=1024)(looks_read_only)
_FETCH = QueryKind.FETCH
_EXECUTE = QueryKind.EXECUTE


class Client:
    """A pool of pipelined connections to the router nodes, and the Sender that holds the
    session's state."""

    def __init__(
        self,
        pool: RouterPool,
        *,
        command_timeout: float | None = None,
        max_retries: int = 3,
        retry_backoff: float = 0.02,
        retry_backoff_max: float = 1.0,
        session_consistency: bool = True,
    ) -> None:
        self._pool = pool
        self._sender = Sender(
            pool,
            command_timeout=command_timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            session_consistency=session_consistency,
        )

    # -- settings (the request loop's, client/sender.py)

    @property
    def command_timeout(self) -> float | None:
        """The timeout of a request that gives none (None: no timeout)."""
        return self._sender.command_timeout

    @command_timeout.setter
    def command_timeout(self, value: float | None) -> None:
        self._sender.command_timeout = value

    @property
    def max_retries(self) -> int:
        return self._sender.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self._sender.max_retries = value

    @property
    def retry_backoff(self) -> float:
        return self._sender.retry_backoff

    @retry_backoff.setter
    def retry_backoff(self, value: float) -> None:
        self._sender.retry_backoff = value

    @property
    def retry_backoff_max(self) -> float:
        return self._sender.retry_backoff_max

    @retry_backoff_max.setter
    def retry_backoff_max(self, value: float) -> None:
        self._sender.retry_backoff_max = value

    @property
    def session_consistency(self) -> bool:
        """Whether requests carry the session's read-your-writes map."""
        return self._sender.session_consistency

    @session_consistency.setter
    def session_consistency(self, value: bool) -> None:
        self._sender.session_consistency = value

    # -- lifecycle

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._sender.closed = True
        await self._pool.close()

    @property
    def is_closed(self) -> bool:
        return self._sender.closed

    @property
    def ryw_state(self) -> dict[str, int]:
        """The session's read-your-writes map {shard: highest LSN written}."""
        return dict(self._sender.ryw)

    def ryw_tokens(self) -> list[str]:
        """The session's read-your-writes position as tokens, `"<shard>:<lsn>"` for each shard
        it wrote (the form of a reply's ryw_token, PROTOCOL.md section 5). Hand them to the
        session that serves the same user next (a web tier's next request, on another
        process), which gives them to `observe_ryw_tokens` and then reads these writes."""
        return [format_ryw_token(shard, lsn) for shard, lsn in sorted(self._sender.ryw.items())]

    def observe_ryw_tokens(self, tokens: Iterable[str]) -> None:
        """Take another session's tokens (its `ryw_tokens`) as this session's own writes: its
        later reads see them, from a replica only once it has replayed them, else from the
        primary. The map is the Client's: a Client shared by many users' requests makes every
        read it sends wait for all the tokens it was given. Raises ValueError for a malformed
        token (TypeError for one that is not a str, or a bare str for the iterable); then none
        of them is taken."""
        if isinstance(tokens, str):
            raise TypeError("observe_ryw_tokens takes an iterable of tokens, not one str")
        positions = []
        for token in tokens:
            if not isinstance(token, str):
                raise TypeError(f"a ryw token is a str, not {type(token).__name__}")
            positions.append(parse_ryw_token(token))
        self._sender.observe(positions)

    @property
    def connections(self) -> list[Connection]:
        return self._pool.connections

    # -- SQL

    async def fetch(
        self,
        sql: str,
        *args: Any,
        shard: str | None = None,
        shard_key: Any = None,
        consistency: Consistency | str | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
        shards: Sequence[str] | None = None,
    ) -> list[Record]:
        """Rows of a read (or a write's RETURNING). `shard="*"` reads every shard, `shards=[...]`
        just those, merged by the router (README, "Cross-shard reads")."""
        hints = self._sender.hints(shard, shard_key, consistency, idempotency_key, timeout,
                                   shards)
        retry = _retry_ok(idempotent, idempotency_key, sql)
        query = Query(0, sql, list(args), _FETCH, hints)
        reply, _ = await self._sender.send(query, retry=retry, timeout=timeout)
        return rows_of(reply)

    async def fetch_routed(
        self, sql: str, *args: Any, shard: str | None = None, shard_key: Any = None,
        consistency: Consistency | str | None = None, timeout: float | None = None,
        shards: Sequence[str] | None = None,
    ) -> tuple[list[Record], RouteInfo | None]:
        """`fetch`, and where it ran. A cross-shard read's route names every shard that
        answered, comma-separated, and their nodes in the same order (PROTOCOL.md 2.3)."""
        hints = self._sender.hints(shard, shard_key, consistency, None, timeout, shards)
        query = Query(0, sql, list(args), _FETCH, hints)
        reply, _ = await self._sender.send(query, retry=_retry_ok(None, None, sql), timeout=timeout)
        return rows_of(reply), getattr(reply, "route", None)

    async def fetchrow(self, sql: str, *args: Any, **kwargs: Any) -> Record | None:
        result = await self.fetch(sql, *args, **kwargs)
        return result[0] if result else None

    async def fetchval(self, sql: str, *args: Any, column: int = 0, **kwargs: Any) -> Any:
        row = await self.fetchrow(sql, *args, **kwargs)
        return None if row is None else row[column]

    async def execute(
        self,
        sql: str,
        *args: Any,
        shard: str | None = None,
        shard_key: Any = None,
        consistency: Consistency | str | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
        shards: Sequence[str] | None = None,
    ) -> str:
        """Run a statement for its effect; returns the command status, e.g. "INSERT 0 1"."""
        hints = self._sender.hints(shard, shard_key, consistency, idempotency_key, timeout,
                                   shards)
        hints.want_rows = False
        retry = _retry_ok(idempotent, idempotency_key, sql)
        query = Query(0, sql, list(args), _EXECUTE, hints)
        reply, _ = await self._sender.send(query, retry=retry, timeout=timeout)
        return status_of(reply)

    async def executemany(
        self,
        sql: str,
        args: Iterable[Sequence[Any]],
        *,
        shard: str | None = None,
        shard_key: Any = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Run `sql` once per parameter list, in order, on one shard (one round trip)."""
        hints = self._sender.hints(shard, shard_key, None, idempotency_key, timeout)
        retry = bool(idempotent) or idempotency_key is not None
        batch = Batch(0, [(sql, list(a)) for a in args], hints)
        return status_of(await self._sender.call(batch, retry, timeout))

    def transaction(
        self,
        *,
        shard: str | None = None,
        shard_key: Any = None,
        isolation: Isolation | str | None = None,
        read_only: bool = False,
        timeout: float | None = None,
    ) -> Transaction:
        """`async with client.transaction(shard_key=region) as tx:` -- commits on success,
        rolls back on an exception. With a shard (or shard_key) every statement runs on that
        shard; without one the transaction spans shards: each statement goes where its keys
        send it, and a commit that wrote on several shards commits on all or none of them
        (two-phase commit; README, "Transactions over several shards")."""
        iso = None if isolation is None else Isolation(isolation)
        hints = self._sender.hints(shard, shard_key, None, None, timeout)
        return Transaction(self._sender, hints, iso, read_only, timeout)

    # -- document store

    def docs(
        self, collection: str, *, shard: str | None = None, shard_key: Any = None
    ) -> Collection:
        return Collection(self._sender, collection, shard=shard, shard_key=shard_key)

    # -- admin

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip time in seconds to one router node."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self._sender.call(Ping(0), True, timeout)
        if not isinstance(reply, Pong):
            raise ProtocolViolationError(f"expected Pong, got {type(reply).__name__}")
        return loop.time() - started

    async def topology(self, *, timeout: float | None = None) -> dict[str, Any]:
        reply = await self._sender.call(Admin(0, "topology"), True, timeout)
        if not isinstance(reply, AdminReply):
            raise ProtocolViolationError(f"expected AdminReply, got {type(reply).__name__}")
        return reply.payload

    async def move_user(self, user_id: uuid.UUID | str, region: str, *,
                        timeout: float | None = None) -> dict[str, Any]:
        """Move a user and everything that is theirs to `region`'s shard (README, "Moving a
        user between regions"). Their id changes (ids carry their shard); the reply's
        `current_id` is the new one, and the old one still resolves (`resolve_moved_id`).
        Running it again is harmless: it finishes what an interrupted run left. Not retried
        on a lost connection (run it again instead)."""
        args = {"user_id": str(user_id), "region": region}
        reply = await self._sender.call(Admin(0, "move_user", args), False, timeout)
        if not isinstance(reply, AdminReply):
            raise ProtocolViolationError(f"expected AdminReply, got {type(reply).__name__}")
        return reply.payload


def _retry_ok(idempotent: bool | None, idempotency_key: str | None, sql: str) -> bool:
    if idempotent is not None:
        return idempotent
    return idempotency_key is not None or _looks_read_only_cached(sql)


async def connect(
    dsn: str,
    *,
    token: str | None = None,
    pool_size: int = 2,
    client_name: str = "georoute-client",
    connect_timeout: float = 5.0,
    command_timeout: float | None = None,
    max_retries: int = 3,
    retry_backoff: float = 0.02,
    reconnect_backoff: float = 0.05,
    connect_rounds: int = 3,
    session_consistency: bool = True,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ssl: _ssl.SSLContext | None = None,
) -> Client:
    """Connect to the router nodes named in `dsn` ("georoute://host:port,host2:port2") and
    return a ready Client (use it as `async with`). Raises AuthError on a bad token and
    NoRouterAvailableError when no node answers. TLS: `ssl`, or `?sslmode=...&sslrootcert=...`
    in the address, with `&sslcert=...&sslkey=...` for a client certificate (client/tls.py)."""
    parsed = parse_dsn(dsn)
    options = parsed.options
    if ssl is None:
        ssl = ssl_context(options.get("sslmode", "disable"), options.get("sslrootcert"),
                          options.get("sslcert"), options.get("sslkey"))
    config = PoolConfig(
        addresses=parsed.addresses,
        token=token if token is not None else parsed.token,
        size=int(options.get("pool_size", pool_size)),
        client_name=options.get("client_name", client_name),
        connect_timeout=float(options.get("connect_timeout", connect_timeout)),
        reconnect_backoff=reconnect_backoff,
        connect_rounds=connect_rounds,
        max_frame_bytes=max_frame_bytes,
        ssl=ssl,
    )
    pool = RouterPool(config)
    await pool.start()
    return Client(
        pool,
        command_timeout=command_timeout,
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        session_consistency=session_consistency,
    )
