"""`georoute restore --replace` on a scratch cluster of its own (one shard: primary, replica,
document store; a router in external failover mode): rows written, the time noted, more rows
written, then the shard restored to the noted time as its new primary. Through the router the
first rows are there and the later ones are not, writes work again, and the replica, made
again, follows the new primary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.cli import build_parser
from router.tools.config_write import with_port_offset
from router.tools.localcluster import LocalCluster
from tests.support.ids import new_id
from tests.support.router_proc import SCRATCH_DDL, TOKEN, router_config, running_router

SCRATCH_OFFSET = 5900
SHARD = "north_america"
WITHIN = 60.0  # seconds for the cluster and the router to settle after the swap


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    moved = with_port_offset(
        test_config, SCRATCH_OFFSET, str(Path(test_config.cluster.state_dir) / "scratch-replace")
    )
    config = replace(moved, shards={SHARD: moved.shards[SHARD]},
                     failover=replace(moved.failover, mode="external"))
    local = LocalCluster(config)
    local.down(purge=True)  # leftovers of an interrupted run
    local.up()
    try:
        yield local, config
    finally:
        local.down(purge=True)


def _cli(config: Config, *argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.func(args, config))


async def _direct(port: int, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                 database="georoute", timeout=5)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _write(db: client.Client, item: Any, payload: str) -> None:
    await db.execute("INSERT INTO rt_items (item_id, region, payload) VALUES ($1, $2, $3)",
                     item, SHARD, payload)


async def _until_written(db: client.Client, item: Any, payload: str) -> None:
    """A write through the router, again while it fails retryably (the router is still
    finding the shard's primary after the swap), within WITHIN seconds."""
    deadline = time.monotonic() + WITHIN
    while True:
        try:
            await _write(db, item, payload)
            return
        except client.GeorouteError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_restore_replace_makes_the_restored_shard_the_primary(
    scratch: tuple[LocalCluster, Config], capsys: pytest.CaptureFixture[str]
) -> None:
    local, config = scratch
    shard = config.shards[SHARD]
    rconfig = router_config(config)
    with running_router(rconfig, local.state_dir / "router-replace.toml") as proc:
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            await db.execute(SCRATCH_DDL, shard=SHARD)
            assert _cli(config, "backup", "--shard", SHARD) == 0
            first = [new_id(shard.number) for _ in range(3)]
            later = [new_id(shard.number) for _ in range(2)]
            for item in first:
                await _write(db, item, "before")
            noted = datetime.now(UTC)
            for item in later:
                await _write(db, item, "after")
            before = await _direct(shard.primary.port, "SELECT timeline_id FROM "
                                   "pg_control_checkpoint()")
            capsys.readouterr()

            code = await asyncio.to_thread(_cli, config, "restore", "--shard", SHARD, "--to",
                                           noted.isoformat(), "--replace", "--timeout", "120")
            assert code == 0
            out = capsys.readouterr().out
            assert "north_america-1 is the primary again" in out
            assert "KEPT on the shard: every transaction committed on it at or before" in out
            assert "LOST from the shard: every transaction committed on it after" in out
            assert "replicas made again from it, streaming: north_america-2" in out
            kept_dir = next(line for line in out.splitlines() if "data directory is kept" in line)
            kept = Path(kept_dir.split(" at ", 1)[1].split(";")[0])
            assert await asyncio.to_thread(kept.is_dir), kept

            # Writes work again through the router (at once, or once it has found the node).
            fresh = new_id(shard.number)
            await _until_written(db, fresh, "fresh")

            # Through the router: the first rows are there, the later ones are not.
            rows = await db.fetch("SELECT item_id, payload FROM rt_items WHERE region = $1",
                                  SHARD, consistency="strong")
            found = {r["item_id"]: r["payload"] for r in rows}
            assert set(found) == {*first, fresh}, found
            assert not set(later) & set(found)

        # The new primary is on a newer timeline; the replica, made again, streams from it
        # and has the write made after the swap.
        after = await _direct(shard.primary.port, "SELECT timeline_id FROM "
                              "pg_control_checkpoint()")
        assert after[0][0] > before[0][0]
        replica_port = shard.replicas[0].port
        deadline = time.monotonic() + WITHIN
        while not await _direct(replica_port, "SELECT 1 FROM rt_items WHERE item_id = $1",
                                fresh):
            assert time.monotonic() < deadline, "the replica never replayed the new write"
            await asyncio.sleep(0.02)
        assert (await _direct(replica_port, "SELECT pg_is_in_recovery()"))[0][0] is True
        streaming = await _direct(shard.primary.port,
                                  "SELECT count(*) FROM pg_stat_replication "
                                  "WHERE state = 'streaming'")
        assert streaming[0][0] == 1

        # A new client, reading from the replica through the router, sees the new history.
        async with await client.connect(proc.dsn, token=TOKEN) as db2:
            deadline = time.monotonic() + WITHIN
            while True:
                rows, route = await db2.fetch_routed(
                    "SELECT item_id FROM rt_items WHERE region = $1", SHARD,
                    consistency="replica")
                if route is not None and route.node == "north_america-2":
                    break
                assert time.monotonic() < deadline, f"no read reached the replica ({route})"
                await asyncio.sleep(0.05)
            assert {r["item_id"] for r in rows} == {*first, fresh}
