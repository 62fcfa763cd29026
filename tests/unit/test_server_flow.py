"""How the router serves one client connection, through the connection's own ports: its
Handler (a recording stand-in here for the engine) and its Limits. Replies of one event-loop
turn leave in one write, but at most `reply_batch` to a write; reading pauses while
`max_in_flight` requests are outstanding; the handshake checks the token and tells the
connection's limits; a draining node refuses new requests but lets transactions finish;
fast-path results are answered from their callback, run again on the ordinary path when the
pipeline could not finish them (never for a client that has gone, nor while draining), and a
write's reply carries its read-your-writes token. A fake transport records writes and pauses;
no router node, config file or database is involved."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from protocol import (
    Commit,
    Encoder,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    HelloOk,
    Hints,
    Message,
    Ping,
    Pong,
    Query,
    Rows,
    Status,
)
from protocol.messages import Role as WireRole
from router.backend.pgwire import Callback, PipelineError
from router.backend.pool import NodeUnavailableError
from router.engine.outcome import Outcome, Routed
from router.engine.session import Session
from router.server.connection import ClientConnection, Limits

TOKEN = "secret"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reading = True
        self.pauses = 0
        self.closed = False
        self.wrote = asyncio.Event()

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.wrote.set()

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeNode:
    """The node a fast-path request was queued on, as FastRequest sees it."""

    name: str = "europe-node2"
    shard: str = "europe"
    events: list[Any] = field(default_factory=list)
    pool: Any = None

    def __post_init__(self) -> None:
        pipeline = SimpleNamespace(finished=lambda sql, seconds: None, forget=lambda sql: None)
        self.pool = SimpleNamespace(pipeline=pipeline)

    def record(self, event: Any, why: str = "") -> None:
        self.events.append(event)


READ = "SELECT x FROM t WHERE id = $1"
WRITE = "UPDATE t SET x = 1 WHERE id = $1"


def routed_for(sql: str) -> Routed:
    analysis = SimpleNamespace(read_only=sql.startswith("SELECT"))
    return Routed(["x"], FakeNode(), SimpleNamespace(name="europe"), analysis)  # type: ignore[arg-type]


class FakeHandler:
    """The connection's Handler: records what the connection asks. Queries take the fast
    path (their reply callbacks are kept to call as the backend's answer) unless `fast` is
    off; every other request waits for `backend_free`, then answers Status."""

    def __init__(self, *, fast: bool = True) -> None:
        self.encoder = Encoder()
        self.draining = False
        self.fast = fast
        self.open: set[ClientConnection] = set()
        self.closed_conns: list[ClientConnection] = []
        self.callbacks: list[Callback] = []
        self.handled: list[Message] = []
        self.backend_free = asyncio.Event()
        self.backend_free.set()
        self.recorded: list[tuple[str, str, str, str]] = []
        self.errors: list[str] = []
        self.tokens_read: list[str] = []

    def opened(self, conn: ClientConnection) -> int:
        self.open.add(conn)
        return len(self.open)

    def closed(self, conn: ClientConnection) -> None:
        self.open.discard(conn)
        self.closed_conns.append(conn)

    def authenticate(self, token: str) -> bool:
        return token == TOKEN

    def record(self, kind: str, shard: str, role: str, outcome: str, seconds: float) -> None:
        self.recorded.append((kind, shard, role, outcome))

    def count_error(self, code: ErrorCode) -> None:
        self.errors.append(code.name)

    def parsed(self, sql: str) -> bool:
        return True

    def submit(self, session: Session, sql: str, params: Any, hints: Hints,
               callback: Callback, scatter_done: Any = None) -> Routed | None:
        if not self.fast:
            return None
        self.callbacks.append(callback)
        return routed_for(sql)

    def route_of(self, node: Any) -> list[str]:
        return [node.shard, node.name, "replica"]

    def needs_token(self, routed: Routed, status: str) -> bool:
        return not routed.analysis.read_only

    def token_at(self, session: Session, routed: Routed, lsn: int) -> str:
        session.note_write(routed.shard.name, lsn)
        return f"{routed.shard.name}:{lsn}"

    async def write_token(self, session: Session, routed: Routed) -> str:
        await asyncio.sleep(0)  # read apart, on another connection
        self.tokens_read.append(routed.shard.name)
        return f"{routed.shard.name}:7"

    async def handle(self, session: Session, message: Message) -> tuple[bytes, Outcome | None]:
        self.handled.append(message)
        await self.backend_free.wait()
        outcome = Outcome([], [], "OK", "europe", "europe-node1", WireRole.PRIMARY)
        return self.encoder.encode_status(message.id, "OK", 0, None), outcome

    def read_only(self, message: Message) -> bool:
        return isinstance(message, Query) and message.sql.startswith("SELECT")


LIMITS = Limits(node_name="router-test", shards=("europe", "asia"), max_frame_bytes=1 << 20,
                max_sql_bytes=1 << 16, max_in_flight=1024, reply_batch=16,
                max_client_connections=100, handshake_timeout_seconds=10.0)


def _connection(handler: FakeHandler | None = None, **limits: Any
                ) -> tuple[ClientConnection, RecordingTransport, FakeHandler]:
    handler = handler or FakeHandler()
    conn = ClientConnection(handler, replace_limits(**limits))
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, handler


def replace_limits(**changes: Any) -> Limits:
    fields = {name: getattr(LIMITS, name) for name in Limits.__slots__}
    fields.update(changes)
    return Limits(**fields)


def _frames(writes: list[bytes]) -> list[list[Any]]:
    """The messages in each write."""
    decoder = FrameDecoder(1 << 20)
    return [decoder.feed(data) for data in writes]


def _replies(transport: RecordingTransport) -> list[Any]:
    out = [m for part in _frames(transport.writes) for m in part]
    transport.writes.clear()
    return out


async def _handshake(conn: ClientConnection, transport: RecordingTransport) -> HelloOk:
    conn.data_received(Encoder().encode(Hello(1, [1], "test", TOKEN)))
    await asyncio.sleep(0)
    (reply,) = _replies(transport)
    assert isinstance(reply, HelloOk)
    return reply


async def _next_write(transport: RecordingTransport) -> None:
    transport.wrote.clear()
    async with asyncio.timeout(5):
        await transport.wrote.wait()


async def _replies_to(transport: RecordingTransport, *ids: int) -> dict[int, Any]:
    """The replies to requests `ids`, by id, however many writes they take (5 s at most)."""
    found: dict[int, Any] = {}
    async with asyncio.timeout(5):
        while True:
            found.update((m.id, m) for m in _replies(transport))
            if set(ids) <= set(found):
                return found
            transport.wrote.clear()
            await transport.wrote.wait()


# ---- pacing ----------------------------------------------------------------------------------


async def test_a_turns_replies_leave_in_one_write() -> None:
    conn, transport, _ = _connection(reply_batch=16)
    await _handshake(conn, transport)
    conn.data_received(b"".join(Encoder().encode(Ping(i)) for i in range(2, 12)))
    assert transport.writes == []  # nothing before the turn ends
    await asyncio.sleep(0)
    (replies,) = _frames(transport.writes)
    assert replies == [Pong(i) for i in range(2, 12)]


async def test_a_long_run_of_replies_is_written_in_parts() -> None:
    conn, transport, _ = _connection(reply_batch=16)
    await _handshake(conn, transport)
    conn.data_received(b"".join(Encoder().encode(Ping(i)) for i in range(2, 42)))
    # Two full parts went out while the turn was still running; the rest at its end.
    assert [len(part) for part in _frames(transport.writes)] == [16, 16]
    await asyncio.sleep(0)
    parts = _frames(transport.writes)
    assert [len(part) for part in parts] == [16, 16, 8]
    assert [m for part in parts for m in part] == [Pong(i) for i in range(2, 42)]
    await asyncio.sleep(0)
    assert len(transport.writes) == 3  # no empty or repeated write afterwards


def _queries(first: int, count: int, sql: str = READ, **hints: Any) -> bytes:
    return b"".join(Encoder().encode(Query(i, sql, [1], hints=Hints(shard="europe", **hints)))
                    for i in range(first, first + count))


async def test_reading_pauses_while_too_many_requests_are_in_flight() -> None:
    conn, transport, handler = _connection(FakeHandler(fast=False), max_in_flight=4)
    await _handshake(conn, transport)
    handler.backend_free.clear()
    conn.data_received(_queries(2, 3))
    assert transport.reading and conn.in_flight == 3
    # Three more in one read: one runs, two wait, and the router stops reading from this client.
    conn.data_received(_queries(5, 3))
    assert not transport.reading and conn.in_flight == 4
    handler.backend_free.set()
    for _ in range(100):  # one loop turn at a time, a bounded number of them
        if not conn.in_flight and len(handler.handled) == 6:
            break
        await asyncio.sleep(0)
    assert transport.reading and transport.pauses == 1
    assert sorted(r.id for r in _replies(transport)) == [2, 3, 4, 5, 6, 7]
    assert [m.id for m in handler.handled] == [2, 3, 4, 5, 6, 7]  # in the order read


async def test_fast_path_requests_count_until_their_result_comes_back() -> None:
    conn, transport, handler = _connection(max_in_flight=4)
    await _handshake(conn, transport)
    conn.data_received(_queries(2, 4))
    callbacks = handler.callbacks
    assert not transport.reading and conn.in_flight == 4 and not handler.handled
    callbacks[0]([[1]], "SELECT 1", 0.001, None, None)
    assert not transport.reading  # 3 left: not yet down to half of 4
    callbacks[1]([[1]], "SELECT 1", 0.001, None, None)
    assert conn.in_flight == 2
    await asyncio.sleep(0)  # one loop turn: reading resumes outside the reply callbacks
    assert transport.reading
    for callback in callbacks[2:]:
        callback([[1]], "SELECT 1", 0.001, None, None)
    assert conn.in_flight == 0
    await asyncio.sleep(0)  # one loop turn: the replies are written
    replies = _replies(transport)
    assert sorted(m.id for m in replies) == [2, 3, 4, 5]
    assert all(isinstance(m, Rows) and m.rows == [[1]] for m in replies)
    assert handler.recorded == [("query", "europe", "replica", "ok")] * 4


async def test_a_timed_out_request_stops_counting_and_a_gone_client_gets_nothing_run() -> None:
    """A fast-path request that timed out no longer holds the client back (its node may never
    answer); one whose client has gone is neither answered nor run again."""
    conn, transport, handler = _connection(max_in_flight=2)
    await _handshake(conn, transport)
    conn.data_received(_queries(2, 2, timeout_ms=1))
    assert not transport.reading and conn.in_flight == 2
    errors: list[Any] = []
    async with asyncio.timeout(5):  # both 1 ms timers fire, and their errors are written
        while len(errors) < 2:
            await _next_write(transport)
            errors = [m for part in _frames(transport.writes) for m in part]
    await asyncio.sleep(0)  # one loop turn: reading resumes outside the timer callbacks
    assert conn.in_flight == 0 and transport.reading
    assert sorted(e.id for e in errors) == [2, 3] and all(e.code == ErrorCode.TIMEOUT for e in errors)
    handler.callbacks[0]([[1]], "SELECT 1", 0.001, None, None)  # the late result is dropped
    assert conn.in_flight == 0

    conn.data_received(_queries(4, 1))
    conn.connection_lost(None)
    assert handler.closed_conns == [conn] and conn not in handler.open
    handler.callbacks[2](None, "", 0.0, PipelineError("lost"), None)  # would run again, if anyone
    await asyncio.sleep(0)
    assert handler.handled == [] and conn.in_flight == 0


async def test_a_write_that_applies_after_its_timeout_is_still_read_back() -> None:
    """The client was told TIMEOUT (outcome unknown); when the write's result comes in after
    all, its WAL position joins the session's, so its next reads wait for a replica that has
    replayed it."""
    conn, transport, handler = _connection()
    await _handshake(conn, transport)
    conn.data_received(_queries(2, 1, WRITE, timeout_ms=1))
    await _next_write(transport)
    [error] = _replies(transport)
    assert error.code == ErrorCode.TIMEOUT
    assert conn.session.written == {}
    handler.callbacks[0]([], "UPDATE 1", 0.001, None, 123_456)  # it applied, at this position
    assert conn.session.written == {"europe": 123_456}


# ---- the handshake and the connection's limits -----------------------------------------------


async def test_hello_ok_tells_this_connections_limits_and_a_bad_token_closes_it() -> None:
    conn, transport, _ = _connection(max_in_flight=8, node_name="router-b")
    hello_ok = await _handshake(conn, transport)
    assert hello_ok.node == "router-b"
    assert hello_ok.server_info == {"server": "georoute", "shards": ["europe", "asia"],
                                    "max_frame_bytes": 1 << 20, "max_sql_bytes": 1 << 16,
                                    "max_in_flight": 8}
    other, transport, handler = _connection()
    other.data_received(Encoder().encode(Hello(1, [1], "test", "wrong")))
    [refused] = _replies(transport)
    assert isinstance(refused, Error) and refused.code == ErrorCode.AUTH_FAILED
    assert transport.closed and other.closing and handler.errors == ["AUTH_FAILED"]


async def test_a_connection_past_the_limit_is_told_to_try_another_node() -> None:
    handler = FakeHandler()
    first, _, _ = _connection(handler, max_client_connections=1)
    second, transport, _ = _connection(handler, max_client_connections=1)
    [refused] = _replies(transport)
    assert isinstance(refused, Error) and refused.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert refused.retryable and "router-test" in refused.message and transport.closed
    second.connection_lost(None)
    assert handler.open == {first}


async def test_a_draining_node_refuses_new_requests_but_lets_a_transaction_end() -> None:
    conn, transport, handler = _connection(FakeHandler(fast=False))
    await _handshake(conn, transport)
    handler.draining = True
    conn.data_received(_queries(2, 1) + _queries(3, 1, tx=5) + Encoder().encode(Commit(4, 5)))
    replies = await _replies_to(transport, 2, 3, 4)
    assert replies[2].code == ErrorCode.SHUTTING_DOWN and replies[2].retryable
    assert isinstance(replies[3], Status) and isinstance(replies[4], Status)
    assert [m.id for m in handler.handled] == [3, 4]


async def test_a_lost_client_cancels_its_requests_and_is_forgotten() -> None:
    conn, transport, handler = _connection(FakeHandler(fast=False))
    await _handshake(conn, transport)
    handler.backend_free.clear()
    conn.data_received(_queries(2, 2))
    await asyncio.sleep(0)
    tasks = set(conn.tasks)
    assert len(tasks) == 2 and len(handler.handled) == 2
    conn.connection_lost(None)
    assert conn.session.closed and handler.closed_conns == [conn] and not handler.open
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks) and not conn.tasks
    assert transport.writes == []  # nothing answered to a client that has gone


# ---- the fast path's answers -----------------------------------------------------------------


async def test_a_read_whose_pipeline_connection_was_lost_runs_again_unless_draining() -> None:
    conn, transport, handler = _connection()
    await _handshake(conn, transport)
    conn.data_received(_queries(2, 2))
    handler.callbacks[0](None, "", 0.0, PipelineError("reset"), None)
    assert [m.id for m in handler.handled] == []  # a task, started on the next turn
    await _next_write(transport)
    assert [m.id for m in handler.handled] == [2]
    assert isinstance(_replies(transport)[0], Status)  # answered by the ordinary path

    handler.draining = True
    handler.callbacks[1](None, "", 0.0, PipelineError("reset"), None)
    await _next_write(transport)
    [error] = _replies(transport)
    assert error.id == 3 and error.code == ErrorCode.NODE_UNAVAILABLE
    assert [m.id for m in handler.handled] == [2]


async def test_a_fast_path_write_carries_its_token_read_with_it_or_apart() -> None:
    conn, transport, handler = _connection()
    await _handshake(conn, transport)
    conn.data_received(_queries(2, 2, WRITE))
    handler.callbacks[0]([], "UPDATE 1", 0.001, None, 5_000)  # the position came with it
    await _next_write(transport)
    [with_position] = _replies(transport)
    assert with_position.id == 2 and with_position.ryw_token == "europe:5000"
    assert conn.session.written == {"europe": 5_000} and handler.tokens_read == []
    handler.callbacks[1]([], "UPDATE 1", 0.001, None, None)  # unknown: read apart, in a task
    assert conn.in_flight == 1
    await _next_write(transport)
    [read_apart] = _replies(transport)
    assert read_apart.id == 3 and read_apart.ryw_token == "europe:7"
    assert handler.tokens_read == ["europe"] and conn.in_flight == 0


async def test_a_failed_request_is_a_typed_error_that_knows_whether_it_could_have_written(
) -> None:
    """The handler says which requests are reads: a connection lost under a read may be sent
    again; under a write it may have applied, so not by default."""

    class Failing(FakeHandler):
        async def handle(self, session: Session, message: Message) -> tuple[bytes, Outcome | None]:
            self.handled.append(message)
            raise NodeUnavailableError("europe-node1: connection lost", sent=True)

    conn, transport, handler = _connection(Failing(fast=False))
    await _handshake(conn, transport)
    conn.data_received(_queries(2, 1, READ) + _queries(3, 1, WRITE))
    replies = await _replies_to(transport, 2, 3)
    assert {m.code for m in replies.values()} == {ErrorCode.NODE_UNAVAILABLE}
    assert (replies[2].retryable, replies[3].retryable) == (True, False)
    assert handler.recorded == [("query", "", "", "NODE_UNAVAILABLE")] * 2
    assert handler.errors == ["NODE_UNAVAILABLE"] * 2
