"""An idempotency key names one request: reusing it for another statement, other parameters,
another batch or another kind of request is refused (IDEMPOTENCY_KEY_REUSED) and runs
nothing, while the same request again still gets the stored reply. Ground truth is read on
the shard's primary directly."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import client
from protocol import ErrorCode
from router.config import Config
from router.tools.db.connect import connect_node
from router.tools.db.migrate import load_migrations, migrate
from tests.support.ids import new_id
from tests.support.router_proc import RouterProcess, number

INSERT = "INSERT INTO rt_items (item_id, region, payload) VALUES ($1, 'europe', $2) RETURNING payload"
DELETE = "DELETE FROM rt_items WHERE item_id = $1"
APPEND = "UPDATE rt_items SET payload = payload || $2 WHERE item_id = $1"


def key() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
async def europe(router: RouterProcess) -> AsyncIterator[asyncpg.Connection]:
    """The europe primary, read directly."""
    conn = await connect_node(router.config, router.config.shards["europe"].primary)
    yield conn
    await conn.close()


async def payload_of(conn: asyncpg.Connection, item: uuid.UUID) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT payload FROM rt_items WHERE item_id = $1", item)
    return value


def assert_reused(err: pytest.ExceptionInfo[client.IdempotencyKeyReusedError], k: str) -> None:
    assert err.value.code == ErrorCode.IDEMPOTENCY_KEY_REUSED
    assert err.value.retryable is False
    assert err.value.detail["idempotency_key"] == k
    assert isinstance(err.value, client.InvalidRequestError)  # old callers still catch it


async def test_another_statement_under_a_used_key_is_refused_and_not_run(
    db: client.Client, router: RouterProcess, europe: asyncpg.Connection
) -> None:
    item = new_id(number(router.config, "europe"))
    k = key()
    assert [r[0] for r in await db.fetch(INSERT, item, "kept", idempotency_key=k)] == ["kept"]
    # The reported bug: a DELETE under the INSERT's key got "INSERT 0 1" back and never ran.
    with pytest.raises(client.IdempotencyKeyReusedError) as err:
        await db.execute(DELETE, item, idempotency_key=k)
    assert_reused(err, k)
    assert await payload_of(europe, item) == "kept"
    # The same request again is still a retry: the stored reply, nothing applied twice.
    assert [r[0] for r in await db.fetch(INSERT, item, "kept", idempotency_key=k)] == ["kept"]
    assert await europe.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 1


async def test_other_parameters_under_a_used_key_are_refused_and_not_run(
    db: client.Client, router: RouterProcess, europe: asyncpg.Connection
) -> None:
    first, second = (new_id(number(router.config, "europe")) for _ in range(2))
    k = key()
    await db.execute(INSERT, first, "a", idempotency_key=k)
    with pytest.raises(client.IdempotencyKeyReusedError) as err:
        await db.execute(INSERT, second, "a", idempotency_key=k)
    assert_reused(err, k)
    with pytest.raises(client.IdempotencyKeyReusedError):  # a parameter's value alone differs
        await db.execute(INSERT, first, "b", idempotency_key=k)
    assert await payload_of(europe, first) == "a"
    assert await payload_of(europe, second) is None


async def test_batches_are_fingerprinted_whole(
    db: client.Client, router: RouterProcess, europe: asyncpg.Connection
) -> None:
    item = new_id(number(router.config, "europe"))
    await db.execute(INSERT, item, "", shard="europe")
    k = key()
    assert await db.executemany(APPEND, [(item, "a"), (item, "b")], idempotency_key=k) == "BATCH 2"
    assert await db.executemany(APPEND, [(item, "a"), (item, "b")], idempotency_key=k) == "BATCH 2"
    for other in ([(item, "a")], [(item, "a"), (item, "c")], [(item, "b"), (item, "a")]):
        with pytest.raises(client.IdempotencyKeyReusedError) as err:
            await db.executemany(APPEND, other, idempotency_key=k)
        assert_reused(err, k)
    # A single statement is another request than a batch, even one holding just it.
    with pytest.raises(client.IdempotencyKeyReusedError):
        await db.execute(APPEND, item, "a", idempotency_key=k)
    single = key()
    await db.execute(APPEND, item, "x", idempotency_key=single)
    with pytest.raises(client.IdempotencyKeyReusedError):
        await db.executemany(APPEND, [(item, "x")], idempotency_key=single)
    assert await payload_of(europe, item) == "abx"


async def test_concurrent_requests_under_one_key_apply_one(
    db: client.Client, router: RouterProcess, europe: asyncpg.Connection
) -> None:
    item = new_id(number(router.config, "europe"))
    await db.execute(INSERT, item, "", shard="europe")
    k = key()
    results = await asyncio.gather(
        *(db.execute(APPEND, item, str(i), idempotency_key=k) for i in range(6)),
        return_exceptions=True,
    )
    applied = [r for r in results if r == "UPDATE 1"]
    refused = [r for r in results if isinstance(r, client.IdempotencyKeyReusedError)]
    assert (len(applied), len(refused)) == (1, 5), results
    assert len(await payload_of(europe, item) or "") == 1


async def test_keys_are_scoped_per_shard(
    db: client.Client, router: RouterProcess, europe: asyncpg.Connection
) -> None:
    """PROTOCOL.md: a key is remembered on the primary of the shard its write ran on, so the
    same key on another shard's write is another key there (clients use unique keys)."""
    eu_item = new_id(number(router.config, "europe"))
    asia_item = new_id(number(router.config, "asia"))
    k = key()
    await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", eu_item,
                     idempotency_key=k)
    await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'asia')", asia_item,
                     idempotency_key=k)
    assert await db.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", asia_item,
                             consistency="strong") == 1


