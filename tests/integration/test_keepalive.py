"""Every TCP connection georoute makes or accepts has keepalives (protocol/sockets.py), so a
peer that vanishes silently is noticed: the router's pooled and pipelined connections to a
node (which also get `database.tcp_user_timeout_seconds`), the client's to the router, and
the router's end of it (neither with a user timeout: a client may stop reading as long as it
likes). The last is checked from outside the router process, in the kernel's socket table:
an idle established socket runs a timer only when keepalives are on."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import client
from protocol.sockets import KEEPALIVE_IDLE_S
from router.cluster import LocalCluster
from router.config import Config
from router.pool import BackendPool
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, RouterProcess


def assert_kept_alive(sock: socket.socket, user_timeout_ms: int) -> None:
    assert sock.family == socket.AF_INET
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == user_timeout_ms


async def test_pooled_and_pipelined_connections_to_a_node_are_kept_alive(
    cluster: LocalCluster, migrated: Config
) -> None:
    db = dataclasses.replace(migrated.database, socket_dir="",  # TCP, not the Unix socket
                             tcp_user_timeout_seconds=45.0)  # fmt: skip
    address = migrated.shards["europe"].primary
    pool = BackendPool("ka-node", address, db, acquire_timeout=5, statement_timeout=0)
    try:
        await pool.start()
        backend = await pool.acquire()
        try:
            _, rows, _ = await backend.run("SELECT 1", ())
            assert rows == [(1,)]
            transport = backend.conn._transport  # type: ignore[attr-defined]
            assert_kept_alive(transport.get_extra_info("socket"), 45_000)
        finally:
            pool.release(backend)
        assert pool.pipeline.connections == db.pipeline_connections
        for conn in pool.pipeline._conns:
            assert conn._transport is not None
            assert_kept_alive(conn._transport.get_extra_info("socket"), 45_000)
    finally:
        await pool.close()


def _timer_of(local_port: int, remote_port: int) -> int | None:
    """The `tr` (active timer) field of the established TCP socket 127.0.0.1:local_port ->
    :remote_port in /proc/net/tcp: 0 none, 2 keepalive (see proc(5))."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, timer = fields[1], fields[2], fields[3], fields[5]
        if (state == "01" and int(local.split(":")[1], 16) == local_port
                and int(remote.split(":")[1], 16) == remote_port):  # fmt: skip
            return int(timer.split(":")[0], 16)
    return None


async def test_client_and_router_ends_of_a_tcp_connection_are_kept_alive(
    router: RouterProcess,
) -> None:
    c = await client.connect(router.dsn, token=TOKEN)
    async with c:
        assert await c.fetchval("SELECT 1", shard="europe") == 1
        conn = c.connections[0]
        assert conn._transport is not None
        sock = conn._transport.get_extra_info("socket")
        assert_kept_alive(sock, 0)
        client_port = sock.getsockname()[1]
        # The router's end, idle now: its keepalive timer is armed (without keepalives an
        # idle established socket has none).
        async def armed() -> bool:
            return _timer_of(router.config.router.listen_port, client_port) == 2

        await wait_until(armed, what="the router's end to run its keepalive timer")
