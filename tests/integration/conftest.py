"""Fixtures for the data-layer tests: a migrated cluster, connections to each primary, and a
small factory that builds catalogue rows through the SQL functions themselves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from router.tools.config_write import with_port_offset
from router.tools.db.connect import connect_node
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from tests.support.router_proc import (
    REGIONS,
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    router_config,
    running_router,
)


@pytest.fixture(scope="session")
def test_config(test_config: Config) -> Config:
    """GEOROUTE_TEST_EXTRA_OFFSET=N moves this directory's cluster N ports further, so a
    second test session (another engineer's) cannot stop the cluster under this one."""
    extra = os.environ.get("GEOROUTE_TEST_EXTRA_OFFSET")
    if not extra:
        return test_config
    state_dir = f"{test_config.cluster.state_dir}-{extra}"
    return with_port_offset(test_config, int(extra), state_dir)


@pytest.fixture(scope="session")
async def migrated(cluster: LocalCluster, test_config: Config) -> AsyncIterator[Config]:
    """The test cluster with every migration applied (once per session)."""
    await migrate(test_config)
    yield test_config


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition"
) -> None:
    """Re-evaluate `check` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_replayed(primary: asyncpg.Connection, replica: asyncpg.Connection) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    lsn = str(await primary.fetchval("SELECT pg_current_wal_lsn()::text"))

    async def replayed() -> bool:
        return bool(await replica.fetchval(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn))

    await wait_until(replayed, what=f"replica replay up to {lsn}")


@pytest.fixture
async def eu(migrated: Config) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the europe primary."""
    conn = await connect_node(migrated, migrated.shards["europe"].primary)
    yield conn
    await conn.close()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class Course:
    course_id: uuid.UUID
    instructor_id: uuid.UUID
    lessons: list[uuid.UUID]


class Catalogue:
    """Builds rows on one shard through the SQL functions (so they are exercised too)."""

    def __init__(self, conn: asyncpg.Connection, region: str) -> None:
        self.conn = conn
        self.region = region
        self._category: uuid.UUID | None = None

    async def category(self) -> uuid.UUID:
        if self._category is None:
            self._category = await self.conn.fetchval(
                "INSERT INTO categories (slug, name) VALUES ($1, 'Test') RETURNING category_id",
                unique("cat-"),
            )
        assert self._category is not None
        return self._category

    async def user(self, role: str = "student", **kw: Any) -> uuid.UUID:
        email = kw.pop("email", f"{unique('u')}@example.com")
        user_id: uuid.UUID = await self.conn.fetchval(
            "SELECT register_user($1, $2, $3, $4, $5, $6::user_role, $7)",
            email, kw.pop("name", "Ada Lovelace"), kw.pop("region", self.region),
            kw.pop("country", "DE"), kw.pop("city", "Berlin"), role,
            kw.pop("password_hash", None),
        )
        return user_id

    async def course(self, *, price_cents: int = 0, capacity: int | None = None,
                     lessons: int = 2, publish: bool = True, title: str = "Test Course"
                     ) -> Course:
        instructor = await self.user("instructor")
        course_id: uuid.UUID = await self.conn.fetchval(
            "SELECT create_course($1, $2, $3, $4, 'EUR', $5)",
            instructor, await self.category(), title, price_cents, capacity,
        )
        lesson_ids: list[uuid.UUID] = []
        if lessons:
            module = await self.conn.fetchval("SELECT add_module($1, 'Module')", course_id)
            for i in range(lessons):
                lesson_ids.append(await self.conn.fetchval(
                    "SELECT add_lesson($1, $2, 300)", module, f"Lesson {i + 1}"))
        if publish:
            await self.conn.fetchval("SELECT publish_course($1)", course_id)
        return Course(course_id, instructor, lesson_ids)

    async def enrolled(self, course: Course, user: uuid.UUID | None = None
                       ) -> tuple[uuid.UUID, uuid.UUID]:
        """(user_id, enrollment_id) of a new student enrolled in `course`."""
        user = user or await self.user()
        enrollment: uuid.UUID = await self.conn.fetchval(
            "SELECT enroll($1, $2)", user, course.course_id)
        return user, enrollment


@pytest.fixture
async def catalogue(eu: asyncpg.Connection) -> Catalogue:
    return Catalogue(eu, "europe")


@contextlib.contextmanager
def sql_error(sqlstate: str, match: str = "") -> Iterator[None]:
    """Expect a PostgreSQL error with this SQLSTATE (and a message containing `match`)."""
    with pytest.raises(asyncpg.PostgresError) as err:
        yield
    assert err.value.sqlstate == sqlstate, f"{err.value.sqlstate}: {err.value}"
    assert match in str(err.value), str(err.value)


@pytest.fixture(scope="session")
def router(cluster: LocalCluster, migrated: Config, test_config: Config) -> Iterator[RouterProcess]:
    """One `georoute router` process for the router tests (lag bound 64 KiB)."""
    config = router_config(test_config, max_replica_lag_bytes=64 * 1024)
    path = Path(test_config.cluster.state_dir) / "router-test.toml"
    with running_router(config, path) as proc:
        yield proc


@pytest.fixture
async def db(router: RouterProcess) -> AsyncIterator[client.Client]:
    """A client session on the test router, with the scratch table on every shard."""
    c = await client.connect(router.dsn, token=TOKEN)
    async with c:
        for region in REGIONS:
            await c.execute(SCRATCH_DDL, shard=region)
        yield c
