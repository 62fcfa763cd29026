"""`georoute db migrate` on the real cluster: idempotence, the shard row, replication of the
schema, refusal when shards disagree, and `georoute health` reporting the result."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from router.config import Config
from router.errors import MigrationError
from router.ha.promoter import INSERT_SQL
from router.tools.db.connect import connect_node
from router.tools.db.health_report import Reachability, check_health
from router.tools.db.migrate import load_migrations, migrate
from router.types import Role
from tests.integration.conftest import wait_replayed
from tests.support.present import present


async def test_second_run_applies_nothing(migrated: Config) -> None:
    report = await migrate(migrated)
    assert report.applied_count == 0
    newest = load_migrations()[-1].version
    for shard in report.shards.values():
        assert shard.version_before == shard.version_after == newest
    assert set(report.collections) == {"course_content", "user_preferences"}


async def test_every_primary_records_versions_and_its_shard(migrated: Config) -> None:
    files = load_migrations()
    for shard in migrated.shards.values():
        conn = await connect_node(migrated, shard.primary)
        try:
            rows = await conn.fetch(
                "SELECT version, name, checksum, applied_at FROM schema_migrations "
                "ORDER BY version")
            assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
                (m.version, m.name, m.checksum) for m in files]
            assert tuple(present(await conn.fetchrow("SELECT name, number FROM georoute_shard"))) == (
                shard.name, shard.number)
        finally:
            await conn.close()


async def test_replicas_receive_the_schema_by_replication(migrated: Config) -> None:
    for shard in migrated.shards.values():
        primary = await connect_node(migrated, shard.primary)
        replica = await connect_node(migrated, shard.replicas[0])
        try:
            await wait_replayed(primary, replica)
            assert await replica.fetchval("SELECT pg_is_in_recovery()")
            assert await replica.fetchval("SELECT count(*) FROM schema_migrations") == len(
                load_migrations())
            assert await replica.fetchval("SELECT number FROM georoute_shard") == shard.number
        finally:
            await primary.close()
            await replica.close()


async def test_refuses_when_shards_are_at_different_versions(migrated: Config) -> None:
    asia = await connect_node(migrated, migrated.shards["asia"].primary)
    try:
        saved = await asia.fetchrow(
            "DELETE FROM schema_migrations WHERE version = (SELECT max(version) "
            "FROM schema_migrations) RETURNING *")
        assert saved is not None
        try:
            with pytest.raises(MigrationError) as err:
                await migrate(migrated)
            message = str(err.value)
            assert "different schema versions" in message
            newest = saved["version"]
            # Versions need not be contiguous (001..006, then 020).
            previous = max(m.version for m in load_migrations() if m.version < newest)
            assert f"asia at version {previous}" in message
            assert f"europe at version {newest}" in message
            assert f"north_america at version {newest}" in message
        finally:
            await asia.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                "VALUES ($1, $2, $3, $4)", *saved)
    finally:
        await asia.close()
    assert (await migrate(migrated)).applied_count == 0


async def test_refuses_an_edited_migration(migrated: Config, tmp_path: Path) -> None:
    for m in load_migrations():
        text = m.sql + ("\n-- edited\n" if m.version == 1 else "")
        (tmp_path / f"{m.version:03d}_{m.name}.sql").write_text(text)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(migrated, sql_dir=tmp_path, documents=False)


async def test_health_reports_nodes_versions_and_rows(migrated: Config) -> None:
    report = await check_health(migrated)
    assert report.healthy, report.format_table()
    by_name = {n.name: n for n in report.nodes}
    assert by_name["europe-1"].role is Role.PRIMARY
    replica = by_name["europe-2"]
    assert replica.role is Role.REPLICA and replica.state is Reachability.UP
    assert replica.replica_lag_bytes is not None and replica.replica_lag_bytes >= 0
    newest = load_migrations()[-1].version
    assert all(s.schema_version == newest for s in report.shards)
    assert all("users" in s.row_counts for s in report.shards)
    assert report.document_store.ok
    decoded = json.loads(report.to_json())
    assert decoded["healthy"] is True
    assert {n["role"] for n in decoded["nodes"]} == {"primary", "replica"}
    table = report.format_table()
    assert "europe-2" in table and "schema_version" in table


async def test_a_shard_bootstrapped_before_008_takes_it(migrated: Config, tmp_path: Path) -> None:
    """A shard migrated up to 006 under the old bootstrap (georoute_shard.name checked against
    the three shipped regions), with a user in it, takes 008: the CHECKs listing the three
    regions go, and the name is checked by its shape, so a shard of another name fits. Run on
    a scratch database on europe's primary."""
    scratch = f"regions_mig_{uuid.uuid4().hex[:8]}"
    europe = migrated.shards["europe"]
    shard = dataclasses.replace(europe, primary=dataclasses.replace(europe.primary,
                                                                    database=scratch))
    config = dataclasses.replace(migrated, shards={"europe": shard})
    for m in load_migrations():
        if m.version <= 6:
            (tmp_path / f"{m.version:03d}_{m.name}.sql").write_text(m.sql)
    admin = await connect_node(migrated, europe.primary)
    try:
        await admin.execute(f"CREATE DATABASE {scratch}")
        await migrate(config, sql_dir=tmp_path, documents=False)
        conn = await connect_node(config, shard.primary)
        try:
            await conn.execute(
                "ALTER TABLE georoute_shard DROP CONSTRAINT georoute_shard_name_check, "
                "ADD CONSTRAINT georoute_shard_name_check "
                "CHECK (name IN ('north_america', 'europe', 'asia'))")  # the old bootstrap's
            await conn.execute("INSERT INTO users (email, full_name, home_region, country, city) "
                               "VALUES ('a@b.eu', 'A', 'europe', 'FR', 'Lyon')")
            report = await migrate(config, documents=False)
            assert report.shards["europe"].applied == [m.label for m in load_migrations()
                                                      if m.version > 6]
            checks = {r["conname"]: r["def"] for r in await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                "WHERE contype = 'c' AND conrelid IN ('users'::regclass, 'courses'::regclass, "
                "'georoute_shard'::regclass)")}
            assert not any("north_america" in d for d in checks.values()), checks
            assert "~" in checks["georoute_shard_name_check"]
            async with conn.transaction():  # a shard and a user of another region fit now
                await conn.execute("UPDATE georoute_shard SET name = 'africa'")
                await conn.execute(
                    "INSERT INTO users (email, full_name, home_region, country, city) "
                    "VALUES ('c@d.ng', 'C', 'africa', 'NG', 'Lagos')")
                await conn.execute("UPDATE georoute_shard SET name = 'europe'")
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE georoute_shard SET name = 'Not A Region'")
            assert await conn.fetchval("SELECT count(*) FROM users") == 2
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
        await admin.close()


