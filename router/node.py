"""One router node's lifecycle: startup -> serve -> shutdown, and reload on SIGHUP.

Startup connects a pool to every database node (reporting which are reachable; a node that is
down does not stop the router), starts the lag monitor, the metrics endpoint and the protocol
server. SIGTERM/SIGINT stop accepting, drain in-flight requests within drain_timeout_seconds,
then close. SIGHUP re-reads router.toml: changed nodes get new pools (old ones drained), and a
new Runtime (config, view, classifier, executor: engine/runtime.py) is swapped in whole; a bad
config is logged and the old one kept.

The node hands its client connections a RequestHandler (server/handlers.py) and their Limits,
nothing of itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pymongo.uri_parser import parse_uri

from protocol import Encoder
from router.backend.catalog import learn_builtin_reads
from router.backend.docstore import DocStore
from router.backend.pool import NodeUnavailableError
from router.backend.tls import ListenerTLS, forget_contexts
from router.backend.wal import LsnReader
from router.config import Config, FailoverMode, RouterConfig, load_config, router_socket_path
from router.core.documents import DocumentShapes
from router.core.health import HealthEvent
from router.engine.idempotency import run_sweeper
from router.engine.parser_thread import start_parser
from router.engine.recovery import Recovery
from router.engine.runtime import Runtime
from router.errors import ConfigError
from router.ha.heartbeat import HeartbeatService
from router.ha.memory import FailoverMemory, memory_path
from router.ha.monitor import LagMonitor
from router.ha.shard_checks import ShardChecks
from router.ha.sweeper import SilentLinkSweeper
from router.ha.synchrony import Synchrony
from router.ha.topology import NodeState, ShardState, Topology
from router.metrics import Metrics
from router.server.connection import ClientConnection, Limits
from router.server.drain import drain
from router.server.handlers import RequestHandler
from router.types import Role

__all__ = ["RouterNode", "run_router"]

log = logging.getLogger("georoute.router")




_TLS_HANDSHAKE_SECONDS = 10.0  # a client that connects and never completes TLS is dropped


def _listener_tls(router: RouterConfig) -> ListenerTLS | None:
    if not router.tls_cert_file:
        return None
    try:
        return ListenerTLS(router)
    except (OSError, ValueError) as exc:
        why = f"cannot load the certificate and key: {exc}"
        raise ConfigError("router.tls_cert_file", why) from exc


def _hosts_of(uri: str) -> str:
    """The document store's hosts, for the topology report: never its credentials or
    options (a password or token may sit in either)."""
    try:
        nodes = parse_uri(uri, warn=True)["nodelist"]
    except Exception:  # a URI it cannot parse is reported as unknown
        return "?"
    return ",".join(f"{host}:{port}" for host, port in nodes)


class RouterNode:
    def __init__(self, config: Config, *, config_path: str | None = None,
                 docstore: DocStore | None = None) -> None:
        """`docstore`: the document store's component (by default one for
        config.document_store; tests give their own)."""
        self.config_path = config_path
        token = os.environ.get(config.router.auth_token_env)
        if not token or not token.strip():
            # No client could be told apart from another: refused, the demo included
            # (`georoute demo` makes up a token when none is set).
            state = "is not set" if token is None else "is empty"
            raise ConfigError("router.auth_token_env",
                              f"environment variable {config.router.auth_token_env} {state}")
        self.metrics = Metrics()
        self._own_shapes = docstore is None  # shapes built from the config: rebuilt on reload
        self.docstore = docstore or DocStore(config.document_store,
                                             DocumentShapes(config.shards).validate)
        # Set when a client connection or a transaction ends: what a drain waits for, once
        # no request is left but transactions are still open.
        self._ended = asyncio.Event()
        # pg_catalog's functions that are not volatile (router/backend/catalog.py), once a
        # node has listed them; until then only router.read_only_functions are reads.
        self._builtin_reads: frozenset[str] = frozenset()
        self.runtime = self._runtime(config, Topology.from_config(config))
        self.limits = Limits.of(config)  # a new connection's (reloaded with the config)
        self.handler = RequestHandler(
            self.runtime, encoder=Encoder(config.router.max_frame_bytes), metrics=self.metrics,
            docstore=self.docstore, auth_token=token, report=self.topology_report,
            spawn=self.spawn, closed=self._ended.set,
        )
        managed = FailoverMode(config.failover.mode) is FailoverMode.MANAGED
        # Managed mode: each shard's newest timeline seen writable, kept across restarts.
        self.memory = FailoverMemory(memory_path(config)) if managed else None
        self.monitor = LagMonitor(config, self.topology, memory=self.memory)
        self.heartbeat = (HeartbeatService(config, lambda: self.topology, memory=self.memory)
                          if config.heartbeat.enabled else None)
        self.checks = ShardChecks(lambda: self.topology, lambda: self.config)
        self.synchrony: Synchrony | None = None  # managed failover only (startup)
        self._reload_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._unix_server: asyncio.Server | None = None
        self._unix_path: str | None = None
        self._stopped = asyncio.Event()
        self._tls: ListenerTLS | None = None  # the TCP listener's, when it has TLS
        self._bg: set[asyncio.Task[Any]] = set()

    def _runtime(self, config: Config, topology: Topology) -> Runtime:
        return Runtime.build(config, topology, scatter_stats=self.metrics.scatter,
                             transaction_ended=self._ended.set,
                             builtin_reads=self._builtin_reads)

    def _learned_builtin_reads(self, names: frozenset[str]) -> None:
        self._builtin_reads = names
        if self.config.router.read_only_builtins:
            self.runtime.classifier.learn_builtin_reads(names)

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def topology(self) -> Topology:
        return self.runtime.topology

    @property
    def connections(self) -> set[ClientConnection]:
        return self.handler.connections

    def _accept(self) -> ClientConnection:
        return ClientConnection(self.handler, self.limits)

    # ---- lifecycle -------------------------------------------------------------------------

    async def _start_pools(self, nodes: list[NodeState]) -> None:
        async def start(node: NodeState) -> None:
            try:
                await node.pool.start()
                node.record(HealthEvent.PROBE_OK)
            except NodeUnavailableError as exc:
                node.record(HealthEvent.CONNECT_FAILED, str(exc))

        await asyncio.gather(*(start(n) for n in nodes))
        for node in nodes:
            state = "reachable" if node.available else f"UNREACHABLE ({node.last_error})"
            log.info("node %s %s:%d %s", node.name, node.address.host, node.address.port, state)

    async def startup(self) -> None:
        self._tls = _listener_tls(self.config.router)  # a bad certificate stops us at once
        start_parser()  # first: its large stack size is set process-wide while it is made
        await self._start_pools(list(self.topology.nodes()))
        learning = asyncio.ensure_future(learn_builtin_reads(
            self.config.database, lambda: [(n.name, n.address) for n in self.topology.nodes()],
            self._learned_builtin_reads))
        with contextlib.suppress(TimeoutError):  # not learned yet: asked on in the background
            await asyncio.wait_for(asyncio.shield(learning), self.config.database
                                   .connect_timeout_seconds)
        if not learning.done():
            self._bg.add(learning)
            learning.add_done_callback(self._bg.discard)
        self.monitor.start()
        await asyncio.wait_for(self.monitor.wait_round(), 10)
        if self.heartbeat is not None:  # after the first round: our view is measured
            await self.heartbeat.start()
        self.metrics.heartbeat = self.heartbeat
        self.spawn(
            run_sweeper(lambda: self.topology, self.config.router.idempotency_retention_seconds)
        )
        # Two-phase commits left in doubt (by any router node): settled now, then regularly.
        self.spawn(Recovery(lambda: self.topology, self.config.router.node_name,
                            self.config.router.twophase_grace_seconds,
                            self.config.router.twophase_recovery_interval_seconds).run())
        self.spawn(SilentLinkSweeper(lambda: self.topology).run())  # half-open backend links
        self.metrics.checks = self.checks
        self.spawn(self.checks.run())  # reference-table copies and last backups, as metrics
        if FailoverMode(self.config.failover.mode) is FailoverMode.MANAGED:
            # Synchronous shards replicate synchronously again once a standby streams after
            # a failover (the promoter turned it off).
            self.synchrony = Synchrony(lambda: self.topology, lambda: self.config)
            self.spawn(self.synchrony.run())
        self.metrics.bind(self.topology, self.runtime.classifier, lambda: len(self.connections))
        self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
        r = self.config.router
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, r.listen_host, r.listen_port, backlog=1024,
            ssl=self._tls.context if self._tls else None,
            ssl_handshake_timeout=_TLS_HANDSHAKE_SECONDS if self._tls else None,
        )
        log.info("router %s listening on %s:%d%s", r.node_name, r.listen_host, r.listen_port,
                 " (TLS)" if self._tls else "")
        path = router_socket_path(r)
        if path is not None:
            try:
                await self._listen_unix(loop, path)
            except OSError as exc:  # e.g. another user's file in /tmp: TCP still serves
                log.error("not listening on %s: %s", path, exc)

    @property
    def unix_path(self) -> str | None:
        """The Unix socket the router listens on, if any."""
        return self._unix_path

    async def _listen_unix(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        # The TCP port is ours now, so a socket file of that port is a stale one of ours;
        # one that another user owns is not ours to remove (nor to trust).
        with contextlib.suppress(FileNotFoundError):
            found = os.lstat(path)
            if found.st_uid != os.getuid():
                raise PermissionError(f"{path} belongs to uid {found.st_uid}, not to us")
            if stat.S_ISSOCK(found.st_mode):
                os.unlink(path)
        self._unix_server = await loop.create_unix_server(self._accept, path, backlog=1024)
        self._unix_path = path
        log.info("router %s listening on %s", self.config.router.node_name, path)

    async def serve(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def shutdown(self) -> None:
        self.handler.draining = True
        if self._server is not None:
            self._server.close()
        if self._unix_server is not None:
            self._unix_server.close()
            if self._unix_path is not None:  # Python 3.11's asyncio leaves the file behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._unix_path)
        pipelines = [n.pool.pipeline for n in self.topology.nodes()]
        await drain(self.connections, pipelines, self._ended,
                    self.config.router.drain_timeout_seconds)
        for conn in list(self.connections):
            if conn.session.transactions:
                await self.runtime.executor.transactions.close_session(conn.session)
                conn.session.transactions.clear()
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self.monitor.stop()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        await asyncio.gather(*(n.pool.close() for n in self.topology.nodes()))
        await asyncio.gather(*(s.lsn.close() for s in self.topology.shards.values()))
        await self.docstore.close()
        self.metrics.close()
        for task in self._bg:
            task.cancel()
        log.info("router %s stopped", self.config.router.node_name)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ---- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file. Returns False (and keeps the old config) if it is bad.
        One reload at a time: a second SIGHUP waits for the first to finish."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        r_new, r_old = new.router, self.config.router
        if (r_new.listen_host, r_new.listen_port, r_new.listen_socket_dir) != (
            r_old.listen_host, r_old.listen_port, r_old.listen_socket_dir,
        ):
            log.warning("router.listen_* changes need a restart; keeping the old address")
        serving = self._tls.paths if self._tls is not None else ("", "", "")
        if (r_new.tls_cert_file, r_new.tls_key_file, r_new.tls_client_ca_file) != serving:
            # Not applied while serving; loud when it would change who may connect.
            level = logging.ERROR if r_new.tls_client_ca_file != serving[2] else logging.WARNING
            log.log(level, "router.tls_* changes need a restart; the listener keeps "
                    "certificate %s, client CA %s", serving[0] or "none (no TLS)",
                    serving[2] or "none (no client certificates asked for)")
        elif self._tls is not None:
            try:  # the same paths, perhaps new files (a renewed certificate)
                self._tls.renew()
            except (OSError, ValueError) as exc:
                log.error("reload refused, keeping the running config: cannot load "
                          "router.tls_cert_file and tls_key_file: %s", exc)
                return False
            log.info("reloaded the TLS certificate from %s", r_new.tls_cert_file)
        # Certificates renewed at the same paths are read afresh by new connections.
        forget_contexts()
        # New [database] settings (TLS, user, pool sizes...) change every node: each gets a
        # new pool, and the old ones drain. Otherwise only added or moved nodes do.
        same_database = new.database == self.config.database
        if not same_database:
            log.info("[database] changed: new pools for every node")
        for key, before, after in (
            ("document_store", self.config.document_store, new.document_store),
            ("metrics", self.config.metrics, new.metrics),
            ("router.auth_token_env", r_old.auth_token_env, r_new.auth_token_env),
            ("router.max_frame_bytes", r_old.max_frame_bytes, r_new.max_frame_bytes),
            ("router.idempotency_retention_seconds", r_old.idempotency_retention_seconds,
             r_new.idempotency_retention_seconds),
            ("heartbeat", self.config.heartbeat, new.heartbeat),
            ("failover", self.config.failover, new.failover),
        ):
            if before != after:
                log.warning("%s changes need a restart; keeping the running one", key)
        new = replace(new, document_store=self.config.document_store, metrics=self.config.metrics,
                      heartbeat=self.config.heartbeat, failover=self.config.failover,
                      router=replace(r_new, auth_token_env=r_old.auth_token_env,
                                     max_frame_bytes=r_old.max_frame_bytes,
                                     idempotency_retention_seconds=(
                                         r_old.idempotency_retention_seconds)))
        old_nodes = {n.name: n for n in self.topology.nodes()}
        old_shards = dict(self.topology.shards)
        fresh = Topology.from_config(new)
        to_start: list[NodeState] = []
        retired: list[NodeState] = []
        kept_primaries: list[tuple[ShardState, ShardState]] = []  # (fresh, live) shards
        for shard in fresh.shards.values():
            for i, node in enumerate(list(shard.nodes())):
                old = old_nodes.get(node.name)
                if old is not None and old.address == node.address and same_database:
                    # Same node: keep its pool, health and lag.
                    if i == 0:
                        shard.primary = old
                        kept_primaries.append((shard, old_shards[shard.name]))
                    else:
                        shard.replicas[i - 1] = old
                    old_nodes.pop(node.name)
                else:
                    to_start.append(node)
        retired.extend(old_nodes.values())
        await self._start_pools(to_start)
        await self.monitor.stop()
        # After the last await: the live shards keep their readers until the swap below.
        for shard, live in kept_primaries:
            # Same primary: keep its WAL-position reader (writes may be waiting on it); the
            # fresh one goes with the old shard, closed below.
            shard.lsn, live.lsn = live.lsn, shard.lsn
        for shard in fresh.shards.values():
            live_shard = old_shards.get(shard.name)
            if live_shard is not None:  # the newest timeline seen writable: no going back
                shard.timeline_floor = live_shard.timeline_floor
        for old_shard in old_shards.values():
            self.spawn(old_shard.lsn.close())  # readers of changed primaries, or unused ones
        for shard in fresh.shards.values():
            self._keep_live_primary(shard, new)
        if self._own_shapes and list(new.shards) != list(self.config.shards):
            # Documents name their region: one added (or removed) in router.toml is (or is
            # no longer) a valid one. Found adding a region under load: a user moved to it
            # was refused for their preferences document until the router restarted.
            self.docstore.set_validator(DocumentShapes(new.shards).validate)
        # One step, no await: requests from here on read the new runtime whole.
        self.runtime = self.handler.runtime = self._runtime(new, fresh)
        self.limits = Limits.of(new)
        self.monitor = LagMonitor(new, fresh, memory=self.memory)
        self.monitor.start()
        self.metrics.bind(fresh, self.runtime.classifier)
        for node in retired:
            self.spawn(self._retire(node))
        log.info("reloaded %s: %d new nodes, %d retired", self.config_path, len(to_start),
                 len(retired))
        return True

    def _keep_live_primary(self, shard: ShardState, new: Config) -> None:
        """Roles are live state: a kept node that the monitor made the primary (external
        failover) stays the primary, whatever names router.toml gives; a reload must never
        send writes back to the old one (which may be a stale, writable node)."""
        live = next((n for n in shard.replicas if n.role is Role.PRIMARY), None)
        if live is None:
            return
        reader = (shard.lsn if shard.lsn.name == live.name
                  else LsnReader(live.name, live.address, new.database))
        old = shard.make_primary(live, reader)
        if old is not reader:
            self.spawn(old.close())
        log.warning("shard %s keeps %s as its primary across the reload", shard.name, live.name)

    async def _retire(self, node: NodeState) -> None:
        """Close an old pool once its borrowed connections come back (bounded by drain time)."""
        await node.pool.drain(self.config.router.drain_timeout_seconds)
        await node.pool.close()

    def topology_report(self) -> dict[str, Any]:
        return {
            "router": self.config.router.node_name,
            "config": self.config.source,
            "connections": len(self.connections),
            "shards": self.topology.snapshot(),
            "document_store": _hosts_of(self.config.document_store.uri),
            "heartbeat": self.heartbeat.report() if self.heartbeat is not None else None,
            # shard -> how often this node turned synchronous replication back on there, and
            # off on a new primary whose promoter did not (router/ha/synchrony.py)
            "synchrony": ({"on": dict(self.synchrony.turned_on),
                           "off": dict(self.synchrony.turned_off)}
                          if self.synchrony is not None else None),
            # managed mode: the floors kept across restarts (router/ha/memory.py)
            "failover_memory": ({"file": str(self.memory.path),
                                 "shards": self.memory.snapshot(),
                                 "write_errors": self.memory.write_errors}
                                if self.memory is not None else None),
        }


@contextlib.contextmanager
def _signals(node: RouterNode) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: node.spawn(node.reload()))
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


# Requests allocate many short-lived containers, freed by reference counting; with Python's
# default of a young-generation collection every 700 allocations, the collector ran thousands
# of times a second and found nothing. A scratch A/B at 16 clients, 4 rounds each (with
# gc.freeze() after start-up, since dropped): router CPU per point read, median 74 -> 63 us.
_GC_YOUNG_THRESHOLD = 50_000


def raise_fd_limit(config: Config) -> int:
    """Every client and backend connection holds a file descriptor: raise the soft limit
    to the hard one (distributions often start daemons at 1,024), and warn when
    router.max_client_connections cannot fit under it. Returns the soft limit now in force."""
    db = config.database
    nodes = len(config.all_nodes())
    needed = (config.router.max_client_connections
              + nodes * (db.pool_max_size + db.pipeline_connections + 2) + 64)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        # An infinite hard limit still has a ceiling (nr_open, macOS's OPEN_MAX): if the
        # first try is refused, ask for what is needed.
        for target in dict.fromkeys((ceiling, min(ceiling, needed))):
            if target <= soft:
                continue
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
                break
            except (ValueError, OSError) as exc:
                log.warning("could not raise the open-file limit from %d to %d: %s",
                            soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-file limit (%d) is below the %d descriptors that "
                    "router.max_client_connections and the pools may need: raise the hard "
                    "limit (ulimit -Hn, LimitNOFILE=) or lower max_client_connections",
                    soft, needed)
    return int(soft)


def _tune_gc() -> None:
    """Collect young objects less often. (gc.freeze() would also spare start-up's objects the
    scans, but what a reload replaces would then never be collected.)"""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)


async def _main(config: Config, config_path: str | None) -> None:
    raise_fd_limit(config)
    node = RouterNode(config, config_path=config_path)
    await node.startup()
    _tune_gc()
    with _signals(node):
        path = node.unix_path
        print(f"georoute router {config.router.node_name} ready on "
              f"{config.router.listen_host}:{config.router.listen_port}"
              + (f" and {path}" if path else ""), flush=True)
        try:
            await node.serve()
        finally:
            await node.shutdown()


def run_router(config: Config, config_path: str | Path | None = None) -> None:
    import uvloop

    uvloop.run(_main(config, None if config_path is None else str(config_path)))
