"""What a shard's backup directory holds and the pure decisions over it: each base backup's
record (time, size, WAL range), WAL segment names, which backup a restore starts from, and what
retention deletes (older base backups, and the archived WAL only they needed)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.tools.backup.errors import BackupError

__all__ = [
    "RECORD_FILE",
    "BaseBackup",
    "archive_span",
    "choose_backup",
    "format_lsn",
    "new_backup_id",
    "parse_lsn",
    "plan_retention",
    "read_backups",
    "tree_size",
    "wal_file_name",
    "wal_to_prune",
    "write_record",
]

RECORD_FILE = "backup.json"  # beside the data/ of one base backup, written once it is verified
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_SEGMENT_LIKE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial|\.[0-9A-F]{8}\.backup)?$")


def parse_lsn(text: str) -> int:
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) + int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def wal_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    """The WAL segment file holding `lsn` (PostgreSQL's XLogFileName)."""
    segno = lsn // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def new_backup_id(now: datetime, taken: Iterable[str]) -> str:
    """A sortable id from the UTC time, e.g. 20261204T101500Z (-2, -3.. if already used)."""
    base = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    used = set(taken)
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


@dataclass(frozen=True, slots=True)
class BaseBackup:
    """One verified base backup of a shard's primary."""

    id: str
    shard: str
    source: str  # host:port of the node it was taken from (the shard's primary then)
    started_at: datetime  # UTC, before pg_basebackup began
    finished_at: datetime  # UTC, after it ended: every commit before this is in the backup
    timeline: int
    start_lsn: int
    end_lsn: int
    wal_segment_size: int
    size_bytes: int
    server_version: str
    verified_at: datetime
    path: Path  # the backup's directory (its data/ holds the data directory)

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def start_wal(self) -> str:
        return wal_file_name(self.timeline, self.start_lsn, self.wal_segment_size)

    @property
    def end_wal(self) -> str:
        return wal_file_name(self.timeline, self.end_lsn, self.wal_segment_size)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("started_at", "finished_at", "verified_at"):
            out[key] = getattr(self, key).isoformat()
        out["start_lsn"] = format_lsn(self.start_lsn)
        out["end_lsn"] = format_lsn(self.end_lsn)
        out["start_wal"] = self.start_wal
        out["end_wal"] = self.end_wal
        out["path"] = str(self.path)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path) -> BaseBackup:
        return cls(
            id=str(raw["id"]), shard=str(raw["shard"]), source=str(raw["source"]),
            started_at=datetime.fromisoformat(raw["started_at"]),
            finished_at=datetime.fromisoformat(raw["finished_at"]),
            timeline=int(raw["timeline"]), start_lsn=parse_lsn(raw["start_lsn"]),
            end_lsn=parse_lsn(raw["end_lsn"]), wal_segment_size=int(raw["wal_segment_size"]),
            size_bytes=int(raw["size_bytes"]), server_version=str(raw["server_version"]),
            verified_at=datetime.fromisoformat(raw["verified_at"]), path=path,
        )


def write_record(backup: BaseBackup) -> None:
    """backup.json, written whole (a rename): its presence marks the backup complete."""
    path = backup.path / RECORD_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(backup.as_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_backups(base_dir: Path) -> tuple[list[BaseBackup], list[Path]]:
    """The complete base backups under `base_dir`, oldest first, and the directories that are
    not (a backup that failed or was interrupted: no backup.json)."""
    complete: list[BaseBackup] = []
    incomplete: list[Path] = []
    if not base_dir.is_dir():
        return complete, incomplete
    for entry in sorted(base_dir.iterdir()):
        if not entry.is_dir():
            continue
        try:
            raw = json.loads((entry / RECORD_FILE).read_text())
            complete.append(BaseBackup.from_dict(raw, entry))
        except FileNotFoundError:
            incomplete.append(entry)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"unreadable backup record {entry / RECORD_FILE}: {exc}") from exc
    complete.sort(key=lambda b: (b.finished_at, b.id))
    return complete, incomplete


def choose_backup(backups: Sequence[BaseBackup], target: datetime | None) -> BaseBackup:
    """The base backup a restore to `target` (None: the latest state) starts from: the newest
    one that finished before it, since recovery cannot stop before a backup's end."""
    if not backups:
        raise BackupError("no base backup: take one with `georoute backup` first")
    ordered = sorted(backups, key=lambda b: b.finished_at)
    if target is None:
        return ordered[-1]
    fitting = [b for b in ordered if b.finished_at < target]
    if not fitting:
        raise BackupError(
            f"no base backup finished before {target.isoformat()}: the earliest time this "
            f"shard can be restored to is {ordered[0].finished_at.isoformat()} "
            f"(backup {ordered[0].id})"
        )
    return fitting[-1]


def plan_retention(
    backups: Sequence[BaseBackup], keep: int
) -> tuple[list[BaseBackup], list[BaseBackup]]:
    """(kept, deleted): the newest `keep` backups are kept."""
    ordered = sorted(backups, key=lambda b: (b.finished_at, b.id))
    cut = max(0, len(ordered) - keep)
    return ordered[cut:], ordered[:cut]


def wal_to_prune(names: Iterable[str], oldest_kept_start: str) -> list[str]:
    """Archived files no kept backup needs: segments (and .partial/.backup files) before the
    oldest kept backup's first segment, whatever their timeline, as pg_archivecleanup judges
    them. Timeline history files are always kept (a restore follows them)."""
    cutoff = oldest_kept_start[8:]
    out: list[str] = []
    for name in names:
        found = _SEGMENT_LIKE.match(name)
        if found and found.group(2) < cutoff:
            out.append(name)
    return sorted(out)


def archive_span(wal_dir: Path) -> tuple[str, str] | None:
    """The first and last WAL segment in the archive (names), or None when it has none."""
    try:
        names = sorted(n for n in os.listdir(wal_dir) if _SEGMENT.match(n))
    except FileNotFoundError:
        return None
    return (names[0], names[-1]) if names else None


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
