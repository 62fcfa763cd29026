"""The system under test: the bench cluster (its own ports and state dir), its schema and seed
data, one `georoute router` process, and /proc readings of that process's CPU time and RSS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from router.config import Config, load_config
from router.tools.config_write import config_to_toml, with_port_offset
from router.tools.db.migrate import migrate
from router.tools.db.seed import SeedOptions, seed
from router.tools.localcluster import LocalCluster

__all__ = [
    "BENCH_PORT_OFFSET",
    "REPO",
    "TOKEN",
    "RouterProcess",
    "bench_config",
    "cpu_seconds",
    "prepare_data",
    "rss_kib",
    "smoke_offset",
    "start_cluster",
    "syscalls",
]

REPO = Path(__file__).resolve().parent.parent
# The demo uses router.toml's ports as they are, the tests +10000; the bench +20000.
BENCH_PORT_OFFSET = 20000
TOKEN = "bench-token-0123456789"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def bench_config(offset: int, state_dir: Path) -> Config:
    """router.toml moved `offset` ports up with its own state dir (defaults otherwise), and no
    WAL archiving: the bench measures routing, not copying WAL segments to a disk that no
    backup of the bench cluster ever prunes."""
    config = with_port_offset(load_config(REPO / "router.toml"), offset, str(state_dir))
    return replace(config, backup=replace(config.backup, archive_wal=False))


def config_ports(config: Config) -> list[tuple[socket.SocketKind, int]]:
    """Every local port `config` listens on, as (socket type, port)."""
    tcp = [n.port for s in config.shards.values() for n in (s.primary, *s.replicas)]
    tcp += [config.router.listen_port, config.metrics.port, config.api.port]
    doc = config.document_store_port()
    if doc is not None:
        tcp.append(doc)
    ports = [(socket.SOCK_STREAM, p) for p in tcp if p]
    if config.heartbeat.port:
        ports.append((socket.SOCK_DGRAM, config.heartbeat.port))
    return ports


def _free(kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def smoke_offset(path: Path, first: int = BENCH_PORT_OFFSET + 1000, tries: int = 20) -> int:
    """The first offset from `first` (in steps of 100) at which every port of the config at
    `path` is free: two test sessions' smoke runs (fixed ports before) stopped each other."""
    base = load_config(path)
    for k in range(tries):
        offset = first + 100 * k
        moved = with_port_offset(base, offset, "unused")
        if all(_free(kind, port) for kind, port in config_ports(moved)):
            return offset
    raise RuntimeError(f"no free block of ports for the bench smoke run from +{first}")


def start_cluster(config: Config) -> LocalCluster:
    """Bring the bench cluster up; its state dir ignores itself so `git status` stays clean."""
    cluster = LocalCluster(config)
    cluster.up()
    ignore = cluster.state_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return cluster


async def prepare_data(config: Config, users: int) -> None:
    """Migrate every shard and load `users` users' worth of deterministic data."""
    await migrate(config, documents=False)
    await seed(config, SeedOptions(users=users, documents=False, progress=False))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of `pid` so far (/proc/<pid>/stat utime and stime)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields_after_name = fh.read().rsplit(b")", 1)[1].split()
    # Fields 14 and 15 of stat(5); the list starts at field 3 (state).
    return int(fields_after_name[11]) / _CLK_TCK, int(fields_after_name[12]) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat's first line:
    all but idle and iowait), to set against a run's requests: the whole stack's CPU per
    request, whichever process spent it."""
    with open("/proc/stat", "rb") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLK_TCK


def syscalls(pid: int) -> tuple[int, int]:
    """Read and write system calls of `pid` so far (/proc/<pid>/io syscr and syscw): with the
    CPU time they say how well the router batches its I/O."""
    counts = {}
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            counts[key] = int(value)
    return counts["syscr"], counts["syscw"]


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class RouterProcess:
    """A `python -m router.tools.cli router` child process; stopped by its own pid."""

    config: Config
    config_path: Path
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _pump: threading.Thread | None = None

    @property
    def dsn(self) -> str:
        """The router's Unix socket when it has one (the way a co-located application reaches
        it, as the direct baseline reaches PostgreSQL), else its TCP address."""
        r = self.config.router
        if r.listen_socket_dir:
            return f"georoute://{quote(r.listen_socket_dir, safe='')}:{r.listen_port}"
        return f"georoute://{r.listen_host}:{r.listen_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if "ready on" in line:
                self._ready.set()
        self._ready.set()  # EOF: wake the waiter, which then sees the process gone

    def start(self, timeout: float = 30.0) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_to_toml(self.config))
        env = dict(os.environ)
        env[self.config.router.auth_token_env] = TOKEN
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.tools.cli", "--config", str(self.config_path), "router",
             "--log-level", "warning"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("georoute router did not start:\n" + "".join(self.output[-20:]))

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)

