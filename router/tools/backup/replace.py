"""`georoute restore --shard S --to TIME --replace` on the local cluster: a point-in-time
restore of one shard that becomes the shard's primary, in place of the live one.

Step by step, and why the routers follow:
1. The shard is restored to TIME into a separate node, as a plain restore is (restore.py);
   until it has recovered and been promoted, nothing of the shard is touched, and a failed
   restore leaves the shard as it was.
2. The shard's replicas are stopped first, then its primary (a fast shutdown): with no
   standby left, no router's promoter can promote one while the primary is down (managed
   mode), and the routers hold the shard's writes meanwhile (`[failover]
   write_buffer_seconds`) or fail them retryably.
3. The old primary's data directory is moved aside (kept, not deleted), the restored one put
   in its place, and the node started on its own port, archiving WAL again into the shard's
   archive. Its promotion started a new timeline, newer than every timeline in the archive
   (PostgreSQL picks the next one free there), so it is the writable node on the newest
   timeline: the shard's agreed primary for every router (router/core/primary.py), whatever
   they knew before. Were the old data directory started again, it would be writable on an
   older timeline, and fenced.
4. Each replica is made again from the new primary (pg_basebackup, on its slot) and started:
   a standby of the old history cannot follow the new one.
5. A base backup of the new primary is taken, so that `latest`, and any later time, restore
   on the new history.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from router.backend.wal import TIMELINE_SQL
from router.errors import ClusterError
from router.tools.backup.basebackup import take_base_backup
from router.tools.backup.catalog import BaseBackup, format_lsn
from router.tools.backup.errors import BackupError
from router.tools.backup.local import LocalTools
from router.tools.backup.restore import RESTORE_BLOCK_MARK, Restored, restore_shard
from router.tools.localcluster import LocalCluster
from router.tools.localcluster.failover_ops import agreed_primary
from router.tools.localcluster.manager import run_sync
from router.tools.localcluster.postgres import PgRunner
from router.tools.localcluster.restores import forget_restored, restored_layout, stop_restored

__all__ = ["Replaced", "replace_shard"]

_POSITION_SQL = f"SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, {TIMELINE_SQL}"


@dataclass(frozen=True, slots=True)
class Replaced:
    shard: str
    primary: str  # the node that now runs the restored data
    replicas: list[str]  # made again from it
    restored: Restored
    old_data_dir: Path  # the replaced primary's data directory, moved aside
    old_position: tuple[int, int] | None  # (LSN, timeline) of the old primary at the swap
    new_position: tuple[int, int]  # (LSN, timeline) of the new primary once started
    pause_seconds: float  # the old primary stopped -> the new one takes writes
    backup: BaseBackup | None  # the fresh base backup of the new primary
    backup_error: str | None

    def describe(self) -> list[str]:
        """What the operator is told: what is kept, what is lost, and where things are."""
        r = self.restored.node
        old = (f"{format_lsn(self.old_position[0])} on timeline {self.old_position[1]}"
               if self.old_position else "unknown (the old primary did not answer)")
        lines = [
            f"{self.shard}: {self.primary} is the primary again, with the shard as it was at "
            f"{r.target} (backup {r.backup_id}), on timeline {self.new_position[1]}; writes "
            f"paused {self.pause_seconds:.2f} s",
            f"  recovery: {r.recovery_stop or '(no recovery message in the log)'}",
            f"  replicas made again from it, streaming: {', '.join(self.replicas) or 'none'}",
            "  KEPT on the shard: every transaction committed on it at or before the target "
            "time; the other shards and the document store are untouched",
            f"  LOST from the shard: every transaction committed on it after the target time "
            f"(the old primary was at {old}; the new one starts from "
            f"{format_lsn(self.new_position[0])}). That includes, for this shard: its part of "
            "transactions over several shards committed since (the other shards keep theirs), "
            "users moved to it since (gone) and moved away since (back here, and also on "
            "their new shard), writes to reference tables since (this shard's copies now "
            "differ from the others': `georoute health` shows them), and idempotency keys "
            "recorded since (a retry of such a keyed write applies it again)",
            f"  the old primary's data directory is kept, not started, at {self.old_data_dir}; "
            "the old replicas' copies are gone (made again)",
            "  client sessions: open transactions on the old primary were lost; reads that "
            "must see a session's earlier writes go to the primary",
            "  archive: the old history's WAL stays, but `georoute restore` follows the newest "
            "timeline, so times after the target on the old history cannot be restored; "
            "base backups of the old history taken after the target cannot be used either",
        ]
        if self.backup is not None:
            lines.append(f"  a new base backup {self.backup.id} of the new primary was taken")
        else:
            lines.append(f"  WARNING: no new base backup was taken ({self.backup_error}): run "
                         f"`georoute backup --shard {self.shard}`")
        return lines


def _strip_restore_settings(pgdata: Path) -> None:
    """The restore's own settings (no archiving, a recovery target) go: the node is a cluster
    node now, and a recovery target left there would apply again were it made a standby."""
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    cut = text.find(RESTORE_BLOCK_MARK)
    if cut >= 0:
        conf.write_text(text[:cut].rstrip("\n") + "\n")


async def _position(runner: PgRunner, port: int) -> tuple[int, int] | None:
    try:
        row = await runner.fetchrow(port, _POSITION_SQL)
    except Exception:  # it does not answer: nothing to say of it
        return None
    return None if row is None or row[1] is None else (int(row[0]), int(row[1]))


def _archive_history(tools: LocalTools, shard: str, pgdata: Path, timeline: int) -> None:
    """The new timeline's history file into the shard's archive. The restored node did not
    archive (a restore must not touch the archive until it replaces the shard), so without
    this a later promotion could pick the same timeline number again, and a later restore
    would not know the new timeline's history."""
    name = f"{timeline:08X}.history"
    source = pgdata / "pg_wal" / name
    target = tools.paths.wal_dir(shard) / name
    if source.exists() and not target.exists():
        tmp = target.with_name(name + ".tmp")
        shutil.copyfile(source, tmp)
        tools.user.chown(tmp)
        os.replace(tmp, target)


