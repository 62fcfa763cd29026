"""The backup tools' pure parts: the [backup] section's checks, WAL segment names, which base
backup a restore starts from, what retention deletes, restore targets, and the archive_command
run by a real shell on real files."""

from __future__ import annotations

import copy
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from router.config import load_config, parse_config
from router.errors import ConfigError
from router.tools.backup.catalog import (
    BaseBackup,
    choose_backup,
    format_lsn,
    new_backup_id,
    parse_lsn,
    plan_retention,
    wal_file_name,
    wal_to_prune,
)
from router.tools.backup.errors import BackupError
from router.tools.backup.restore import parse_target, without_setting
from router.tools.localcluster.archive import BackupPaths, archive_command, restore_command
from router.tools.localcluster.layout import Layout

REPO = Path(__file__).resolve().parents[2]
RAW: dict[str, Any] = tomllib.loads((REPO / "router.toml").read_text())
T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024


def _raw(**backup: Any) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    raw["backup"].update(backup)
    return raw


def _backup(id: str, finished: datetime, start_lsn: int = 0x2000028) -> BaseBackup:
    return BaseBackup(
        id=id, shard="europe", source="127.0.0.1:6503", started_at=finished - timedelta(1),
        finished_at=finished, timeline=1, start_lsn=start_lsn, end_lsn=start_lsn + 0x100,
        wal_segment_size=SEG, size_bytes=1, server_version="18.6", verified_at=finished,
        path=Path("/nonexistent") / id,
    )


# ---- [backup] ------------------------------------------------------------------------------


def test_the_shipped_backup_section() -> None:
    b = load_config(REPO / "router.toml").backup
    assert (b.dir, b.shard_dirs, b.archive_wal, b.keep_base_backups) == ("backups", (), True, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shard_dirs": ["europe"]}, "expected 'shard=path'"),
        ({"shard_dirs": ["mars=/mnt/x"]}, "'mars' is not a configured shard"),
        ({"shard_dirs": ["europe=/a", "europe=/b"]}, "listed twice"),
        ({"keep_base_backups": 0}, "at least 1"),
        ({"archive_timeout_seconds": -1}, "must not be negative"),
        ({"archive_wal": "yes"}, "expected boolean"),
        ({"dir": ""}, "must not be empty"),
    ],
)
def test_bad_backup_keys_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(**change))
    assert info.value.key.startswith("backup."), info.value.key
    assert message in str(info.value)


def test_unknown_backup_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(retention=3))
    assert info.value.key == "backup.retention"


def test_backup_paths_per_shard() -> None:
    config = parse_config(_raw(shard_dirs=["europe = /mnt/eu-backups"]))
    paths = BackupPaths(config, Layout(Path("/srv/state"), Path("/srv/data")))
    assert paths.wal_dir("europe") == Path("/mnt/eu-backups/wal")
    assert paths.base_dir("asia") == Path("/srv/data/backups/asia/base")
    assert paths.documents_dir == Path("/srv/data/backups/documents")
    absolute = parse_config(_raw(dir="/backup"))
    assert BackupPaths(absolute, Layout(Path("/s"), Path("/d"))).wal_dir("asia") == Path(
        "/backup/asia/wal"
    )


# ---- WAL names and LSNs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeline", "lsn", "name"),
    [
        (1, "0/2000028", "000000010000000000000002"),
        (1, "0/FFFFFFF", "00000001000000000000000F"),
        (3, "1/0", "000000030000000100000000"),
        (2, "A/FF000000", "000000020000000A000000FF"),
    ],
)
def test_wal_file_names_as_postgresql_names_them(timeline: int, lsn: str, name: str) -> None:
    assert wal_file_name(timeline, parse_lsn(lsn), SEG) == name
    assert format_lsn(parse_lsn(lsn)) == lsn


def test_backup_ids_sort_by_time_and_never_repeat() -> None:
    first = new_backup_id(T0, [])
    assert first == "20261204T100000Z"
    assert new_backup_id(T0, [first]) == "20261204T100000Z-2"
    assert new_backup_id(T0, [first, f"{first}-2"]) == "20261204T100000Z-3"
    assert new_backup_id(T0 + timedelta(seconds=1), [first]) > first


# ---- which backup a restore starts from -----------------------------------------------------


def test_a_restore_starts_from_the_newest_backup_that_ended_before_the_target() -> None:
    a, b, c = (_backup(n, T0 + timedelta(hours=h)) for n, h in (("a", 0), ("b", 1), ("c", 2)))
    assert choose_backup([c, a, b], T0 + timedelta(minutes=90)) is b
    assert choose_backup([c, a, b], T0 + timedelta(hours=5)) is c
    assert choose_backup([c, a, b], None) is c
    # A backup that ended exactly at the target has commits up to then; one before it is needed.
    assert choose_backup([a, b], T0 + timedelta(hours=1)) is a


