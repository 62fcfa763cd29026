"""How the router writes replies to a client connection: all of one event-loop turn in one
write, but at most `router.reply_batch` replies to a write (a fake transport records writes;
the router node is built from router.toml and never started, so no database is involved)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from protocol import Encoder, FrameDecoder, Hello, HelloOk, Ping, Pong
from router.config import load_config
from router.daemon import RouterNode
from router.server import ClientConnection

REPO = Path(__file__).resolve().parents[2]


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _connection(monkeypatch: pytest.MonkeyPatch, reply_batch: int) -> tuple[ClientConnection,
                                                                             RecordingTransport]:  # fmt: skip
    monkeypatch.setenv("GEOROUTE_TOKEN", "secret")
    config = load_config(REPO / "router.toml")
    config = dataclasses.replace(
        config, router=dataclasses.replace(config.router, reply_batch=reply_batch)
    )
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
