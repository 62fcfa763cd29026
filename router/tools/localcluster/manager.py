"""LocalCluster: brings the whole local cluster (every shard's primary and replicas, and the
document store) up, reports on it, and takes it down again, from one Config."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from router.config import Config
from router.errors import ClusterError, PortInUseError
from router.tools.localcluster.archive import WalArchive
from router.tools.localcluster.binaries import PgBinaries, find_pg_bin, make_reachable
from router.tools.localcluster.docstore_process import DocStoreProcess
from router.tools.localcluster.failover_ops import (
    RejoinReport,
    SwitchoverReport,
    rejoin,
    switchover,
)
from router.tools.localcluster.layout import (
    Layout,
    config_dir,
    existing_layout,
    pid_is_ours,
    prepare_layout,
    state_dir_of,
)
from router.tools.localcluster.postgres import PgNode, PgRunner
from router.tools.localcluster.process import terminate
from router.tools.localcluster.restores import stop_all_restored
from router.tools.localcluster.status import NodeStatus, ProcessState
from router.tools.localcluster.survey import collect_status
from router.tools.localcluster.users import ServerUser, ensure_server_user

__all__ = ["DOCSTORE", "LocalCluster"]

DOCSTORE = "docstore"
T = TypeVar("T")
R = TypeVar("R")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code.

    Always on a helper thread: asyncio.run on the caller's thread would fail inside a running
    loop and would reset the thread's current event loop (which pytest-asyncio relies on).
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Run fn over items in threads (each mostly waits on a child process)."""
    todo = list(items)
    if not todo:
        return []
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
        return list(pool.map(fn, todo))


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """Serialise up/down of one state dir across processes (e.g. two test sessions at once).

    The lock file lives outside the state dir, which `down --purge` deletes.
    """
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    path = Path(tempfile.gettempdir()) / f"georoute-{digest}.lock"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _port_free(port: int) -> bool:
    if not 0 < port < 65536:
        raise ClusterError(f"port {port} is out of range")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _nodes_of(config: Config) -> dict[str, PgNode]:
    """Every PostgreSQL node, named as the router names it (Config.all_nodes): each shard's
    `primary` entry is made with initdb, its replicas are made from it."""
    nodes: dict[str, PgNode] = {}
    for shard in config.shards.values():
        named = [(name, a) for s, name, a in config.all_nodes() if s == shard.name]
        (name, p), replicas = named[0], named[1:]
        nodes[name] = PgNode(name, shard.name, p.port, p.database,
                             f"shards.{shard.name}.primary.port")
        for i, (name, rep) in enumerate(replicas):
            nodes[name] = PgNode(
                name, shard.name, rep.port, rep.database,
                f"shards.{shard.name}.replicas[{i}].port", primary_port=p.port,
            )
    return nodes


