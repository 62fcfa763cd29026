"""One PostgreSQL node of the local cluster: initdb, base backup, pg_ctl start/stop, and the
few SQL probes the manager waits on. Server programs run as the server user."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from router.errors import ClusterError
from router.tools.localcluster.binaries import PgBinaries
from router.tools.localcluster.layout import Layout, pid_is_ours, read_pid
from router.tools.localcluster.process import run_checked, terminate, wait_exit
from router.tools.localcluster.users import ServerUser

__all__ = ["PgNode", "PgRunner"]

T = TypeVar("T")

_PRIMARY_CONF = """
# ---- written by georoute cluster (port, cluster_name, sockets are on the pg_ctl command line)
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# WAL kept for standbys beyond what slots hold: a node rejoined after a failover (pg_rewind)
# replays from the last checkpoint before the timelines forked, which the new primary's own
# checkpoints would otherwise have recycled (a rejoin then waited for WAL that was gone).
wal_keep_size = 128MB
hot_standby = on
wal_log_hints = on
fsync = off
synchronous_commit = on
full_page_writes = on
shared_buffers = 32MB
max_connections = 200
logging_collector = off
"""

# WAL segments of 1 MiB, not PostgreSQL's 16: the nodes archive whole segments, and every
# forced switch (a base backup, a restore, archive_timeout) archives one, mostly empty. With
# 16 MiB the backup tests took 46 s, with 1 MiB 14 s, on the same loaded machine.
_WAL_SEGMENT_MB = 1
# Prepared (two-phase) transactions a node may hold at once: each in-flight commit over
# several shards holds one per participant until phase two, so this bounds them.
MAX_PREPARED_TRANSACTIONS = 100

_HBA = """# written by georoute cluster: local trust only
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


@dataclass(frozen=True, slots=True)
class PgNode:
    """A database node as configured: `primary_port` is set for replicas only."""

    name: str
    shard: str
    port: int
    database: str
    config_key: str
    primary_port: int | None = None

    @property
    def is_replica(self) -> bool:
        return self.primary_port is not None

    @property
    def slot(self) -> str:
        return self.name.replace("-", "_")


async def poll_until(check: Callable[[], Awaitable[T | None]], deadline: float, what: str) -> T:
    """Await `check` until it returns a value (not None), or raise when `deadline` passes."""
    last: BaseException | None = None
    while True:
        try:
            result = await check()
            if result is not None:
                return result
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            last = exc
        if time.monotonic() > deadline:
            detail = f": {last}" if last else ""
            raise ClusterError(f"timed out waiting for {what}{detail}")
        await asyncio.sleep(0.02)


