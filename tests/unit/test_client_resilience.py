"""Retries, timeouts, cancellation, failover and authentication, against fake routers."""

from __future__ import annotations

import asyncio

import pytest

import client as georoute_client
from protocol import Batch, Error, ErrorCode, Message, Ping, Pong, Query, QueryKind, Rows, Status
from tests.support.fake_server import FakeConnection, FakeRouter, Handler


def drop_first(n: int = 1) -> Handler:
    """A handler that aborts the connection on the first n requests, then answers."""
    seen = {"count": 0}

    def handler(conn: FakeConnection, msg: Message) -> None:
        seen["count"] += 1
        if seen["count"] <= n:
            conn.drop()
        elif isinstance(msg, Query) and msg.kind is QueryKind.FETCH:
            conn.send(Rows(msg.id, ["ok"], [[True]], "SELECT 1"))
        else:
            conn.send(Status(msg.id, "INSERT 0 1", 1))

    return handler


async def connect(router: FakeRouter, **kwargs: object) -> georoute_client.Client:
    options: dict[str, object] = {"token": "secret", "pool_size": 1, "reconnect_backoff": 0.001}
    options.update(kwargs)
    return await georoute_client.connect(router.dsn, **options)  # type: ignore[arg-type]


async def test_read_is_retried_after_dropped_connection() -> None:
    async with FakeRouter(drop_first()) as router, await connect(router) as client:
        assert await client.fetchval("SELECT ok FROM t") is True
        assert len(router.requests(Query)) == 2
        assert len(router.connections) == 2  # reconnected (with a new handshake)
        assert len(router.hellos) == 2


async def test_write_without_idempotency_key_is_not_retried() -> None:
    async with FakeRouter(drop_first()) as router, await connect(router) as client:
        with pytest.raises(georoute_client.ConnectionLostError) as lost:
            await client.execute("INSERT INTO t VALUES (1)")
        assert len(router.requests(Query)) == 1
        assert not lost.value.retryable  # it may have applied: not a default retry
        # The client is still usable afterwards.
        assert await client.execute("INSERT INTO t VALUES (2)") == "INSERT 0 1"


async def test_write_with_idempotency_key_is_retried() -> None:
    async with FakeRouter(drop_first()) as router, await connect(router) as client:
        status = await client.execute("INSERT INTO t VALUES (1)", idempotency_key="k-1")
        assert status == "INSERT 0 1"
        first, second = router.requests(Query)
        assert first.hints.idempotency_key == second.hints.idempotency_key == "k-1"


async def test_idempotent_flag_overrides_the_default() -> None:
    """Each call meets a dropped connection first: idempotent=False keeps a read from being
    re-sent, idempotent=True lets a write (and a batch) without a key be re-sent."""
    async with FakeRouter(drop_first()) as router, await connect(router) as client:
        with pytest.raises(georoute_client.ConnectionLostError) as lost:
            await client.fetch("SELECT nextval('s')", idempotent=False)
        assert not lost.value.retryable
        assert len(router.requests(Query)) == 1
    async with FakeRouter(drop_first()) as router, await connect(router) as client:
        assert await client.execute("UPDATE t SET x = 1", idempotent=True) == "INSERT 0 1"
        first, second = router.requests(Query)
        assert first.sql == second.sql == "UPDATE t SET x = 1"
        assert first.hints.idempotency_key is None  # re-sent on the caller's word alone
    async with FakeRouter(drop_first()) as router, await connect(router) as client:
        assert await client.executemany("UPDATE t SET x = $1", [(1,)], idempotent=True) == (
            "INSERT 0 1"
        )
        assert len(router.requests(Batch)) == 2


async def test_retryable_error_reply_is_retried_for_reads_only() -> None:
    failures = {"left": 1}

    def flaky(conn: FakeConnection, msg: Message) -> None:
        assert isinstance(msg, Query)
        if failures["left"]:
            failures["left"] -= 1
            code = ErrorCode.NODE_UNAVAILABLE
            conn.send(Error(msg.id, code, code.name, "primary down", None, True))
        else:
            conn.send(Rows(msg.id, ["n"], [[1]], "SELECT 1"))

    async with FakeRouter(flaky) as router, await connect(router) as client:
        assert await client.fetchval("SELECT 1") == 1
        failures["left"] = 1
        with pytest.raises(georoute_client.NodeUnavailableError) as info:
            await client.execute("DELETE FROM t")
        assert info.value.retryable


async def test_retries_are_bounded() -> None:
    def always_down(conn: FakeConnection, msg: Message) -> None:
        code = ErrorCode.POOL_EXHAUSTED
        conn.send(Error(msg.id, code, code.name, "busy", None, True))

    async with FakeRouter(always_down) as router, await connect(router, max_retries=2) as client:
        with pytest.raises(georoute_client.PoolExhaustedError):
            await client.fetch("SELECT 1")
        assert len(router.requests(Query)) == 3


async def test_a_retry_carries_the_time_left_and_running_out_gives_the_real_error() -> None:
    def always_down(conn: FakeConnection, msg: Message) -> None:
        code = ErrorCode.POOL_EXHAUSTED
        conn.send(Error(msg.id, code, code.name, "busy", None, True))

    async with FakeRouter(always_down) as router, await connect(
        router, max_retries=2, retry_backoff=0.05
    ) as client:
        with pytest.raises(georoute_client.PoolExhaustedError):
            await client.fetch("SELECT 1", timeout=5.0)
        budgets = [q.hints.timeout_ms for q in router.requests(Query)]
        assert len(budgets) == 3 and budgets[0] == 5000
        assert budgets[0] > budgets[1] > budgets[2]  # each retry: only what is left
    async with FakeRouter(always_down) as router, await connect(
        router, max_retries=5, retry_backoff=10.0
    ) as client:
        # The deadline passes while backing off: the failure itself, not a bare timeout.
        with pytest.raises(georoute_client.PoolExhaustedError):
            await client.fetch("SELECT 1", timeout=0.2)
        assert len(router.requests(Query)) == 1