_PROMOTERS_OLD_DDL = (  # what router/ha/promoter.py ran on first use before sql/023
    "CREATE TABLE IF NOT EXISTS georoute_failovers (at timestamptz NOT NULL DEFAULT now(), "
    "shard text NOT NULL, old_primary text NOT NULL, new_primary text NOT NULL, "
    "timeline int, promoted_by text NOT NULL, reason text NOT NULL)"
)


async def test_georoute_failovers_is_made_by_the_migrations(migrated: Config,
                                                             tmp_path: Path) -> None:
    """A freshly migrated shard has georoute_failovers before any failover, and the
    promoter's insert records into it (once the promoter made the table on first use, so a
    shard that never failed over had none); a shard where the promoter did make it, with a
    row in it, migrates cleanly and keeps the row. Scratch databases on europe's primary."""
    europe = migrated.shards["europe"]
    admin = await connect_node(migrated, europe.primary)
    before_023 = [m for m in load_migrations() if m.version < 23]
    for m in before_023:
        (tmp_path / f"{m.version:03d}_{m.name}.sql").write_text(m.sql)
    columns_sql = ("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                   "WHERE table_name = 'georoute_failovers' ORDER BY ordinal_position")
    found = {}
    try:
        for label in ("fresh", "promoted"):
            scratch = f"failovers_mig_{label}_{uuid.uuid4().hex[:8]}"
            shard = dataclasses.replace(
                europe, primary=dataclasses.replace(europe.primary, database=scratch))
            config = dataclasses.replace(migrated, shards={"europe": shard})
            await admin.execute(f"CREATE DATABASE {scratch}")
            try:
                conn = await connect_node(config, shard.primary)
                try:
                    if label == "promoted":  # an older cluster whose promoter made the table
                        await migrate(config, sql_dir=tmp_path, documents=False)
                        await conn.execute(_PROMOTERS_OLD_DDL)
                        await conn.execute(INSERT_SQL, "europe", "europe-1", "europe-2",
                                           "router-a", "before the migration")
                    report = await migrate(config, documents=False)
                    assert "023_georoute_failovers" in report.shards["europe"].applied
                    found[label] = [tuple(r) for r in await conn.fetch(columns_sql)]
                    await conn.execute(INSERT_SQL, "europe", "europe-2", "europe-1",
                                       "router-b", "after the migration")
                    rows = await conn.fetch("SELECT shard, old_primary, new_primary, timeline, "
                                            "promoted_by, reason FROM georoute_failovers "
                                            "ORDER BY at")
                    assert [r["reason"] for r in rows] == (
                        ["before the migration"] if label == "promoted" else []
                    ) + ["after the migration"]
                    assert all(r["timeline"] == 1 for r in rows)
                finally:
                    await conn.close()
            finally:
                await admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
    finally:
        await admin.close()
    assert found["fresh"] == found["promoted"]
    assert [c[0] for c in found["fresh"]] == ["at", "shard", "old_primary", "new_primary",
                                              "timeline", "promoted_by", "reason"]
