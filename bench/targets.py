"""What a workload runs against: plain asyncpg connections we hand out ourselves (direct, or
through pgbouncer/pgpool-II) or the georoute client. One `run(op, args)` per request."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

import client as georoute_client
from bench.workloads import Op

__all__ = [
    "MAX_CLIENT_CONNECTIONS",
    "AsyncpgTarget",
    "Endpoint",
    "GeorouteTarget",
    "ScatterTarget",
    "Target",
]

# The most connections one asyncpg-based target opens per endpoint; more clients share them.
MAX_CLIENT_CONNECTIONS = 32


@dataclass(frozen=True, slots=True)
class Endpoint:
    port: int
    database: str
    host: str = "127.0.0.1"  # or a Unix socket directory


class Target:
    """A benchmark target: `open` for a concurrency, `run` one op, `close`."""

    name = "target"
    description = ""

    async def open(self, concurrency: int) -> None:
        raise NotImplementedError

    async def run(self, op: Op, args: Sequence[Any]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _Connections:
    """Connections to one endpoint, handed out first come, first served: no asyncpg Pool, so
    no reset queries on release (they halve throughput; see FIELD-NOTES). A released
    connection goes straight to the longest waiter, so with more clients than connections a
    client that releases and asks again cannot barge ahead of the others."""

    def __init__(self) -> None:
        self.idle: collections.deque[asyncpg.Connection] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[asyncpg.Connection]] = collections.deque()
        self.all: list[asyncpg.Connection] = []

    async def open(self, endpoint: Endpoint, user: str, n: int, cache: int) -> None:
        conns = await asyncio.gather(*(
            asyncpg.connect(host=endpoint.host, port=endpoint.port, user=user,
                            database=endpoint.database, statement_cache_size=cache, timeout=10)
            for _ in range(n)
        ))
        self.all.extend(conns)
        self.idle.extend(conns)

    async def acquire(self) -> asyncpg.Connection:
        if self.idle:
            return self.idle.popleft()
        waiter: asyncio.Future[asyncpg.Connection] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise

    def release(self, conn: asyncpg.Connection) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    async def close(self) -> None:
        await asyncio.gather(*(c.close(timeout=5) for c in self.all), return_exceptions=True)
        self.all.clear()
        self.idle.clear()


class AsyncpgTarget(Target):
    """asyncpg to a read endpoint and a write endpoint (the same one for pgpool-II)."""

    def __init__(self, name: str, description: str, read: Endpoint, write: Endpoint,
                 user: str, statement_cache_size: int) -> None:
        self.name = name
        self.description = description
        self.read_endpoint, self.write_endpoint = read, write
        self.user = user
        self.cache = statement_cache_size
        self._read = _Connections()
        self._write = self._read if read == write else _Connections()

    async def open(self, concurrency: int) -> None:
        n = min(concurrency, MAX_CLIENT_CONNECTIONS)
        await self._read.open(self.read_endpoint, self.user, n, self.cache)
        if self._write is not self._read:
            await self._write.open(self.write_endpoint, self.user, n, self.cache)

    async def run(self, op: Op, args: Sequence[Any]) -> None:
        pool = self._read if op.read else self._write
        conn = await pool.acquire()
        try:
            if op.read:
                await conn.fetch(op.sql, *args)
            else:
                await conn.execute(op.sql, *args)
        finally:
            pool.release(conn)

    async def close(self) -> None:
        await self._read.close()
        if self._write is not self._read:
            await self._write.close()
        self._read = _Connections()
        self._write = self._read if self.read_endpoint == self.write_endpoint else _Connections()


class GeorouteTarget(Target):
    """The georoute client; the router picks the node (replica for reads by id)."""

    def __init__(self, dsn: str, token: str, pool_size: int) -> None:
        self.name = "georoute"
        via = "Unix socket" if "%2F" in dsn else "TCP"
        self.description = (f"georoute client (pool_size <= {pool_size}, over the router's {via}) "
                            "-> router -> node")
        self.dsn, self.token, self.pool_size = dsn, token, pool_size
        self._client: georoute_client.Client | None = None

    async def open(self, concurrency: int) -> None:
        # The direct target reads replicas with no read-your-writes guarantee, so georoute
        # reads with consistency="replica" (eventual) too: the same work on both sides. Without
        # it the router would still hold every read that follows a write on the same router
        # connection to that write (it remembers writes per connection), and the bench's
        # workers share a few connections. session_consistency off: no token map is sent.
        self._client = await georoute_client.connect(
            self.dsn, token=self.token, pool_size=min(concurrency, self.pool_size),
            session_consistency=False,
        )

    async def run(self, op: Op, args: Sequence[Any]) -> None:
        assert self._client is not None
        if op.read:
            await self._client.fetch(op.sql, *args, consistency="replica")
        else:
            await self._client.execute(op.sql, *args)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class ScatterTarget(Target):
    """A cross-shard read sent by hand to every shard's replica in parallel and merged in the
    client: the baseline for georoute's scatter-gather. Direct asyncpg, statement cache on."""

    def __init__(self, replicas: Sequence[Endpoint], user: str) -> None:
        self.name = "direct"
        self.description = "asyncpg to every shard's replica, merged in the client"
        self.replicas = list(replicas)
        self.user = user
        self._pools = [_Connections() for _ in self.replicas]

    async def open(self, concurrency: int) -> None:
        n = min(concurrency, MAX_CLIENT_CONNECTIONS)
        await asyncio.gather(*(p.open(e, self.user, n, 100)
                               for p, e in zip(self._pools, self.replicas, strict=True)))

    async def _one(self, pool: _Connections, op: Op, args: Sequence[Any]) -> list[Any]:
        conn = await pool.acquire()
        try:
            return list(await conn.fetch(op.sql, *args))
        finally:
            pool.release(conn)

    async def run(self, op: Op, args: Sequence[Any]) -> None:
        parts = await asyncio.gather(*(self._one(p, op, args) for p in self._pools))
        op.merge(parts)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._pools))
        self._pools = [_Connections() for _ in self.replicas]
