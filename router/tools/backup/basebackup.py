"""Taking, verifying and pruning base backups of a shard's primary: pg_basebackup (plain format,
with the WAL it needs streamed alongside), pg_verifybackup against its manifest, a record of
time, size and WAL range, then retention (older backups and the archived WAL only they needed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from router.config import Config, NodeAddress
from router.errors import ClusterError
from router.ha.shard_checks import record_backup
from router.tools.backup.catalog import (
    BaseBackup,
    new_backup_id,
    parse_lsn,
    plan_retention,
    read_backups,
    tree_size,
    wal_to_prune,
    write_record,
)
from router.tools.backup.errors import BackupError
from router.tools.backup.local import LocalTools, locked
from router.tools.db.connect import connect_node
from router.tools.localcluster.archive import WalArchive, archive_command
from router.tools.localcluster.manager import run_sync

__all__ = [
    "PrimaryInfo",
    "Pruned",
    "find_primary",
    "prune_shard",
    "take_base_backup",
    "verify_backup",
]

_INFO_SQL = """
SELECT current_setting('server_version') AS version,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS segment,
       current_setting('archive_mode') AS archive_mode,
       current_setting('archive_command') AS archive_command
"""


@dataclass(frozen=True, slots=True)
class PrimaryInfo:
    address: NodeAddress
    server_version: str
    wal_segment_size: int
    archive_mode: str
    archive_command: str


async def _in_recovery(config: Config, address: NodeAddress) -> bool | None:
    try:
        conn = await connect_node(config, address)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    finally:
        await conn.close()


async def find_primary(config: Config, shard: str) -> PrimaryInfo:
    """The shard's writable node, asked of every node configured for it (after a failover it
    is not the one configured as primary). Refuses when none, or more than one, is writable."""
    s = config.shards[shard]
    nodes = [s.primary, *s.replicas]
    answers = await asyncio.gather(*(_in_recovery(config, a) for a in nodes))
    writable = [a for a, r in zip(nodes, answers, strict=True) if r is False]
    if not writable:
        raise BackupError(f"no node of shard {shard} answers as a writable primary "
                          f"(asked {', '.join(a.label for a in nodes)})")
    if len(writable) > 1:
        raise BackupError(f"shard {shard} has {len(writable)} writable nodes "
                          f"({', '.join(a.label for a in writable)}): a split brain; "
                          "refusing to back up either")
    conn = await connect_node(config, writable[0])
    try:
        row = await conn.fetchrow(_INFO_SQL)
    finally:
        await conn.close()
    assert row is not None
    return PrimaryInfo(writable[0], str(row["version"]), int(row["segment"]),
                       str(row["archive_mode"]), str(row["archive_command"]))


def _conninfo(config: Config, address: NodeAddress) -> str:
    d = config.database
    parts = {"host": address.host, "port": str(address.port), "user": d.user,
             "sslmode": d.sslmode, "sslrootcert": d.sslrootcert, "sslcert": d.sslcert,
             "sslkey": d.sslkey, "application_name": "georoute-backup"}

    def quote(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in parts.items() if v)


def verify_backup(tools: LocalTools, data_dir: Path) -> None:
    """pg_verifybackup: every file against the manifest's checksums, and the WAL it needs."""
    try:
        tools.run([tools.bins.tool("pg_verifybackup"), str(data_dir)],
                  f"pg_verifybackup {data_dir}", timeout=600)
    except ClusterError as exc:
        raise BackupError(str(exc)) from exc


def _manifest_wal_range(data_dir: Path) -> tuple[int, int, int]:
    """(timeline, start LSN, end LSN) from backup_manifest's WAL-Ranges."""
    manifest = json.loads((data_dir / "backup_manifest").read_text())
    ranges = manifest["WAL-Ranges"]
    return (int(ranges[-1]["Timeline"]), parse_lsn(ranges[0]["Start-LSN"]),
            parse_lsn(ranges[-1]["End-LSN"]))


@dataclass(slots=True)
class Pruned:
    backups: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    wal_files: int = 0