async def test_timeout_raises_and_late_reply_is_discarded() -> None:
    held: list[tuple[FakeConnection, Message]] = []

    def hold_queries(conn: FakeConnection, msg: Message) -> None:
        if isinstance(msg, Ping):
            conn.send(Pong(msg.id))
        else:
            held.append((conn, msg))

    async with FakeRouter(hold_queries) as router, await connect(router) as client:
        with pytest.raises(georoute_client.RequestTimeoutError) as info:
            await client.fetch("SELECT pg_sleep(10)", timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        ((conn, late),) = held
        assert isinstance(late, Query) and late.hints.timeout_ms == 50
        conn.send(Rows(late.id, ["x"], [["late"]], "SELECT 1"))  # nobody waits for it now
        await client.ping()
        (connection,) = client.connections
        assert connection.in_flight == 0 and not connection.is_closed


async def test_cancelled_request_leaves_connection_usable() -> None:
    held: list[tuple[FakeConnection, Query]] = []

    def handler(conn: FakeConnection, msg: Message) -> None:
        assert isinstance(msg, Query)
        if msg.sql == "slow":
            held.append((conn, msg))
        else:
            conn.send(Rows(msg.id, ["sql"], [[msg.sql]], "SELECT 1"))

    async with FakeRouter(handler) as router, await connect(router) as client:
        task = asyncio.create_task(client.fetch("slow"))
        await router.wait_for(lambda: len(held) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        conn, msg = held[0]
        conn.send(Rows(msg.id, ["sql"], [["stale"]], "SELECT 1"))
        assert await client.fetchval("fast") == "fast"
        assert client.connections[0].in_flight == 0


async def test_failover_to_second_router_when_first_dies() -> None:
    async with FakeRouter(node="router-a") as a, FakeRouter(node="router-b") as b:
        dsn = f"georoute://{a.address},{b.address}"
        client = await georoute_client.connect(
            dsn, token="secret", pool_size=1, reconnect_backoff=0.001
        )
        async with client:
            assert await client.fetchval("SELECT 1", column=2) == "router-a"
            await a.kill()
            await a.wait_for(lambda: not a.open_connections)
            assert await client.fetchval("SELECT 1", column=2) == "router-b"
            assert [c.node for c in client.connections] == ["router-b"]


async def test_in_flight_read_fails_over_when_its_router_dies() -> None:
    async def never_answer(conn: FakeConnection, msg: Message) -> None:
        return None

    async with FakeRouter(never_answer, node="router-a") as a, FakeRouter(node="router-b") as b:
        dsn = f"georoute://{a.address},{b.address}"
        client = await georoute_client.connect(
            dsn, token="secret", pool_size=1, reconnect_backoff=0.001
        )
        async with client:
            task = asyncio.create_task(client.fetchval("SELECT 1", column=2))
            await a.wait_for(lambda: len(a.received) == 1)
            await a.kill()
            assert await task == "router-b"


async def test_pool_spreads_over_router_nodes() -> None:
    async with FakeRouter(node="a") as a, FakeRouter(node="b") as b:
        dsn = f"georoute://{a.address},{b.address}"
        async with await georoute_client.connect(dsn, token="secret", pool_size=2) as client:
            assert sorted(c.node or "" for c in client.connections) == ["a", "b"]


async def test_no_router_available() -> None:
    async with FakeRouter() as router:
        dsn = router.dsn
        await router.kill()
    with pytest.raises(georoute_client.NoRouterAvailableError):
        await georoute_client.connect(
            dsn, token="secret", reconnect_backoff=0.001, connect_rounds=2
        )


async def test_bad_token_raises_auth_error() -> None:
    async with FakeRouter(token="secret") as router:
        with pytest.raises(georoute_client.AuthError) as info:
            await georoute_client.connect(router.dsn, token="wrong", pool_size=1)
        assert info.value.code == ErrorCode.AUTH_FAILED
        assert len(router.hellos) == 1  # not retried: every node would say the same


async def test_unsupported_version_raises() -> None:
    async with FakeRouter(versions=(7,)) as router:
        with pytest.raises(georoute_client.UnsupportedVersionError):
            await georoute_client.connect(router.dsn, token="secret")


async def test_connection_level_error_fails_in_flight_requests() -> None:
    def shutting_down(conn: FakeConnection, msg: Message) -> None:
        code = ErrorCode.SHUTTING_DOWN
        conn.send(Error(0, code, code.name, "draining", None, True))
        conn.drop()

    async with FakeRouter(shutting_down) as router, await connect(router, max_retries=1) as client:
        with pytest.raises(georoute_client.GeorouteError) as info:
            await client.execute("INSERT INTO t VALUES (1)")
        assert info.value.code == ErrorCode.SHUTTING_DOWN


async def test_garbage_from_router_fails_the_connection_with_a_typed_error() -> None:
    def garbage(conn: FakeConnection, msg: Message) -> None:
        assert conn.transport is not None
        conn.transport.write(b"\xff\xff\xff\xff")  # a 4 GiB frame announcement

    async with FakeRouter(garbage) as router, await connect(router) as client:
        with pytest.raises(georoute_client.ProtocolViolationError) as info:
            await client.fetch("SELECT 1")
        assert info.value.code == ErrorCode.FRAME_TOO_LARGE
        assert client.connections == []
