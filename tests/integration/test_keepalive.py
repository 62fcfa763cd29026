"""Every TCP connection georoute makes or accepts has keepalives (protocol/sockets.py), so a
peer that vanishes silently is noticed: the router's pooled and pipelined connections to a
node (which also get `database.tcp_user_timeout_seconds`), the client's to the router, and
the router's end of it (neither with a user timeout: a client may stop reading as long as it
likes). Each real socket is asked for the settings README promises: probes after 10 s idle,
every 5 s, 3 of them (numbers written here, not read from the module that sets them). The
router process's end is also checked from outside it, in the kernel's socket table: its
keepalive timer runs, due within the 10 s, not Linux's default two hours."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path

import pytest

import client
from router.backend.pool import BackendPool
from router.config import Config, load_config
from router.node import RouterNode
from router.server.connection import ClientConnection
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.router_proc import TOKEN, RouterProcess

REPO = Path(__file__).resolve().parents[2]


IDLE_S, INTERVAL_S, PROBES = 10, 5, 3  # README: "probes after 10 s idle, every 5 s, 3 of them"


def assert_kept_alive(sock: socket.socket, user_timeout_ms: int) -> None:
    assert sock.family == socket.AF_INET
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    tcp = socket.IPPROTO_TCP
    assert (sock.getsockopt(tcp, socket.TCP_KEEPIDLE), sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
            sock.getsockopt(tcp, socket.TCP_KEEPCNT)) == (IDLE_S, INTERVAL_S, PROBES)
    assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == user_timeout_ms


async def test_pooled_and_pipelined_connections_to_a_node_are_kept_alive(
    cluster: LocalCluster, migrated: Config
) -> None:
    db = dataclasses.replace(migrated.database, socket_dir="",  # TCP, not the Unix socket
                             tcp_user_timeout_seconds=45.0)
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


def _timer_of(local_port: int, remote_port: int) -> tuple[int, float] | None:
    """The active timer of the established TCP socket 127.0.0.1:local_port -> :remote_port in
    /proc/net/tcp: its kind (`tr`: 0 none, 2 keepalive) and the seconds until it is due
    (`tm->when`, in clock ticks of USER_HZ), see proc(5)."""
    hz = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, timer = fields[1], fields[2], fields[3], fields[5]
        if (state == "01" and int(local.split(":")[1], 16) == local_port
                and int(remote.split(":")[1], 16) == remote_port):
            kind, when = timer.split(":")
            return int(kind, 16), int(when, 16) / hz
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
        # idle established socket has none), and due within the idle time, not in two hours.
        async def armed() -> bool:
            timer = _timer_of(router.config.router.listen_port, client_port)
            return timer is not None and timer[0] == 2

        await wait_until(armed, what="the router's end to run its keepalive timer")
        timer = _timer_of(router.config.router.listen_port, client_port)
        assert timer is not None and timer[0] == 2 and 0 < timer[1] <= IDLE_S, timer


async def test_the_router_end_of_a_client_connection_has_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Interval and probe count cannot be seen from outside the router process, so here the
    router's per-client protocol (ClientConnection, as the router process runs it) accepts a
    real TCP connection in this process, and its socket is asked."""
    monkeypatch.setenv("GEOROUTE_TOKEN", "secret")
    node = RouterNode(load_config(REPO / "router.toml"))
    accepted: list[ClientConnection] = []

    def accept() -> ClientConnection:
        conn = ClientConnection(node.handler, node.limits)
        accepted.append(conn)
        return conn

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async def made() -> bool:
            return bool(accepted) and accepted[0]._transport is not None

        await wait_until(made, what="the router's end of the connection")
        transport = accepted[0]._transport
        assert transport is not None
        assert_kept_alive(transport.get_extra_info("socket"), 0)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()

    async def gone() -> bool:  # its handshake timer is cancelled with it
        return not node.connections

    await wait_until(gone, what="the router's end to see the connection closed")
