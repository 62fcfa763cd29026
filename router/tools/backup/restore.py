"""Point-in-time recovery of one shard into a separate node: the newest base backup that ended
before the target, copied into a new data directory, its archived WAL replayed up to the target
time (or to the end of the archive), then promoted and left running on its own port to inspect.
The shard itself, its replicas and the routers are not touched."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from router.errors import ClusterError
from router.tools.backup.basebackup import find_primary
from router.tools.backup.catalog import BaseBackup, choose_backup, read_backups
from router.tools.backup.errors import BackupError
from router.tools.backup.local import LocalTools, locked
from router.tools.db.connect import connect_node
from router.tools.localcluster.archive import restore_command
from router.tools.localcluster.layout import Layout
from router.tools.localcluster.manager import run_sync
from router.tools.localcluster.postgres import PgNode, PgRunner
from router.tools.localcluster.restores import (
    RestoredNode,
    load_restored,
    restored_layout,
    restored_pid,
    save_restored,
    stop_restored,
)

__all__ = [
    "RESTORE_BLOCK_MARK",
    "Restored",
    "flush_wal",
    "parse_target",
    "restore_shard",
    "without_setting",
]

# The start of the settings a restore appends to the restored node's postgresql.conf.
RESTORE_BLOCK_MARK = "\n# ---- written by georoute restore "

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Lines of the restored node's log that say where recovery stopped and what it last replayed.
_RECOVERY_LINES = re.compile(
    r"(recovery stopping .*|redo done at .*|last completed transaction was at log time .*"
    r"|selected new timeline ID: .*)"
)


def parse_target(text: str, now: datetime | None = None) -> datetime | None:
    """`latest` (None) or an ISO 8601 time; one without a zone is this machine's local time."""
    if text.strip().lower() == "latest":
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise BackupError(f"--to {text!r}: expected 'latest' or an ISO 8601 time such as "
                          "2026-12-04T10:15:00+00:00") from exc
    if value.tzinfo is None:
        value = value.astimezone()  # local time, as `date` prints it
    value = value.astimezone(UTC)
    if value > (now or datetime.now(UTC)):
        raise BackupError(f"--to {text}: that time has not come yet")
    return value


def flush_wal(tools: LocalTools, shard: str, timeout: float) -> str:
    """Make the archive hold everything the shard's primary has committed so far, when it
    answers: one commit (so a time target has a commit after it to stop before: recovery to a
    time that no later commit passes ends in error), a switch to a new WAL segment, and a wait
    until the segment switched from is archived. Returns a note for the operator."""
    config = tools.config
    wal_dir = tools.paths.wal_dir(shard)
    try:
        info = run_sync(find_primary(config, shard))
    except BackupError as exc:
        return (f"{exc}; restoring from the archive as it is: what the primary wrote after its "
                "last archived WAL segment is not included")
    if info.archive_mode == "off":
        return (f"WAL archiving is off on {shard}'s primary ({info.address.label}): the "
                "restore replays only what the archive holds")

    async def switch() -> str:
        conn = await connect_node(config, info.address)
        try:
            await conn.fetchval("SELECT txid_current()")
            return str(await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())"))
        finally:
            await conn.close()

    segment = run_sync(switch())
    deadline = time.monotonic() + timeout
    while not (wal_dir / segment).exists():
        if time.monotonic() > deadline:
            raise BackupError(f"{shard}'s primary has not archived WAL segment {segment} into "
                              f"{wal_dir} after {timeout:.0f} s: is its archive_command "
                              "failing? (see its log)")
        time.sleep(0.05)  # a CLI waiting on another process's file; no event to wait on
    return f"the primary's WAL up to segment {segment} (everything committed) is archived"


def without_setting(conf: str, key: str) -> str:
    """A PostgreSQL configuration file's text without the lines that set `key`."""
    kept = [line for line in conf.splitlines(keepends=True)
            if line.split("=", 1)[0].strip().lower() != key]
    return "".join(kept)


def _free_port(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BackupError(f"port {port} is in use: choose another with --port") from exc
        return int(sock.getsockname()[1])


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True, slots=True)
class Restored:
    node: RestoredNode
    backup: BaseBackup
    host: str
    database: str
    user: str
    data_dir: Path
    log: Path
    note: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.node.port}/{self.database}"


