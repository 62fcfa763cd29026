"""Backups and point-in-time recovery on a real scratch cluster (one shard, its replica and a
document store, on ports of their own, purged after): WAL archiving, `georoute backup`, `backup
list`, a restore to a noted time (rows before it are there, rows after it are not), a restore of
`latest` (every committed row), retention, verification that catches a damaged backup, document
dumps loaded into a new database. (--replace: test_restore_replace.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from bson.binary import Binary
from pymongo import MongoClient

from router.config import Config
from router.tools.backup.basebackup import take_base_backup
from router.tools.backup.catalog import BaseBackup, read_backups
from router.tools.backup.errors import BackupError
from router.tools.backup.local import LocalTools, local_tools
from router.tools.backup.restore import restore_shard
from router.tools.cli import build_parser
from router.tools.config_write import with_port_offset
from router.tools.localcluster import LocalCluster
from router.tools.localcluster.archive import archive_command
from router.tools.localcluster.layout import pid_is_ours
from router.tools.localcluster.restores import load_restored, restored_layout, restored_pid

SCRATCH_OFFSET = 5800
SHARD = "north_america"
RESTORE_TIMEOUT = 60.0  # seconds; each restore here takes about one


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    """One shard and a document store, archiving WAL, keeping 2 base backups."""
    moved = with_port_offset(
        test_config, SCRATCH_OFFSET, str(Path(test_config.cluster.state_dir) / "scratch-backup")
    )
    config = replace(
        moved, shards={SHARD: moved.shards[SHARD]},
        backup=replace(moved.backup, keep_base_backups=2),
    )
    local = LocalCluster(config)
    local.down(purge=True)  # leftovers of an interrupted run
    local.up()
    try:
        yield local, config
    finally:
        layout = local_tools(config).layout
        pids = {n: restored_pid(layout, n) for n in load_restored(layout)}
        local.down(purge=True)
        # Alive and still ours (an exited process that init has not reaped yet is not).
        alive = [n for n, pid in pids.items()
                 if pid_is_ours(pid, restored_layout(layout).pgdata(n))]
        assert not alive, f"restored nodes outlived `cluster down`: {alive}"


@pytest.fixture(scope="module")
def tools(scratch: tuple[LocalCluster, Config]) -> LocalTools:
    return local_tools(scratch[1])


def _a_backup(tools: LocalTools) -> BaseBackup:
    """The newest base backup of the shard (one is taken if there is none yet): a backup
    costs a second or two of disk syncs, so the tests share them where they can."""
    backups, _ = read_backups(tools.paths.base_dir(SHARD))
    return backups[-1] if backups else take_base_backup(tools, SHARD).backup


def _cli(config: Config, *argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.func(args, config))


@contextlib.asynccontextmanager
async def _connect(port: int) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                 database="georoute", timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


async def _insert(port: int, table: str, values: list[int]) -> None:
    """Each value in a transaction of its own (committed when this returns)."""
    async with _connect(port) as conn:
        for v in values:
            await conn.execute(f"INSERT INTO {table} (v) VALUES ($1)", v)


async def _values(port: int, table: str) -> list[int]:
    async with _connect(port) as conn:
        return [r["v"] for r in await conn.fetch(f"SELECT v FROM {table} ORDER BY v")]


async def test_each_node_archives_wal_into_the_shard_archive(
    scratch: tuple[LocalCluster, Config], tools: LocalTools
) -> None:
    _, config = scratch
    wal = tools.paths.wal_dir(SHARD)
    for address in (config.shards[SHARD].primary, *config.shards[SHARD].replicas):
        async with _connect(address.port) as conn:
            assert await conn.fetchval("SHOW archive_mode") == "on"
            assert await conn.fetchval("SHOW archive_command") == archive_command(wal)
    async with _connect(config.shards[SHARD].primary.port) as conn:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        # Archiving is the server's own work: wait for it, bounded.
        for _ in range(200):
            if (wal / segment).exists():
                break
            await conn.fetchval("SELECT pg_sleep(0.025)")
    assert (wal / segment).exists(), f"{segment} never reached {wal}"


async def test_restore_to_a_noted_time_and_to_latest(
    scratch: tuple[LocalCluster, Config], tools: LocalTools, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = scratch
    primary = config.shards[SHARD].primary.port
    table = f"pitr_{uuid.uuid4().hex[:8]}"
    async with _connect(primary) as conn:
        await conn.execute(f"CREATE TABLE {table} (v int PRIMARY KEY)")
    assert _cli(config, "backup", "--shard", SHARD) == 0
    first = read_backups(tools.paths.base_dir(SHARD))[0][-1]
    assert f"{SHARD}: backup {first.id}" in capsys.readouterr().out

    await _insert(primary, table, [1, 2, 3])
    noted = datetime.now(UTC)
    await _insert(primary, table, [4, 5])
    assert _cli(config, "backup", "--shard", SHARD) == 0  # a newer backup, after the noted time
    await _insert(primary, table, [6])  # after every backup: only in the WAL

    at_noted = restore_shard(tools, SHARD, noted, "at-noted", timeout=RESTORE_TIMEOUT)
    assert at_noted.backup.id == first.id  # the newest backup that ended before the time
    assert await _values(at_noted.node.port, table) == [1, 2, 3]
    assert "recovery stopping before commit" in at_noted.node.recovery_stop

    assert _cli(config, "restore", "--shard", SHARD, "--to", "latest", "--as", "at-latest",
                "--timeout", str(RESTORE_TIMEOUT)) == 0
    out = capsys.readouterr().out
    latest = load_restored(tools.layout)["at-latest"]
    assert f"connect: psql 'postgresql://postgres@127.0.0.1:{latest.port}/georoute'" in out
    assert await _values(latest.port, table) == [1, 2, 3, 4, 5, 6]

    # The restored nodes are nodes of their own: writable, and the shard does not see them.
    async with _connect(latest.port) as conn:
        await conn.execute(f"INSERT INTO {table} (v) VALUES (100)")
    assert await _values(primary, table) == [1, 2, 3, 4, 5, 6]

    assert _cli(config, "restore", "--list") == 0
    assert "at-noted: shard north_america" in capsys.readouterr().out
    assert _cli(config, "restore", "--drop", "at-noted") == 0
    assert "at-noted" not in load_restored(tools.layout)
    assert not (tools.layout.data_root / "restores" / "at-noted").exists()


def test_backup_list_shows_time_size_and_wal_range(
    scratch: tuple[LocalCluster, Config], tools: LocalTools, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = scratch
    taken = _a_backup(tools)
    assert _cli(config, "backup", "list", "--json") == 0
    listed: dict[str, Any] = json.loads(capsys.readouterr().out)
    entry = listed["shards"][SHARD]
    mine = next(b for b in entry["backups"] if b["id"] == taken.id)
    assert mine["size_bytes"] > 1_000_000  # a whole data directory
    assert mine["start_lsn"] and mine["end_lsn"]
    assert mine["start_wal"] <= mine["end_wal"] <= entry["archive"]["last"]
    assert datetime.fromisoformat(mine["started_at"]) <= datetime.fromisoformat(mine["finished_at"])
    # The name we compute is PostgreSQL's own.
    primary = config.shards[SHARD].primary.port

    async def walfile() -> str:
        async with _connect(primary) as conn:
            return str(await conn.fetchval("SELECT pg_walfile_name($1::text::pg_lsn)",
                                           mine["start_lsn"]))

    assert asyncio.run(walfile()) == mine["start_wal"]
    assert _cli(config, "backup", "list") == 0
    text = capsys.readouterr().out
    assert taken.id in text and f"{SHARD}: WAL archive" in text


def test_retention_deletes_older_backups_and_their_wal(
    scratch: tuple[LocalCluster, Config], tools: LocalTools
) -> None:
    _, config = scratch
    keep_one = replace(
        tools, config=replace(config, backup=replace(config.backup, keep_base_backups=1))
    )
    _a_backup(tools)  # at least one older backup exists
    taken = take_base_backup(keep_one, SHARD)
    backups, incomplete = read_backups(tools.paths.base_dir(SHARD))
    assert [b.id for b in backups] == [taken.backup.id] and not incomplete
    assert taken.pruned.backups and taken.pruned.wal_files > 0
    segments = [n for n in os.listdir(tools.paths.wal_dir(SHARD)) if len(n) == 24]
    assert segments and min(s[8:] for s in segments) >= taken.backup.start_wal[8:]


def test_verification_catches_a_damaged_backup(
    scratch: tuple[LocalCluster, Config], tools: LocalTools, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = scratch
    taken = _a_backup(tools)
    assert _cli(config, "backup", "verify") == 0
    version = taken.data_dir / "PG_VERSION"
    original = version.read_bytes()
    version.write_bytes(original[::-1])  # same size, other bytes: only a checksum sees it
    try:
        assert _cli(config, "backup", "verify", "--shard", SHARD) == 1
        assert f"{taken.id}: FAILED" in capsys.readouterr().out
    finally:
        version.write_bytes(original)


def test_documents_are_dumped_and_loaded_into_a_new_database(
    scratch: tuple[LocalCluster, Config], tools: LocalTools, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = scratch
    client: MongoClient[dict[str, Any]] = MongoClient(config.document_store.uri,
                                                      serverSelectionTimeoutMS=5000)
    try:
        live = client[config.document_store.database]
        marker = uuid.uuid4()
        docs = [
            {
                "_id": f"{marker}-{i}",
                "user_id": str(marker),
                "n": i,
                "at": datetime.now(UTC),
                "uid": Binary.from_uuid(marker),
            }
            for i in range(3)
        ]
        live["user_preferences"].insert_many(docs)
        live["user_preferences"].create_index("user_id", name="by_user")
        assert _cli(config, "backup", "--documents") == 0
        assert "documents: dump" in capsys.readouterr().out
        live["user_preferences"].insert_one({"_id": f"{marker}-late", "user_id": str(marker)})

        target = f"restored_{marker.hex[:8]}"
        assert _cli(config, "restore", "--documents", "--to", "latest", "--as", target) == 0
        restored = client[target]["user_preferences"]
        loaded = list(restored.find({"user_id": str(marker)}, sort=[("n", 1)]))
        assert [d["_id"] for d in loaded] == [f"{marker}-{i}" for i in range(3)]  # not the late
        original = live["user_preferences"].find_one({"_id": f"{marker}-0"})
        assert loaded[0] == original  # the same values and types, dates and UUIDs included
        assert "by_user" in {i["name"] for i in restored.list_indexes()}

        with pytest.raises(BackupError, match="already holds"):
            _cli(config, "restore", "--documents", "--to", "latest", "--as", target)
        with pytest.raises(BackupError, match="the live database"):
            _cli(config, "restore", "--documents", "--to", "latest",
                 "--as", config.document_store.database)
    finally:
        client.close()


def test_replace_refuses_a_separate_nodes_options_and_documents(
    scratch: tuple[LocalCluster, Config], tools: LocalTools
) -> None:
    """--replace itself: tests/integration/test_restore_replace.py."""
    _, config = scratch
    before = set(load_restored(tools.layout))
    with pytest.raises(BackupError, match="--as and --port are for a separate node"):
        _cli(config, "restore", "--shard", SHARD, "--to", "latest", "--replace", "--as", "x")
    with pytest.raises(BackupError, match="never over the live one"):
        _cli(config, "restore", "--documents", "--to", "latest", "--replace")
    assert set(load_restored(tools.layout)) == before


def test_a_time_before_every_backup_is_refused_with_the_earliest(
    scratch: tuple[LocalCluster, Config], tools: LocalTools
) -> None:
    _a_backup(tools)
    with pytest.raises(BackupError, match="earliest time this shard can be restored to"):
        restore_shard(tools, SHARD, datetime(2020, 1, 1, tzinfo=UTC), "too-early",
                      timeout=RESTORE_TIMEOUT)
    assert "too-early" not in load_restored(tools.layout)
    assert not (tools.layout.data_root / "restores" / "too-early").exists()