class LocalCluster:
    """The local cluster described by `config`. Every method is synchronous and safe to call
    from inside a running event loop (SQL probes then run on a helper thread)."""

    def __init__(self, config: Config, timeout: float = 120.0) -> None:
        self.config = config
        self.timeout = timeout
        self.nodes = _nodes_of(config)
        self._docstore_port = config.document_store_port()
        self._runner: PgRunner | None = None

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return state_dir_of(self.config)

    @property
    def docstore_uri(self) -> str:
        return self.config.document_store.uri

    def node(self, name: str) -> PgNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise ClusterError(f"no node {name!r} (known: {', '.join(self.nodes)})") from None

    def dsn(self, name: str) -> str:
        node = self.node(name)
        return f"postgresql://{self.config.database.user}@127.0.0.1:{node.port}/{node.database}"

    def pid(self, name: str) -> int | None:
        """The pid of a running node we started, else None."""
        if name == DOCSTORE:
            if self._docstore_port is None:
                return None
            return self._docstore(existing_layout(self.config)).pid()
        return self._pg(existing_layout(self.config)).pid(self.node(name))

    # ---- wiring ------------------------------------------------------------------------------

    def _docstore(self, layout: Layout) -> DocStoreProcess:
        if self._docstore_port is None:
            raise ClusterError("document_store.uri does not point at this machine")
        return DocStoreProcess(layout, self._docstore_port)

    def _pg(
        self, layout: Layout, user: ServerUser | None = None, found: PgBinaries | None = None
    ) -> PgRunner:
        """A runner for `layout`; binaries are resolved on first use (down may not need them)."""
        if self._runner is not None and self._runner.layout == layout:
            return self._runner
        user = user or ensure_server_user(self.config.cluster.server_user)
        recorded = layout.load_manifest().get("pg_bin")
        if found is None and recorded and (Path(recorded) / "pg_ctl").exists():
            bins = PgBinaries(Path(recorded), "manifest")
        else:
            found = found or find_pg_bin(self.config.cluster.pg_bin, config_dir(self.config))
            bins = make_reachable(found, user)
        self._runner = PgRunner(bins, user, layout, self.config.database.user,
                                self.config.database.socket_dir,
                                WalArchive(self.config, layout, user).settings)
        return self._runner

    def _record(self, runner: PgRunner, docstore: DocStoreProcess | None) -> None:
        layout = runner.layout
        manifest = {
            "config": self.config.source,
            "state_dir": str(layout.state_dir),
            "data_root": str(layout.data_root),
            "pg_bin": str(runner.bins.bin_dir),
            "server_user": runner.user.name,
            "updated_at": time.time(),
            "nodes": {
                name: {"kind": "postgres", "port": node.port, "pid": runner.pid(node),
                       "data_dir": str(layout.pgdata(name)), "log": str(layout.log_file(name))}
                for name, node in self.nodes.items()
            },
        }
        if docstore is not None:
            manifest["nodes"][DOCSTORE] = {  # type: ignore[index]
                "kind": "secantusdb", "port": docstore.port, "pid": docstore.pid(),
                "data_dir": str(layout.docstore_data), "log": str(layout.docstore_log),
            }
        layout.save_manifest(manifest)

    # ---- lifecycle ---------------------------------------------------------------------------

    def up(self) -> list[NodeStatus]:
        """Start whatever is not running; wait for writable primaries and streaming replicas."""
        with _exclusive(self.state_dir):
            self._up()
        return self.status()

    def _up(self) -> None:
        deadline = time.monotonic() + self.timeout
        user = ensure_server_user(self.config.cluster.server_user)
        # Binaries first: a bad cluster.pg_bin must fail before anything is created.
        found = find_pg_bin(self.config.cluster.pg_bin, config_dir(self.config))
        layout = prepare_layout(self.config, user)
        runner = self._pg(layout, user, found)
        docstore = self._docstore(layout) if self._docstore_port else None

        down = [n for n in self.nodes.values() if runner.pid(n) is None]
        wanted = [(n.name, n.port, n.config_key) for n in down]
        if docstore is not None and docstore.pid() is None:
            wanted.append((DOCSTORE, docstore.port, "document_store.uri"))
        taken = [w for w in wanted if not _port_free(w[1])]
        if taken:
            desc = "; ".join(f"port {p} for node {n} ({k})" for n, p, k in taken)
            raise PortInUseError(
                f"already in use by a process georoute did not start: {desc}; nothing was started"
            )

        if docstore is not None:
            docstore.start()  # boots while PostgreSQL does
        primaries = [n for n in self.nodes.values() if not n.is_replica]
        replicas = [n for n in self.nodes.values() if n.is_replica]

        def start_primary(node: PgNode) -> None:
            if not runner.initialized(node):
                runner.initdb(node)
            runner.start(node)

        _parallel(start_primary, [n for n in primaries if n in down])
        run_sync(self._wait_all(runner.wait_writable(n, deadline) for n in primaries))

        fresh = [n for n in replicas if n in down and not runner.initialized(n)]
        run_sync(self._wait_all(runner.drop_inactive_slot(n.primary_port or 0, n.slot)
                                for n in fresh))

        def start_replica(node: PgNode) -> None:
            if not runner.initialized(node):
                runner.basebackup(node, node.primary_port or 0)
            runner.start(node)

        try:
            _parallel(start_replica, [n for n in replicas if n in down])
            run_sync(self._wait_all(
                runner.wait_streaming(n, n.primary_port or 0, deadline) for n in replicas
            ))
            # [shards.<region>] synchronous, on every node: any of them may be promoted.
            run_sync(self._wait_all(
                runner.set_synchronous(n.port, self.config.shards[n.shard].synchronous)
                for n in self.nodes.values()
            ))
            if docstore is not None:
                docstore.wait_ready(deadline)
        finally:
            self._record(runner, docstore)

    @staticmethod
    async def _wait_all(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
        await asyncio.gather(*coros)

    def down(self, purge: bool = False) -> None:
        """Stop exactly what we started (by pid), clear stale pid files; purge deletes the data."""
        with _exclusive(self.state_dir):
            self._down(purge)

    def _down(self, purge: bool) -> None:
        layout = existing_layout(self.config)
        if not layout.state_dir.exists():
            return
        probe = PgRunner(PgBinaries(Path("/nonexistent"), "none"), _NOBODY, layout, "",
                         self.config.database.socket_dir)
        running = [n for n in self.nodes.values() if probe.pid(n) is not None]
        if running:
            runner = self._pg(layout)
            _parallel(runner.stop, running)
        for node in self.nodes.values():
            probe.remove_stale_pidfile(node)
        if self._docstore_port is not None:
            self._docstore(layout).stop()
        stop_all_restored(layout)  # nodes `georoute restore` made: their files are ours too
        # Anything still recorded as ours (e.g. its postmaster.pid was deleted by hand).
        for entry in layout.load_manifest().get("nodes", {}).values():
            pid, marker = entry.get("pid"), entry.get("data_dir")
            if isinstance(pid, int) and marker and pid_is_ours(pid, Path(marker)):
                terminate(pid)
        if purge:
            for node in self.nodes.values():
                sock = layout.socket_dir(node.name, node.port)
                if sock.parent != layout.node_dir(node.name):
                    shutil.rmtree(sock, ignore_errors=True)
            if layout.data_root != layout.state_dir:
                shutil.rmtree(layout.data_root, ignore_errors=True)
            shutil.rmtree(layout.state_dir, ignore_errors=True)
            self._runner = None
        elif layout.manifest_path.exists():
            manifest = layout.load_manifest()
            for entry in manifest.get("nodes", {}).values():
                entry["pid"] = None
            layout.save_manifest(manifest)

    # ---- single nodes (for failover work) ------------------------------------------------------

    def stop_node(self, name: str, mode: str = "immediate") -> None:
        layout = existing_layout(self.config)
        if name == DOCSTORE:
            self._docstore(layout).stop()
        else:
            self._pg(layout).stop(self.node(name), mode=mode)

    def start_node(self, name: str) -> None:
        """Start one stopped node (as it is on disk: no initdb, no base backup)."""
        layout = existing_layout(self.config)
        if name == DOCSTORE:
            docstore = self._docstore(layout)
            docstore.start()
            docstore.wait_ready(time.monotonic() + self.timeout)
            return
        runner = self._pg(layout)
        node = self.node(name)
        if runner.pid(node) is None:
            runner.start(node)

    def shard_nodes(self, shard: str) -> list[PgNode]:
        nodes = [n for n in self.nodes.values() if n.shard == shard]
        if not nodes:
            raise ClusterError(f"no shard {shard!r} (known: "
                               f"{', '.join(sorted({n.shard for n in self.nodes.values()}))})")
        return nodes

    def rejoin(self, name: str) -> RejoinReport:
        """Make `name` (e.g. a fenced old primary) a streaming replica of its shard's agreed
        primary (failover_ops.py)."""
        node = self.node(name)
        runner = self._pg(existing_layout(self.config))
        synchronous = self.config.shards[node.shard].synchronous
        return run_sync(rejoin(runner, node, self.shard_nodes(node.shard), synchronous,
                               self.timeout))

    def switchover(self, shard: str, to: str | None = None) -> SwitchoverReport:
        """A planned change of `shard`'s primary, no acknowledged write lost (failover_ops.py)."""
        runner = self._pg(existing_layout(self.config))
        synchronous = self.config.shards[shard].synchronous
        return run_sync(switchover(runner, self.shard_nodes(shard), to, synchronous,
                                   self.timeout))

    def runner(self) -> PgRunner:
        """What carries out pg commands on this cluster's nodes (for operator tools that
        stop, start and rebuild nodes one by one, such as `georoute restore --replace`)."""
        return self._pg(existing_layout(self.config))

    def pause_replay(self, name: str) -> None:
        self._sql(name, "SELECT pg_wal_replay_pause()")

    def resume_replay(self, name: str) -> None:
        self._sql(name, "SELECT pg_wal_replay_resume()")

    def _sql(self, name: str, sql: str) -> None:
        runner = self._pg(existing_layout(self.config))
        run_sync(runner.fetchrow(self.node(name).port, sql))

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        layout = existing_layout(self.config)
        probe = PgRunner(PgBinaries(Path("/nonexistent"), "none"), _NOBODY, layout,
                         self.config.database.user)
        out = run_sync(collect_status(probe, list(self.nodes.values())))
        if self._docstore_port is not None:
            pid = self._docstore(layout).pid()
            out.append(NodeStatus(
                DOCSTORE, None, None, self._docstore_port, pid,
                ProcessState.RUNNING if pid else ProcessState.STOPPED,
            ))
        return out


# A placeholder user for runners that only read pid files and run SQL (never a program).
_NOBODY = ServerUser("nobody", -1, -1, switch=False)