def restore_shard(
    tools: LocalTools, shard: str, target: datetime | None, name: str = "", port: int = 0,
    timeout: float = 600.0, flush: bool = True,
) -> Restored:
    """Restore `shard` to `target` (None: the latest) into a new node `name` on `port` (0: any
    free one), and wait until it has recovered and accepts writes of its own."""
    layout = tools.layout
    started = datetime.now(UTC)
    name = name or f"restore-{shard.replace('_', '-')}-{started.strftime('%Y%m%dt%H%M%S')}"
    if not _NAME.match(name):
        raise BackupError(f"--as {name!r}: use lower-case letters, digits, '-' and '_'")
    rl = restored_layout(layout)
    if name in load_restored(layout) or rl.node_dir(name).exists():
        raise BackupError(f"a restored node {name!r} already exists: drop it first "
                          f"(georoute restore --drop {name}) or choose another --as")
    note = flush_wal(tools, shard, timeout) if flush else "the archive as it is (no flush)"
    with locked(tools.paths.shard_dir(shard), shared=True):
        backups, _ = read_backups(tools.paths.base_dir(shard))
        backup = choose_backup(backups, target)
        port = _free_port(port)
        node_dir = rl.node_dir(name)
        node_dir.mkdir(parents=True)
        try:
            return _restore_into(tools, shard, target, backup, name, port, timeout, note,
                                 started)
        except BaseException:
            # Nothing half-made stays behind (the error carries the log's last lines).
            stop_restored(layout, name)
            shutil.rmtree(node_dir, ignore_errors=True)
            raise


def _restore_into(tools: LocalTools, shard: str, target: datetime | None, backup: BaseBackup,
                  name: str, port: int, timeout: float, note: str,
                  started: datetime) -> Restored:
    config = tools.config
    layout = tools.layout
    rl = restored_layout(layout)
    node_dir = rl.node_dir(name)
    tools.own(node_dir)
    rl.data_root.chmod(0o755)
    pgdata = rl.pgdata(name)
    cp = shutil.which("cp") or "/bin/cp"
    try:
        tools.run([cp, "-a", str(backup.data_dir), str(pgdata)],
                  f"copying backup {backup.id} to {pgdata}", timeout=3600)
    except ClusterError as exc:
        raise BackupError(str(exc)) from exc
    (pgdata / "backup_manifest").unlink(missing_ok=True)  # the backup's, not this node's
    auto = pgdata / "postgresql.auto.conf"
    if auto.exists():
        # A synchronous shard's primary has synchronous_standby_names = '*' in its
        # postgresql.auto.conf (ALTER SYSTEM), which overrides postgresql.conf: the restored
        # node, which has no standby, would make every commit wait for one.
        auto.write_text(without_setting(auto.read_text(), "synchronous_standby_names"))
    settings = {
        "restore_command": restore_command(tools.paths.wal_dir(shard)),
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
        # Its own node: it must never archive into the shard's archive (its new timeline
        # would mix with the shard's), nor wait on a standby that will never connect.
        "archive_mode": "off",
        "synchronous_standby_names": "",
    }
    if target is not None:
        settings["recovery_target_time"] = target.isoformat(sep=" ")
    with open(pgdata / "postgresql.conf", "a") as fh:
        fh.write(f"{RESTORE_BLOCK_MARK}{name} from backup {backup.id}\n")
        fh.writelines(f"{k} = {_conf_quote(v)}\n" for k, v in settings.items())
    signal_file = pgdata / "recovery.signal"
    signal_file.touch()
    tools.user.chown(signal_file)

    node = PgNode(name, shard, port, config.shards[shard].primary.database, "restore --port")
    runner = PgRunner(tools.bins, tools.user, rl, config.database.user)
    log = rl.log_file(name)
    try:
        runner.start(node)
    except ClusterError as exc:
        raise BackupError(f"the restored node did not start: {_log_tail(log)}") from exc
    run_sync(_wait_promoted(runner, node, layout, log, time.monotonic() + timeout))
    stop = "; ".join(m.group(1) for m in _RECOVERY_LINES.finditer(log.read_text(errors="replace")))
    record = RestoredNode(name, shard, port, target.isoformat() if target else "latest",
                          backup.id, started.isoformat(), stop)
    nodes = load_restored(layout)
    nodes[name] = record
    save_restored(layout, nodes)
    return Restored(record, backup, "127.0.0.1", node.database, config.database.user, pgdata,
                    log, note)


async def _wait_promoted(runner: PgRunner, node: PgNode, layout: Layout, log: Path,
                         deadline: float) -> None:
    """Until recovery has ended and the node is promoted; a node that exits (recovery failed,
    e.g. the target lies beyond the archived WAL) fails with its log's last lines."""
    while True:
        if restored_pid(layout, node.name) is None:
            raise BackupError(f"the restored node {node.name} stopped during recovery: "
                              f"{_log_tail(log)}")
        try:
            conn = await runner.connect(node.port)
            try:
                if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise BackupError(f"the restored node {node.name} is still recovering; see {log}")
        await asyncio.sleep(0.05)
