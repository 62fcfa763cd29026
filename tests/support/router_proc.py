"""Runs a real `georoute router` process for tests, from a Config written to a TOML file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol import FrameDecoder, Hello, Query, encode
from router.config import Config, NodeAddress, TableConfig
from router.tools.config_write import config_to_toml

TOKEN = "test-token-0123456789"
REGIONS = ("north_america", "europe", "asia")
SCRATCH_DDL = """
CREATE TABLE IF NOT EXISTS rt_items (
    item_id uuid PRIMARY KEY,
    region  text NOT NULL,
    payload text NOT NULL DEFAULT ''
)"""


def number(config: Config, region: str) -> int:
    return config.shards[region].number


def port_of(config: Config, region: str, role: str) -> int:
    shard = config.shards[region]
    return shard.primary.port if role == "primary" else shard.replicas[0].port

# A scratch table the router tests own: routed by its id or its region column.
SCRATCH_TABLE = TableConfig(name="rt_items", region_column="region", id_columns=("item_id",))


def router_config(base: Config, *, port_shift: int = 0, **router_changes: object) -> Config:
    """`base` (the session's test config) with the scratch table and router tweaks."""
    tables = dict(base.tables)
    tables[SCRATCH_TABLE.name] = SCRATCH_TABLE
    r = replace(
        base.router,
        listen_port=base.router.listen_port + port_shift,
        node_name=f"test-router-{port_shift}",
        **router_changes,  # type: ignore[arg-type]
    )
    metrics = replace(base.metrics, port=base.metrics.port + port_shift if base.metrics.port else 0)
    heartbeat = replace(base.heartbeat, port=base.heartbeat.port + port_shift)
    api = replace(base.api, port=base.api.port + port_shift)
    return replace(base, router=r, metrics=metrics, heartbeat=heartbeat, api=api, tables=tables)


def primary_through(config: Config, shard: str, port: int) -> Config:
    """`config` with `shard`'s primary reached on 127.0.0.1:`port` (a fault proxy in front of
    it), and every node over TCP: with a socket_dir the router would use the nodes' Unix
    sockets, around the proxy."""
    entry = config.shards[shard]
    shards = {**config.shards, shard: replace(
        entry, primary=NodeAddress("127.0.0.1", port, entry.primary.database))}
    return replace(config, shards=shards, database=replace(config.database, socket_dir=""))


@dataclass
class RouterProcess:
    config: Config
    path: Path
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    _eof: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def dsn(self) -> str:
        return f"georoute://{self.config.router.listen_host}:{self.config.router.listen_port}"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.output.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_output(self, text: str, timeout: float = 20.0) -> bool:
        """Wait (on a condition, with a deadline) until the router printed `text`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.output):
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return False
                self._cond.wait(left)
        return True

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def running_router(config: Config, path: Path,
                   extra_env: dict[str, str] | None = None) -> Iterator[RouterProcess]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_toml(config))
    env = dict(os.environ)
    env.update(extra_env or {})
    env[config.router.auth_token_env] = TOKEN
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.tools.cli", "--config", str(path), "router"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rp = RouterProcess(config, path, proc)
    pump = threading.Thread(target=rp._pump, daemon=True)
    pump.start()
    try:
        if not rp.wait_for_output("ready on", timeout=30):
            rp.stop()
            raise RuntimeError("router did not start:\n" + "".join(rp.output))
        yield rp
    finally:
        rp.stop()
        pump.join(timeout=5)


async def raw_request(port: int, query: Query, client_name: str, within: float = 20.0) -> Any:
    """One request on a raw protocol connection to the router at `port` on 127.0.0.1: the
    router's own reply, whatever the client library's deadline or retries would have done."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode(Hello(1, [1], client_name, TOKEN)) + encode(query))
        decoder = FrameDecoder(1 << 20)
        async with asyncio.timeout(within):
            while data := await reader.read(65536):
                for reply in decoder.feed(data):
                    if getattr(reply, "id", None) == query.id:
                        return reply
        raise AssertionError("the router closed the connection without a reply")
    finally:
        writer.close()
