"""`georoute api`'s HTTP protocol (uvicorn's httptools one over a transport that joins the
writes of one event-loop step): a response leaves in one write, status line, headers and
body together, where uvicorn alone makes two; what is held is sent before a close; and
keep-alive requests still get their answers in order (a recording transport stands in for
the socket). And its collector settings."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from api.serve import _protocol_class


class RecordingTransport:
    """The part of asyncio.Transport uvicorn's protocol uses, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))
        self.changed.set()

    def close(self) -> None:
        self.closed = True
        self.changed.set()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = f"answer to {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def connect(protocol_class: Any) -> tuple[Any, RecordingTransport]:
    config = uvicorn.Config(app, http=protocol_class, lifespan="off", log_config=None,
                            access_log=False)
    protocol = protocol_class(config=config, server_state=ServerState(),
                              app_state={}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def until(transport: RecordingTransport, condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            transport.changed.clear()
            await transport.changed.wait()


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def test_a_response_is_one_write() -> None:
    protocol, transport = connect(_protocol_class())
    protocol.data_received(request("/one"))
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)  # the response is sent
    for _ in range(3):  # anything still held would go out within a step
        await asyncio.sleep(0)
    assert len(transport.writes) == 1, transport.writes
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nanswer to /one")


async def test_uvicorn_alone_writes_twice() -> None:
    """The premise of the change: without it, headers and body are separate writes."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    protocol, transport = connect(HttpToolsProtocol)
    protocol.data_received(request("/one"))
    await until(transport, lambda: len(transport.writes) >= 2)
    assert transport.writes[1] == b"answer to /one"


async def test_pipelined_requests_answered_in_order() -> None:
    protocol, transport = connect(_protocol_class())
    protocol.data_received(request("/a") + request("/b") + request("/c"))
    await until(transport, lambda: b"".join(transport.writes).count(b"HTTP/1.1 200") == 3)
    joined = b"".join(transport.writes)
    assert joined.index(b"answer to /a") < joined.index(b"answer to /b") < \
        joined.index(b"answer to /c")


@pytest.mark.parametrize("raw", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost\r\n\r\n"])
async def test_held_bytes_are_sent_before_a_close(raw: bytes) -> None:
    """uvicorn answers a malformed request with 400 and closes at once: the answer must not
    be lost in the held writes."""
    protocol, transport = connect(_protocol_class())
    protocol.data_received(raw)
    await until(transport, lambda: transport.closed)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 400 Bad Request")


def test_start_up_objects_are_frozen_out_of_collections() -> None:
    """`georoute api` freezes what start-up made (a full collection of it took about 50 ms,
    a stall for every request in flight) and collects young objects less often."""
    from api.serve import _GC_YOUNG_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        gc.unfreeze()
        tune_gc()
        assert gc.get_freeze_count() > 10_000  # this test process's modules and more
        assert gc.get_threshold()[0] == _GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
