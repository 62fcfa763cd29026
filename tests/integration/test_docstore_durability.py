"""A document write the router acknowledged survives a crash of the document store.

Found by the checker (tests/support/checker.py) killing the store under load: with the
driver's default write concern (w:1, no journal) SecantusDB, like a standalone mongod,
acknowledges a write before it is journaled, and `kill -9` lost 12 of 113 acknowledged
documents. The router now asks for journaled writes (j: true). This test runs a store of its
own (the session's is shared), writes through the router's DocStore, kills the store with
SIGKILL mid-stream and restarts it on the same files."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from router.backend.docstore import DocStore
from router.config import DocumentStoreConfig
from tests.support.nodeproc import gone

WRITES = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Store:
    """One SecantusDB process of this test's own, on `port`, over the files in `path`."""

    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).parent / "secantusd-py"
        self.proc = subprocess.Popen(
            [str(exe), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path",
             str(self.path / "data"), "--log-level", "WARNING"],
            cwd=self.path, env={**os.environ, "HOME": str(self.path)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> int:
        assert self.proc is not None
        pid = self.proc.pid
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[_Store]:
    s = _Store(tmp_path, _free_port())
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def _ready(uri: str) -> AsyncMongoClient[dict[str, object]]:
    direct: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=500)

    async def pinged() -> bool:
        try:
            await direct.admin.command("ping")
        except Exception:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 60
    while not await pinged():
        assert asyncio.get_running_loop().time() < deadline, "the store did not start"
    return direct


async def test_acknowledged_documents_survive_kill_9_of_the_store(store: _Store) -> None:
    uri = f"mongodb://127.0.0.1:{store.port}/?retryWrites=false"
    direct = await _ready(uri)
    router_store = DocStore(DocumentStoreConfig(uri=uri, database="durability"))
    acknowledged = 0
    try:
        for i in range(WRITES):
            await router_store.run("probe", "insert_one", {"document": {"_id": i}})
            acknowledged += 1
        await gone([store.kill()], within=30)
        store.start()
        await direct.close()
        direct = await _ready(uri)
        found = await direct["durability"]["probe"].count_documents({})
    finally:
        await router_store.close()
        await direct.close()
    assert (acknowledged, found) == (WRITES, WRITES)
