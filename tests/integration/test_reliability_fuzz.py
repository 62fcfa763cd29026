"""Protocol fuzzing of a live router process: connections that send random bytes, mutated and
truncated frames, oversized length prefixes, fields of the wrong type in valid requests,
ext values with random payloads, unknown message types, replies sent as requests, deep
nesting, a statement over the size limit, requests before the handshake and after a failed
one. Each connection gets typed errors (never INTERNAL: bad input is the client's, not a
fault of the router) or is closed; a bystander client is served throughout; afterwards the
router holds no connection more than before and serves on. Seeded, so a failure repeats:
the seed is in the report. 150 connections in `make test`, 3,000 under `pytest -m chaos`."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import client
import protocol as p
from protocol.values import ExtCode
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import LOOPBACK
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router
from tests.unit.test_fuzz_decoder import _mutate

SHIFT = 195  # this module's router: the session router's ports moved by this
SEED = 19
MAX_FRAME = 1 << 20
# Bad input before a good handshake: nothing in it may be served, only refused.
UNSERVED = {"random bytes before the handshake", "a request before Hello",
            "requests after a failed handshake", "unsupported version"}


@pytest.fixture(scope="module")
def router(migrated: Config) -> Iterator[RouterProcess]:
    config = router_config(migrated, port_shift=SHIFT, max_frame_bytes=MAX_FRAME,
                           max_sql_bytes=64 * 1024, handshake_timeout_seconds=3.0)
    with running_router(config, Path(migrated.cluster.state_dir) / "router-fuzz.toml") as proc:
        yield proc


@pytest.fixture
async def db(router: RouterProcess) -> AsyncIterator[client.Client]:
    async with await client.connect(router.dsn, token=TOKEN) as conn:
        yield conn


def _frame(fields: list[Any]) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


HELLO = p.encode(p.Hello(1, [1], "fuzz", TOKEN))
VALID = [
    p.encode(p.Query(2, "SELECT 1", [], p.QueryKind.FETCH, p.Hints(shard="europe"))),
    p.encode(p.Query(3, "SELECT $1::int", [7], p.QueryKind.FETCH, p.Hints(shard="asia"))),
    p.encode(p.Query(4, "SELECT count(*) FROM users", [], p.QueryKind.FETCH, p.Hints())),
    p.encode(p.Batch(5, [("SELECT 1", []), ("SELECT 2", [])], p.Hints(shard="europe"))),
    p.encode(p.Begin(6, p.Hints(shard="europe"), None, False)),
    p.encode(p.Doc(7, "course_content", "find_one", {"filter": {}}, p.Hints())),
    p.encode(p.Admin(8, "topology", {})),
    p.encode(p.Ping(9)),
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 1.5e308])
    if kind == 2:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(40)))
    if kind == 3:
        return rng.randbytes(rng.randrange(40))
    if kind in (4, 5):
        code = rng.choice([*map(int, ExtCode), 0, 99, 127])
        return msgpack.ExtType(code, rng.randbytes(rng.randrange(24)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        return {str(rng.randrange(100)): _random_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return rng.choice(["fetch", "execute", "europe", "strong", "*", "topology", "find"])


def _mutation(rng: random.Random) -> tuple[str, int, Any]:
    """One of tests/unit/test_fuzz_decoder.py's mutations, at a random place."""
    kind = rng.choice(["flip", "replace", "insert", "delete", "repeat", "length", "cut"])
    arg: Any = {"flip": rng.randrange(8), "replace": rng.randrange(256),
                "insert": rng.randbytes(rng.randrange(1, 16)), "delete": rng.randrange(1, 16),
                "repeat": rng.randrange(1, 32), "length": rng.randrange(2**32),
                "cut": 0}[kind]
    return kind, rng.randrange(1 << 30), arg