def test_no_backup_before_the_target_says_the_earliest_time() -> None:
    a = _backup("a", T0)
    with pytest.raises(BackupError, match=r"earliest time .* 2026-12-04T10:00:00"):
        choose_backup([a], T0 - timedelta(seconds=1))
    with pytest.raises(BackupError, match="no base backup"):
        choose_backup([], None)


# ---- retention -----------------------------------------------------------------------------


def test_retention_keeps_the_newest() -> None:
    backups = [_backup(str(h), T0 + timedelta(hours=h)) for h in (3, 1, 2, 0)]
    kept, deleted = plan_retention(backups, 2)
    assert [b.id for b in kept] == ["2", "3"]
    assert [b.id for b in deleted] == ["0", "1"]
    assert plan_retention(backups, 9) == (sorted(backups, key=lambda b: b.finished_at), [])


def test_wal_before_the_oldest_kept_backup_is_pruned_history_files_never() -> None:
    names = [
        "000000010000000000000003", "000000010000000000000004",
        "000000010000000000000004.00000028.backup", "000000010000000000000005",
        "000000020000000000000003.partial", "000000020000000000000006",
        "00000002.history", "000000010000000000000002.tmp", "README",
    ]
    pruned = wal_to_prune(names, "000000010000000000000005")
    assert pruned == [
        "000000010000000000000003", "000000010000000000000004",
        "000000010000000000000004.00000028.backup", "000000020000000000000003.partial",
    ]


# ---- restore targets -----------------------------------------------------------------------


def test_restore_targets() -> None:
    now = T0 + timedelta(days=1)
    assert parse_target("latest", now) is None
    assert parse_target(" LATEST ", now) is None
    assert parse_target("2026-12-04T10:00:00Z", now) == T0
    assert parse_target("2026-12-04T12:00:00+02:00", now) == T0
    naive = parse_target("2026-12-04 10:00:00", now)
    assert naive == datetime(2026, 12, 4, 10, 0).astimezone().astimezone(UTC)
    assert naive is not None and naive.tzinfo is UTC
    with pytest.raises(BackupError, match="has not come yet"):
        parse_target("2026-12-06T00:00:00Z", now)
    with pytest.raises(BackupError, match="ISO 8601"):
        parse_target("yesterday", now)
    assert parse_target("2026-12-04T05:00:00-05:00", now) == T0


# ---- the archive command, run as PostgreSQL runs it -----------------------------------------


def _archive(command: str, pgdata: Path, name: str) -> int:
    text = command.replace("%p", f"pg_wal/{name}").replace("%f", name).replace("%%", "%")
    return subprocess.run(["/bin/sh", "-c", text], cwd=pgdata, check=False).returncode


def test_archive_command_copies_whole_segments_and_never_overwrites(tmp_path: Path) -> None:
    pgdata, archive = tmp_path / "data", tmp_path / "arch ive %x"  # a space and a % in the path
    (pgdata / "pg_wal").mkdir(parents=True)
    archive.mkdir()
    segment = "000000010000000000000001"
    (pgdata / "pg_wal" / segment).write_bytes(b"wal bytes")
    command = archive_command(archive)
    assert _archive(command, pgdata, segment) == 0
    assert (archive / segment).read_bytes() == b"wal bytes"
    assert sorted(p.name for p in archive.iterdir()) == [segment]  # no .tmp left
    assert _archive(command, pgdata, segment) == 0  # again, same bytes: fine
    (pgdata / "pg_wal" / segment).write_bytes(b"other bytes")
    assert _archive(command, pgdata, segment) != 0  # never overwritten
    assert (archive / segment).read_bytes() == b"wal bytes"

    restored = tmp_path / "restored"
    (restored / "pg_wal").mkdir(parents=True)
    text = restore_command(archive).replace("%f", segment).replace("%p", f"pg_wal/{segment}")
    subprocess.run(["/bin/sh", "-c", text.replace("%%", "%")], cwd=restored, check=True)
    assert (restored / "pg_wal" / segment).read_bytes() == b"wal bytes"


def test_a_restored_node_drops_the_synchronous_setting_of_its_source() -> None:
    """ALTER SYSTEM's synchronous_standby_names (a synchronous shard's primary) would make a
    restored node, which has no standby, wait on every commit."""
    auto = ("# Do not edit this file manually!\n"
            "synchronous_standby_names = '*'\n"
            "primary_slot_name = 'x'\n"
            " Synchronous_Standby_Names='a'\n")
    assert without_setting(auto, "synchronous_standby_names") == (
        "# Do not edit this file manually!\nprimary_slot_name = 'x'\n")