async def test_keys_claimed_before_fingerprints_are_replayed(
    db: client.Client, router: RouterProcess, europe: asyncpg.Connection
) -> None:
    """A key a router claimed before migration 006 has no fingerprint: its retry is replayed
    as it was before, never run a second time."""
    item = new_id(number(router.config, "europe"))
    k = key()
    await europe.execute(
        "INSERT INTO georoute_idempotency (idem_key, status, reply) VALUES ($1, 'DELETE 1', $2)",
        k, b"\x92\x90\x90",  # MessagePack [[], []]: no columns, no rows
    )
    await db.execute(INSERT, item, "x", shard="europe")
    assert await db.execute(DELETE, item, idempotency_key=k) == "DELETE 1"
    assert await payload_of(europe, item) == "x"


async def test_an_existing_cluster_migrates_and_keeps_its_keys(
    migrated: Config, tmp_path: Path
) -> None:
    """A cluster migrated up to 005 (keys without fingerprints) takes 006 from `georoute db
    migrate` and keeps its keys. Run on a scratch database on each primary."""
    scratch = f"idem_mig_{uuid.uuid4().hex[:8]}"
    shards = {
        name: dataclasses.replace(shard, primary=dataclasses.replace(shard.primary,
                                                                     database=scratch))
        for name, shard in migrated.shards.items()
    }
    config = dataclasses.replace(migrated, shards=shards)
    for m in load_migrations():
        if m.version <= 5:
            (tmp_path / f"{m.version:03d}_{m.name}.sql").write_text(m.sql)
    admins = [await connect_node(migrated, shard.primary) for shard in migrated.shards.values()]
    try:
        for admin in admins:
            await admin.execute(f"CREATE DATABASE {scratch}")
        await migrate(config, sql_dir=tmp_path, documents=False)
        europe = await connect_node(config, config.shards["europe"].primary)
        try:
            await europe.execute("INSERT INTO georoute_idempotency (idem_key, status, reply) "
                                 "VALUES ('old-key', 'INSERT 0 1', '\\x929090')")
            report = await migrate(config, documents=False)
            newer = [m.label for m in load_migrations() if m.version >= 6]
            assert report.shards["europe"].applied == newer  # 006 and what came after it
            row = await europe.fetchrow("SELECT status, fingerprint FROM georoute_idempotency "
                                        "WHERE idem_key = 'old-key'")
            assert row is not None
            assert tuple(row) == ("INSERT 0 1", None)
        finally:
            await europe.close()
    finally:
        for admin in admins:
            await admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
            await admin.close()
