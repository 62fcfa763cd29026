"""The [backup] section of router.toml: where each shard's base backups and archived WAL go,
whether the local cluster archives WAL, and how many base backups are kept (README, "Backups
and point-in-time recovery"). router/config.py loads it with the rest."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from router.errors import ConfigError

__all__ = ["BackupConfig", "parse_shard_dir", "validate_backup"]


@dataclass(frozen=True, slots=True)
class BackupConfig:
    # Each shard's backups live in <dir>/<shard>/ (base/ and wal/); a relative dir is under the
    # local cluster's data root (cluster.state_dir, unless the server user cannot reach it).
    dir: str = "backups"
    # "shard=path" entries: that shard's backups live in `path` instead (another disk, a mount).
    shard_dirs: tuple[str, ...] = ()
    # The local cluster's nodes archive completed WAL segments into <shard dir>/wal.
    archive_wal: bool = True
    # Force a WAL segment switch after this many seconds with writes, so the archive is never
    # further behind (PostgreSQL's archive_timeout; 0 = only full segments are archived).
    archive_timeout_seconds: int = 0
    # Base backups kept per shard; `georoute backup` deletes older ones, and the archived WAL
    # that only they needed.
    keep_base_backups: int = 3

    def shard_dir_overrides(self) -> dict[str, str]:
        """shard -> path, from shard_dirs (validated at load, so this cannot fail)."""
        return dict(parse_shard_dir(spec) for spec in self.shard_dirs)


def parse_shard_dir(spec: str) -> tuple[str, str]:
    """A `backup.shard_dirs` entry, "shard=path", as (shard, path)."""
    shard, eq, path = spec.partition("=")
    if not eq or not shard.strip() or not path.strip():
        raise ValueError(f"expected 'shard=path', got {spec!r}")
    return shard.strip(), path.strip()


def validate_backup(b: BackupConfig, shards: Collection[str]) -> None:
    """Raises ConfigError naming the first bad [backup] key."""
    if not b.dir:
        raise ConfigError("backup.dir", "must not be empty")
    if b.keep_base_backups < 1:
        raise ConfigError("backup.keep_base_backups", f"must be at least 1, got "
                                                      f"{b.keep_base_backups}")
    if b.archive_timeout_seconds < 0:
        raise ConfigError("backup.archive_timeout_seconds", "must not be negative")
    seen: set[str] = set()
    for spec in b.shard_dirs:
        try:
            shard, _ = parse_shard_dir(spec)
        except ValueError as exc:
            raise ConfigError("backup.shard_dirs", str(exc)) from None
        if shard not in shards:
            raise ConfigError("backup.shard_dirs", f"{shard!r} is not a configured shard "
                                                   f"(known: {', '.join(shards)})")
        if shard in seen:
            raise ConfigError("backup.shard_dirs", f"shard {shard!r} is listed twice")
        seen.add(shard)