def scenario(rng: random.Random) -> tuple[str, bytes]:
    """One connection's bytes, and what kind of bad input they are."""
    kind = rng.randrange(14)
    if kind == 0:
        return "random bytes before the handshake", rng.randbytes(rng.randrange(1, 4096))
    if kind == 1:
        return "random bytes after Hello", HELLO + rng.randbytes(rng.randrange(1, 4096))
    if kind == 2:
        data = b"".join(rng.sample(VALID, rng.randrange(1, len(VALID))))
        for _ in range(rng.randrange(1, 4)):
            data = _mutate(data, _mutation(rng))
        return "mutated frames", HELLO + data
    if kind == 3:
        return "oversized length prefix", HELLO + struct.pack(">I", MAX_FRAME + 1) + b"x" * 64
    if kind == 4:
        frame = rng.choice(VALID)
        return "truncated frame", HELLO + frame[: rng.randrange(1, len(frame))]
    if kind == 5:
        code = rng.choice([1, 3, 10, 11, 12, 13, 14, 15, 16])
        fields = [code, rng.randrange(2, 1 << 31)] + [_random_value(rng)
                                                      for _ in range(rng.randrange(6))]
        return "wrong types in a valid frame", HELLO + _frame(fields)
    if kind == 6:
        code = rng.choice([0, 2, 5, 17, 77, 200, 2**31, -1])
        return "unknown message type", HELLO + _frame([code, 11, "x"]) + VALID[0]
    if kind == 7:
        return "a request before Hello", rng.choice(VALID) + HELLO + VALID[0]
    if kind == 8:
        bad = p.encode(p.Hello(1, [1], "fuzz", "not-the-token"))
        return "requests after a failed handshake", bad + VALID[0] + VALID[6]
    if kind == 9:
        return "unsupported version", p.encode(p.Hello(1, [99], "fuzz", TOKEN)) + VALID[0]
    if kind == 10:
        reply = p.encode(p.Status(12, "OK", 1, None, None))
        return "replies sent as requests", HELLO + reply + VALID[0]
    if kind == 11:
        deep = b"\x91" * 100_000 + b"\xc0"  # 100,000 nested one-element arrays
        return "deep nesting", HELLO + struct.pack(">I", len(deep)) + deep + VALID[0]
    if kind == 12:  # msgpack's own reserved ext types (-1 is its timestamp), as a parameter
        raw = rng.choice([msgpack.packb(msgpack.Timestamp(rng.randrange(2**33), 0)),
                          b"\xd4\x80\x00", b"\xd6\xff\xff\xff\xff\xff",
                          b"\xc7\x0c\xff" + rng.randbytes(12)])
        body = msgpack.packb([10, 14, "SELECT $1", ["PLACEHOLDER"], "fetch",
                              {"shard": "europe"}], use_bin_type=True)
        body = body.replace(msgpack.packb("PLACEHOLDER"), raw)
        return "reserved ext types as parameters", HELLO + struct.pack(">I", len(body)) + body
    sql = "SELECT 1 -- " + "x" * (64 * 1024)
    return "statement over max_sql_bytes", HELLO + p.encode(
        p.Query(13, sql, [], p.QueryKind.FETCH, p.Hints(shard="europe")))


async def _one(port: int, data: bytes) -> list[Any]:
    """Send `data`, then the end of the stream; read every reply until the router closes.
    Returns the replies (raises if the router does not close within the deadline)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    replies: list[Any] = []
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        decoder = p.FrameDecoder(MAX_FRAME)
        async with asyncio.timeout(15):
            while chunk := await reader.read(65536):
                replies.extend(decoder.feed(chunk))
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed by the router while we wrote: allowed
    finally:
        writer.transport.abort()
    return replies


async def _fuzz(router: RouterProcess, db: client.Client, connections: int) -> None:
    rng = random.Random(SEED)
    port = router.config.router.listen_port
    baseline = int((await db.topology())["connections"])
    kinds: dict[str, int] = {}
    codes: dict[str, int] = {}
    internal: list[str] = []
    served_unauthenticated: list[str] = []
    bystander: list[float] = []
    stop = asyncio.Event()

    async def steady() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert await db.fetchval("SELECT 1", shard="europe", consistency="strong") == 1
            bystander.append(time.monotonic() - started)

    watcher = asyncio.create_task(steady())
    try:
        for _ in range(0, connections, 25):
            batch = [scenario(rng) for _ in range(25)]
            results = await asyncio.gather(*(_one(port, data) for _, data in batch))
            for (kind, _), replies in zip(batch, results, strict=True):
                kinds[kind] = kinds.get(kind, 0) + 1
                for reply in replies:
                    if kind in UNSERVED and not isinstance(reply, p.Error):
                        served_unauthenticated.append(f"{kind}: {reply!r}"[:200])
                    if isinstance(reply, p.Error):
                        name = p.ErrorCode(reply.code).name
                        codes[name] = codes.get(name, 0) + 1
                        if reply.code == p.ErrorCode.INTERNAL:
                            internal.append(f"{kind}: {reply.message}")
            assert router.proc.poll() is None, "the router died"
    finally:
        stop.set()
        await watcher

    async def calm() -> bool:
        return int((await db.topology())["connections"]) <= baseline

    await wait_until(calm, within=20, what="the fuzzing connections to be gone")
    record(f"protocol fuzzing of a live router ({connections} connections)",
           f"seeded (seed {SEED}) random, mutated, truncated and oversized frames, wrong types, "
           "ext values, unknown kinds, replies as requests, deep nesting, an oversized "
           "statement, requests before Hello and after a failed one", None,
           connections=connections, kinds=len(kinds), error_replies=codes,
           internal_errors=len(internal), bystander_requests=len(bystander),
           bystander_max_ms=round(max(bystander) * 1000, 1))
    assert not internal, internal[:5]
    assert not served_unauthenticated, served_unauthenticated[:5]
    assert max(bystander) < 1.0
    assert len(kinds) >= 12  # every kind of bad input was tried


async def test_protocol_fuzzing_of_a_live_router(router: RouterProcess,
                                                 db: client.Client) -> None:
    await _fuzz(router, db, 150)


@pytest.mark.chaos
async def test_protocol_fuzzing_of_a_live_router_long(router: RouterProcess,
                                                      db: client.Client) -> None:
    await _fuzz(router, db, 3000)