class PgRunner:
    """Carries out pg commands for nodes of one layout, as one server user."""

    def __init__(
        self, bins: PgBinaries, user: ServerUser, layout: Layout, db_user: str,
        shared_socket_dir: str = "", settings: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self.bins = bins
        self.user = user
        self.layout = layout
        self.db_user = db_user
        # [database] socket_dir: a second socket directory the router connects through.
        self.shared_socket_dir = shared_socket_dir
        # Per-shard settings for the command line (WAL archiving: localcluster/archive.py).
        self.settings = settings

    # ---- files and processes -----------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        return self.user.popen_kwargs(self.layout.data_root)

    def user_kwargs(self) -> dict[str, Any]:
        """subprocess keyword arguments that run a server program as the server user."""
        return self._kwargs()

    def pid(self, node: PgNode) -> int | None:
        """The postmaster pid if it is alive and ours, else None."""
        pgdata = self.layout.pgdata(node.name)
        pid = read_pid(pgdata / "postmaster.pid")
        return pid if pid_is_ours(pid, pgdata) else None

    def initialized(self, node: PgNode) -> bool:
        return (self.layout.pgdata(node.name) / "PG_VERSION").exists()

    def _prepare_dirs(self, node: PgNode) -> None:
        node_dir = self.layout.node_dir(node.name)
        node_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(node_dir, 0o700)
        self.user.chown(node_dir)
        sock = self.layout.socket_dir(node.name, node.port)
        sock.mkdir(parents=True, exist_ok=True)
        os.chmod(sock, 0o700)
        self.user.chown(sock)

    def initdb(self, node: PgNode) -> None:
        self._prepare_dirs(node)
        pgdata = self.layout.pgdata(node.name)
        shutil.rmtree(pgdata, ignore_errors=True)  # a half-made dir from an interrupted run
        run_checked(
            [self.bins.tool("initdb"), "-D", str(pgdata), "-U", self.db_user,
             "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions",
             f"--wal-segsize={_WAL_SEGMENT_MB}"],
            f"initdb for {node.name}", timeout=120, **self._kwargs(),
        )
        with open(pgdata / "postgresql.conf", "a") as fh:
            fh.write(_PRIMARY_CONF)
        (pgdata / "pg_hba.conf").write_text(_HBA)

    def basebackup(self, node: PgNode, primary_port: int) -> None:
        self._prepare_dirs(node)
        pgdata = self.layout.pgdata(node.name)
        shutil.rmtree(pgdata, ignore_errors=True)
        run_checked(
            [self.bins.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port),
             "-U", self.db_user, "-D", str(pgdata), "-R", "-X", "stream", "-C", "-S", node.slot,
             "--checkpoint=fast", "--no-sync"],
            f"pg_basebackup for {node.name} from port {primary_port}", timeout=300,
            **self._kwargs(),
        )

    def remove_stale_pidfile(self, node: PgNode) -> None:
        """After a node died (e.g. kill -9): its postmaster.pid, and its socket and lock file
        in the shared socket directory, which PostgreSQL only removes on a clean exit."""
        if self.pid(node) is not None:
            return
        (self.layout.pgdata(node.name) / "postmaster.pid").unlink(missing_ok=True)
        # The node's own socket directory too: PostgreSQL removes a stale lock file itself only
        # when its pid is gone, and a killed postmaster whose parent (init here) does not reap
        # it stays a zombie, so its lock file refused every restart ("lock file ... already
        # exists").
        dirs = [self.layout.socket_dir(node.name, node.port)]
        if self.shared_socket_dir:
            dirs.append(Path(self.shared_socket_dir))
        for sock_dir in dirs:
            sock = sock_dir / f".s.PGSQL.{node.port}"
            lock = sock.with_name(sock.name + ".lock")
            try:
                lines = lock.read_text().splitlines()
            except OSError:
                continue
            # The lock file's second line is the data directory: only ours are ours to remove.
            if len(lines) > 1 and lines[1] == str(self.layout.pgdata(node.name)):
                sock.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)

    def start(self, node: PgNode, wait_seconds: int = 60) -> int:
        """pg_ctl start and wait until it accepts connections; returns the postmaster pid."""
        self.remove_stale_pidfile(node)
        self._prepare_dirs(node)
        pgdata = self.layout.pgdata(node.name)
        sock = str(self.layout.socket_dir(node.name, node.port))
        if self.shared_socket_dir:
            sock += "," + self.shared_socket_dir
        opts = (
            f"-p {node.port} -c cluster_name={node.name} "
            f"-c unix_socket_directories={shlex.quote(sock)} "
            # Two-phase commit (PREPARE TRANSACTION) needs slots; a standby needs at least as
            # many as its primary. On the command line, so clusters made before it get it too.
            f"-c max_prepared_transactions={MAX_PREPARED_TRANSACTIONS}"
        )
        for key, value in (self.settings(node.shard) if self.settings else {}).items():
            opts += f" -c {shlex.quote(f'{key}={value}')}"
        run_checked(
            [self.bins.tool("pg_ctl"), "start", "-w", "-t", str(wait_seconds), "-D", str(pgdata),
             "-l", str(self.layout.log_file(node.name)), "-o", opts],
            f"pg_ctl start for {node.name} (log: {self.layout.log_file(node.name)})",
            timeout=wait_seconds + 30, start_new_session=True, **self._kwargs(),
        )
        pid = self.pid(node)
        if pid is None:
            raise ClusterError(f"{node.name} started but left no live postmaster.pid")
        return pid

    def stop(self, node: PgNode, mode: str = "fast", timeout: float = 15.0) -> None:
        """Stop by pg_ctl; if that fails, SIGTERM/SIGKILL the recorded pid. Clears stale files."""
        pid = self.pid(node)
        if pid is not None:
            try:
                run_checked(
                    [self.bins.tool("pg_ctl"), "stop", "-w", "-t", str(int(timeout)),
                     "-m", mode, "-D", str(self.layout.pgdata(node.name))],
                    f"pg_ctl stop for {node.name}", timeout=timeout + 5, **self._kwargs(),
                )
            except ClusterError:
                pass
            if not wait_exit(pid, 1.0):
                terminate(pid)
        self.remove_stale_pidfile(node)

    # ---- SQL probes --------------------------------------------------------------------------

    async def connect(self, port: int, database: str = "postgres") -> asyncpg.Connection:
        return await asyncpg.connect(
            host="127.0.0.1", port=port, user=self.db_user, database=database, timeout=3
        )

    async def fetchrow(self, port: int, sql: str, *args: Any) -> asyncpg.Record | None:
        conn = await self.connect(port)
        try:
            return await conn.fetchrow(sql, *args)
        finally:
            await conn.close()

    async def set_synchronous(self, port: int, synchronous: bool) -> None:
        """Synchronous streaming replication on or off for the node at `port`, in its
        postgresql.auto.conf (not on the command line: a promoter must be able to turn it off
        on a new primary that has no standby yet, and rejoin on again)."""
        conn = await self.connect(port)
        try:
            if synchronous:
                await conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            else:
                await conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def wait_writable(self, node: PgNode, deadline: float) -> None:
        """Until the primary takes a write; then create the node's database if missing."""

        async def check() -> bool | None:
            conn = await self.connect(node.port)
            try:
                await conn.fetchval("SELECT txid_current()")
                exists = await conn.fetchval(
                    "SELECT 1 FROM pg_database WHERE datname = $1", node.database
                )
                if not exists:
                    ident = '"' + node.database.replace('"', '""') + '"'
                    await conn.execute(f"CREATE DATABASE {ident}")
                return True
            finally:
                await conn.close()

        await poll_until(check, deadline, f"{node.name} (port {node.port}) to accept writes")

    async def drop_inactive_slot(self, primary_port: int, slot: str) -> None:
        await self.fetchrow(
            primary_port,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = $1 AND NOT active",
            slot,
        )

    async def replication_state(self, primary_port: int, slot: str) -> str | None:
        row = await self.fetchrow(
            primary_port,
            "SELECT r.state FROM pg_replication_slots s"
            " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
            slot,
        )
        return row["state"] if row else None

    async def wait_streaming(self, node: PgNode, primary_port: int, deadline: float) -> None:
        async def check() -> bool | None:
            state = await self.replication_state(primary_port, node.slot)
            return True if state == "streaming" else None

        await poll_until(check, deadline, f"{node.name} (port {node.port}) to stream")