def replace_shard(tools: LocalTools, shard: str, target: datetime | None,
                  timeout: float = 600.0) -> Replaced:
    """Restore `shard` to `target` (None: the latest) and make it the shard's primary (the
    module's docstring says how)."""
    local = LocalCluster(tools.config, timeout=min(timeout, 300.0))
    runner = local.runner()
    nodes = local.shard_nodes(shard)
    try:
        primary, _ = run_sync(agreed_primary(runner, nodes))
    except ClusterError:
        # No writable primary (the usual case for a restore after a disaster): the node
        # router.toml lists as the shard's primary takes the restored data.
        primary = nodes[0]
    replicas = [n for n in nodes if n.name != primary.name]
    stamp = datetime.now(UTC).strftime("%Y%m%dt%H%M%S")
    name = f"replace-{shard.replace('_', '-')}-{stamp}"
    restored = restore_shard(tools, shard, target, name, timeout=timeout)

    rl = restored_layout(tools.layout)
    new_data = rl.pgdata(name)
    stop_restored(tools.layout, name)  # a fast shutdown: it starts again at once, elsewhere
    _strip_restore_settings(new_data)

    old_position = run_sync(_position(runner, primary.port))
    stopped = time.monotonic()
    for node in replicas:  # first: no standby is left for a promoter to promote
        runner.stop(node, "fast")
    runner.stop(primary, "fast")
    live_data = tools.layout.pgdata(primary.name)
    aside = tools.layout.data_root / "replaced" / f"{primary.name}-{stamp}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    if live_data.exists():
        os.replace(live_data, aside)
    os.replace(new_data, live_data)
    forget_restored(tools.layout, name)  # its record and leftovers: the data has moved
    deadline = time.monotonic() + timeout
    try:
        runner.start(primary)
        run_sync(runner.wait_writable(primary, deadline))
    except ClusterError as exc:
        raise BackupError(
            f"{primary.name} did not start with the restored data ({exc}); the shard is "
            f"down. Its old data directory is at {aside}: to go back, stop {primary.name}, "
            f"put that directory back at {live_data} and run `georoute cluster up`") from exc
    pause = time.monotonic() - stopped
    new_position = run_sync(_position(runner, primary.port))
    if new_position is None:
        raise BackupError(f"{primary.name} started with the restored data but does not "
                          "answer as a writable primary")

    for node in replicas:
        run_sync(runner.drop_inactive_slot(primary.port, node.slot))
        runner.basebackup(node, primary.port)
        runner.start(node)
    for node in replicas:
        run_sync(runner.wait_streaming(node, primary.port, deadline))
    if tools.config.shards[shard].synchronous and replicas:
        run_sync(runner.set_synchronous(primary.port, True))

    _archive_history(tools, shard, live_data, new_position[1])
    backup: BaseBackup | None = None
    backup_error: str | None = None
    try:
        backup = take_base_backup(tools, shard).backup
    except BackupError as exc:
        backup_error = str(exc)
    return Replaced(shard, primary.name, [n.name for n in replicas], restored, aside,
                    old_position, new_position, pause, backup, backup_error)