def prune_shard(tools: LocalTools, shard: str) -> Pruned:
    """Retention for one shard (called with its lock held): keep the newest
    backup.keep_base_backups base backups, delete older ones and any incomplete backup
    directory, and the archived WAL before the oldest one kept."""
    out = Pruned()
    backups, incomplete = read_backups(tools.paths.base_dir(shard))
    kept, deleted = plan_retention(backups, tools.config.backup.keep_base_backups)
    for path in incomplete:
        shutil.rmtree(path)
        out.incomplete.append(path.name)
    for backup in deleted:
        shutil.rmtree(backup.path)
        out.backups.append(backup.id)
    if kept:
        wal = tools.paths.wal_dir(shard)
        names = os.listdir(wal) if wal.is_dir() else []
        for name in wal_to_prune(names, kept[0].start_wal):
            (wal / name).unlink(missing_ok=True)
            out.wal_files += 1
    return out


@dataclass(slots=True)
class TakenBackup:
    backup: BaseBackup
    pruned: Pruned
    warnings: list[str]


async def _record_on_shard(config: Config, address: NodeAddress, backup: BaseBackup) -> None:
    """The backup's row on the shard's primary, where every router reads it (it replicates,
    and follows the shard through a failover)."""
    conn = await connect_node(config, address)
    try:
        await record_backup(conn, backup.id, backup.finished_at, backup.size_bytes,
                            backup.source)
    finally:
        await conn.close()


def take_base_backup(tools: LocalTools, shard: str) -> TakenBackup:
    """A verified base backup of the shard's current primary, then retention."""
    config = tools.config
    info = run_sync(find_primary(config, shard))
    warnings: list[str] = []
    wal_dir = WalArchive(config, tools.layout, tools.user).prepare(shard)
    if info.archive_mode == "off":
        warnings.append(
            f"{shard}: WAL archiving is off on its primary ({info.address.label}), so this "
            "backup restores only to its own end, not to a later time"
            + (" (restart the node: `georoute cluster down` and `up`, to start archiving)"
               if config.backup.archive_wal else " (backup.archive_wal is false)")
        )
    elif config.backup.archive_wal and info.archive_command != archive_command(wal_dir):
        warnings.append(f"{shard}: its primary archives WAL elsewhere than {wal_dir} "
                        f"(archive_command = {info.archive_command!r}); restart it to apply "
                        "[backup]")
    base_dir = tools.paths.base_dir(shard)
    with locked(tools.paths.shard_dir(shard)):
        taken = [p.name for p in base_dir.iterdir()] if base_dir.is_dir() else []
        started = datetime.now(UTC)
        backup_id = new_backup_id(started, taken)
        path = base_dir / backup_id
        path.mkdir()
        tools.own(path)
        data_dir = path / "data"
        try:
            tools.run(
                [tools.bins.tool("pg_basebackup"), "-d", _conninfo(config, info.address),
                 "-D", str(data_dir), "-X", "stream", "--checkpoint=fast", "--no-password",
                 "-l", f"georoute {shard} {backup_id}"],
                f"pg_basebackup of {shard} from {info.address.label}", timeout=3600,
                env=tools.pg_env(),
            )
        except ClusterError as exc:
            raise BackupError(str(exc)) from exc
        finished = datetime.now(UTC)
        verify_backup(tools, data_dir)
        timeline, start_lsn, end_lsn = _manifest_wal_range(data_dir)
        backup = BaseBackup(
            id=backup_id, shard=shard, source=info.address.label, started_at=started,
            finished_at=finished, timeline=timeline, start_lsn=start_lsn, end_lsn=end_lsn,
            wal_segment_size=info.wal_segment_size, size_bytes=tree_size(data_dir),
            server_version=info.server_version, verified_at=datetime.now(UTC), path=path,
        )
        write_record(backup)
        pruned = prune_shard(tools, shard)
    try:
        run_sync(_record_on_shard(config, info.address, backup))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        warnings.append(f"{shard}: the backup is good, but it could not be recorded on the "
                        f"shard's primary (georoute_backups), so the routers' "
                        f"georoute_backup_last_success_timestamp_seconds does not show it: {exc}")
    return TakenBackup(backup, pruned, warnings)
