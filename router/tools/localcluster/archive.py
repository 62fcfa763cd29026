"""Where each shard's backups live ([backup] in router.toml) and the WAL archiving the local
cluster's nodes do into them: the archive_command, and the settings put on each node's command
line (as its port is: pg_basebackup copies config files from the primary to the replica)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from router.config import Config
from router.errors import ClusterError
from router.tools.localcluster.layout import Layout
from router.tools.localcluster.users import ServerUser

__all__ = [
    "BackupPaths",
    "WalArchive",
    "archive_command",
    "restore_command",
]


class BackupPaths:
    """The backup directories of one config, resolved against the cluster's data root."""

    def __init__(self, config: Config, layout: Layout) -> None:
        self.config = config
        self.root = layout.data_root / config.backup.dir  # an absolute dir stays as it is
        self._overrides = config.backup.shard_dir_overrides()

    def shard_dir(self, shard: str) -> Path:
        if shard not in self.config.shards:
            known = ", ".join(self.config.shards)
            raise ClusterError(f"no shard {shard!r} (known: {known})")
        override = self._overrides.get(shard)
        return self.root / override if override else self.root / shard

    def wal_dir(self, shard: str) -> Path:
        return self.shard_dir(shard) / "wal"

    def base_dir(self, shard: str) -> Path:
        return self.shard_dir(shard) / "base"

    @property
    def documents_dir(self) -> Path:
        return self.root / "documents"


def archive_command(wal_dir: Path) -> str:
    """PostgreSQL's archive_command: copy a segment into `wal_dir` under a temporary name and
    rename it, so a file there is always whole; a segment already archived with the same bytes
    (archiving again after a crash) succeeds, with other bytes it fails (and PostgreSQL keeps
    the segment and retries) rather than overwrite history."""
    target = shlex.quote(str(wal_dir).replace("%", "%%")) + "/%f"
    return (
        f'f={target}; if [ -f "$f" ]; then cmp -s %p "$f"; '
        f'else cp %p "$f.tmp" && mv "$f.tmp" "$f"; fi'
    )


def restore_command(wal_dir: Path) -> str:
    """The matching restore_command for a node recovering from the archive."""
    return f"cp {shlex.quote(str(wal_dir).replace('%', '%%'))}/%f %p"


def _writable_by(user: ServerUser, path: Path) -> bool:
    if not user.switch:
        return os.access(path, os.W_OK | os.X_OK)
    test = shutil.which("test") or "/usr/bin/test"
    proc = subprocess.run([test, "-w", str(path), "-a", "-x", str(path)], user=user.uid,
                          group=user.gid, extra_groups=[], check=False,
                          stdin=subprocess.DEVNULL)
    return proc.returncode == 0


class WalArchive:
    """The archiving settings of each shard's nodes; makes the shard's archive directory (owned
    by the server user, which runs archive_command) the first time a node of it starts."""

    def __init__(self, config: Config, layout: Layout, user: ServerUser) -> None:
        self.config = config
        self.paths = BackupPaths(config, layout)
        self.user = user

    def prepare(self, shard: str) -> Path:
        """The shard's archive directory, created if missing and writable by the server user."""
        wal = self.paths.wal_dir(shard)
        for path in (self.paths.shard_dir(shard), self.paths.base_dir(shard), wal):
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o700)
                self.user.chown(path)
        if not _writable_by(self.user, wal):
            raise ClusterError(
                f"server user {self.user.name} cannot write to {wal} (backup.dir, "
                "backup.shard_dirs): it must own it, and reach it (o+x on every parent)"
            )
        return wal

    def settings(self, shard: str) -> Mapping[str, str]:
        """PostgreSQL settings for a node of `shard` (none when backup.archive_wal is off)."""
        if not self.config.backup.archive_wal:
            return {}
        wal = self.prepare(shard)
        return {
            "archive_mode": "on",
            "archive_command": archive_command(wal),
            "archive_timeout": str(self.config.backup.archive_timeout_seconds),
        }
