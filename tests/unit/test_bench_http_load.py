"""bench/http_load.py's pure parts: the wrk script it writes (every client's raw requests,
interleaved, byte for byte) and the figures it reads back from wrk's output."""

from __future__ import annotations

import re

import pytest

from bench.http_load import lua_script, parse_figures


def lua_strings(script: str) -> list[str]:
    """The string literals of the script's request table, unescaped as Lua reads them."""
    table = script[script.index("{") + 1:script.index("\n}\n")]
    out = []
    for literal in re.findall(r'"((?:[^"\\]|\\\d{3})*)"', table):
        out.append(re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), literal))
    return out


def test_requests_interleaved_and_escaped() -> None:
    body = '{"note": "a \\\\ b", "é": 1}'
    clients = [["GET /a HTTP/1.1\r\nHost: h\r\n\r\n", "POST /b HTTP/1.1\r\n\r\n" + body],
               ["GET /c HTTP/1.1\r\n\r\n"]]
    script = lua_script(clients)
    assert lua_strings(script) == [clients[0][0], clients[1][0], clients[0][1], clients[1][0]]
    assert "\r" not in script.split("request = function")[0]  # escaped, not raw
    assert "request = function()" in script and "done = function(" in script


def test_figures_read_back() -> None:
    output = ("Running 5s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n"
              'GEOROUTE-FIGURES {"requests": 1000, "duration_us": 5000000, "p50_us": 7500, '
              '"p99_us": 21000, "connect": 0, "read": 0, "write": 0, "status": 0, '
              '"timeout": 0}\n')
    figures = parse_figures(output, 5)
    assert figures == {"count": 1000, "ops": 200.0, "p50": 7.5, "p99": 21.0, "failures": []}
    failed = parse_figures(output.replace('"status": 0', '"status": 3').replace(
        '"timeout": 0', '"timeout": 1'), 5)
    assert failed["failures"] == ["3 answers of status 400 or over", "1 timeout errors"]


def test_no_figures_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no figures"):
        parse_figures("unable to connect to 127.0.0.1:1 Connection refused\n", 5)


def test_think_time_is_a_random_delay_of_that_mean() -> None:
    clients = [["GET /a HTTP/1.1\r\n\r\n"], ["GET /b HTTP/1.1\r\n\r\n"]]
    assert "delay" not in lua_script(clients)  # saturated: the next request at once
    paced = lua_script(clients, 10)
    assert lua_strings(paced) == [clients[0][0], clients[1][0]]
    delay = paced[paced.index("delay = function()"):]
    # An exponential draw (inverse transform of math.random) of mean 10 ms, rounded to
    # wrk's whole milliseconds; seeded, so a run's pauses repeat.
    assert "math.log(1 - math.random()) * 10.0 + 0.5" in delay
    assert paced.index("math.randomseed(") < paced.index("delay = function()")


def test_the_floor_front_answers_requests_split_and_pipelined(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/api_floor.py, the bare front the API is measured against, on uvloop (as it
    runs) over a loopback socket: each request (line, headers, a body by Content-Length) is
    answered once, in order, however the bytes arrive."""
    import asyncio

    import uvloop

    from bench import api_floor

    calls: list[tuple[bytes, str, str | None, bytes]] = []

    async def answer(domain: object, method: bytes, path: str, token: str | None,
                     body: bytes) -> bytes:
        calls.append((method, path, token, body))
        return b'{"n": %d}' % len(calls)

    monkeypatch.setattr(api_floor, "answer", answer)
    get = b"GET /api/v1/courses/c1 HTTP/1.1\r\nHost: h\r\n\r\n"
    post = (b"POST /api/v1/enrollments/e/lessons/l/complete HTTP/1.1\r\n"
            b"Authorization: Bearer tok\r\nContent-Length: 20\r\n\r\n{\"seconds_spent\": 1}")
    stream = get + post + get

    async def exchange() -> bytes:
        server = await asyncio.get_running_loop().create_server(
            lambda: api_floor._Front(domain=None), "127.0.0.1", 0)  # type: ignore[arg-type]
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for piece in (stream[:10], stream[10:len(get) + 60], stream[len(get) + 60:-3],
                          stream[-3:]):
                writer.write(piece)
                await writer.drain()
            got = b""
            async with asyncio.timeout(10):
                while got.count(b"HTTP/1.1 200 OK\r\n") < 3 or not got.endswith(b"}"):
                    got += await reader.read(65536)
            writer.close()
            return got

    got = uvloop.run(exchange())
    assert calls == [(b"GET", "/api/v1/courses/c1", None, b""),
                     (b"POST", "/api/v1/enrollments/e/lessons/l/complete", "tok",
                      b'{"seconds_spent": 1}'),
                     (b"GET", "/api/v1/courses/c1", None, b"")]
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert got.endswith(b'content-length: 8\r\n\r\n{"n": 3}')
