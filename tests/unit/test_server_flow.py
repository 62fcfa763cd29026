"""How the router paces one client connection: replies of one event-loop turn leave in one
write, but at most `router.reply_batch` to a write; reading pauses while
`router.max_in_flight_per_connection` requests are outstanding. A fake transport records
writes and pauses; the router node is built from router.toml and never started, and where a
request must wait, its backend is a stand-in (no database is involved)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from protocol import Encoder, ErrorCode, FrameDecoder, Hello, HelloOk, Hints, Ping, Pong, Query
from protocol.messages import Role as WireRole
from router.backend.pgwire import PipelineError
from router.config import load_config
from router.engine.outcome import Outcome, Routed
from router.node import RouterNode
from router.server.connection import ClientConnection

REPO = Path(__file__).resolve().parents[2]


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reading = True
        self.pauses = 0
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
        return False

    def close(self) -> None:
        pass


def _connection(monkeypatch: pytest.MonkeyPatch, reply_batch: int = 16,
                max_in_flight: int = 1024) -> tuple[ClientConnection, RecordingTransport]:  # fmt: skip
    monkeypatch.setenv("GEOROUTE_TOKEN", "secret")
    config = load_config(REPO / "router.toml")
    router = dataclasses.replace(config.router, reply_batch=reply_batch,
                                 max_in_flight_per_connection=max_in_flight)  # fmt: skip
    config = dataclasses.replace(config, router=router)
    conn = ClientConnection(RouterNode(config))
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def _frames(writes: list[bytes]) -> list[list[Any]]:
    """The messages in each write."""
    decoder = FrameDecoder(1 << 20)
    return [decoder.feed(data) for data in writes]


async def _handshake(conn: ClientConnection, transport: RecordingTransport) -> None:
    conn.data_received(Encoder().encode(Hello(1, [1], "test", "secret")))
    await asyncio.sleep(0)
    (reply,) = _frames(transport.writes)
    assert [type(m) for m in reply] == [HelloOk]
    transport.writes.clear()


async def test_a_turns_replies_leave_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, transport = _connection(monkeypatch, reply_batch=16)
    await _handshake(conn, transport)
    conn.data_received(b"".join(Encoder().encode(Ping(i)) for i in range(2, 12)))
    assert transport.writes == []  # nothing before the turn ends
    await asyncio.sleep(0)
    (replies,) = _frames(transport.writes)
    assert replies == [Pong(i) for i in range(2, 12)]


async def test_a_long_run_of_replies_is_written_in_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, transport = _connection(monkeypatch, reply_batch=16)
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


SQL = "SELECT 1 AS x"


def _queries(first: int, count: int) -> bytes:
    return b"".join(Encoder().encode(Query(i, SQL, hints=Hints(shard="europe")))
                    for i in range(first, first + count))  # fmt: skip


async def test_reading_pauses_while_too_many_requests_are_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, transport = _connection(monkeypatch, max_in_flight=4)
    await _handshake(conn, transport)
    node = conn._node
    backend_free = asyncio.Event()

    async def slow_query(session: Any, sql: str, params: Any, hints: Any) -> Outcome:
        await backend_free.wait()
        return Outcome(["x"], [[1]], "SELECT 1", "europe", "europe-replica1", WireRole.REPLICA)

    monkeypatch.setattr(node.executor, "submit", lambda *args: None)  # no pipeline here
    monkeypatch.setattr(node.executor, "query", slow_query)
    conn.data_received(_queries(2, 3))
    assert transport.reading and conn.in_flight == 3
    # Three more in one read: one runs, two wait, and the router stops reading from this client.
    conn.data_received(_queries(5, 3))
    assert not transport.reading and conn.in_flight == 4 and len(conn._backlog) == 2
    backend_free.set()
    for _ in range(100):  # one loop turn at a time, a bounded number of them
        if not conn.in_flight and not conn._backlog:
            break
        await asyncio.sleep(0)
    assert transport.reading and transport.pauses == 1
    replies = [m for part in _frames(transport.writes) for m in part]
    assert sorted(r.id for r in replies) == [2, 3, 4, 5, 6, 7]


def _fast_path_stand_in(monkeypatch: pytest.MonkeyPatch, conn: ClientConnection) -> list[Any]:
    """Every Query takes the fast path, queued on europe's replica; the returned list gets
    each one's reply callback, to call as its backend's answer."""
    node = conn._node
    shard = node.topology.shards["europe"]
    callbacks: list[Any] = []

    def submit(session: Any, sql: str, params: Any, hints: Any, callback: Any) -> Routed:
        callbacks.append(callback)
        return Routed(["x"], shard.replicas[0], shard, node.classifier.analyze(sql))

    monkeypatch.setattr(node.executor, "submit", submit)
    return callbacks


async def test_fast_path_requests_count_until_their_result_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, transport = _connection(monkeypatch, max_in_flight=4)
    await _handshake(conn, transport)
    callbacks = _fast_path_stand_in(monkeypatch, conn)
    conn.data_received(_queries(2, 4))
    assert not transport.reading and conn.in_flight == 4
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
    assert sorted(m.id for part in _frames(transport.writes) for m in part) == [2, 3, 4, 5]


async def test_a_timed_out_request_stops_counting_and_a_gone_client_gets_nothing_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fast-path request that timed out no longer holds the client back (its node may never
    answer); one whose client has gone is neither answered nor run again."""
    conn, transport = _connection(monkeypatch, max_in_flight=2)
    await _handshake(conn, transport)
    callbacks = _fast_path_stand_in(monkeypatch, conn)
    frames = b"".join(Encoder().encode(Query(i, SQL, hints=Hints(shard="europe", timeout_ms=1)))
                      for i in (2, 3))  # fmt: skip
    conn.data_received(frames)
    assert not transport.reading and conn.in_flight == 2
    errors: list[Any] = []
    async with asyncio.timeout(5):  # both 1 ms timers fire, and their errors are written
        while len(errors) < 2:
            transport.wrote.clear()
            await transport.wrote.wait()
            errors = [m for part in _frames(transport.writes) for m in part]
    await asyncio.sleep(0)  # one loop turn: reading resumes outside the timer callbacks
    assert conn.in_flight == 0 and transport.reading
    assert sorted(e.id for e in errors) == [2, 3] and all(e.code == ErrorCode.TIMEOUT for e in errors)
    callbacks[0]([[1]], "SELECT 1", 0.001, None, None)  # the late result is dropped
    assert conn.in_flight == 0

    conn.data_received(_queries(4, 1))
    conn.connection_lost(None)
    spawned: list[Any] = []
    monkeypatch.setattr(conn, "_spawn_handle", spawned.append)
    callbacks[2](None, "", 0.0, PipelineError("lost"), None)  # would be run again, if anyone
    assert spawned == [] and conn.in_flight == 0


async def test_a_write_that_applies_after_its_timeout_is_still_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client was told TIMEOUT (outcome unknown); when the write's result comes in after
    all, its WAL position joins the session's, so its next reads wait for a replica that has
    replayed it."""
    conn, transport = _connection(monkeypatch)
    await _handshake(conn, transport)
    callbacks = _fast_path_stand_in(monkeypatch, conn)
    write = "UPDATE users SET city = 'x' WHERE user_id = $1"
    conn.data_received(Encoder().encode(Query(2, write, hints=Hints(shard="europe",
                                                                       timeout_ms=1))))  # fmt: skip
    async with asyncio.timeout(5):
        while not transport.writes:
            transport.wrote.clear()
            await transport.wrote.wait()
    [[error]] = _frames(transport.writes)
    assert error.code == ErrorCode.TIMEOUT
    assert conn.session.written == {}
    callbacks[0]([], "UPDATE 1", 0.001, None, 123_456)  # it applied, at this WAL position
    assert conn.session.written == {"europe": 123_456}
