"""Fixtures for the API tests: the session's real cluster (migrated), a router node of their
own, a client session on it, and the API: in process (httpx over ASGI, fast) and as a real
`georoute api` process on a free port (uvicorn, httptools)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import client
from api import Settings, create_app
from api.domain import Domain
from api.domain.passwords import Passwords
from api.models import Register
from api.types import Region, UserRole
from router.config import Config
from router.tools.config_write import config_to_toml
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.api.openapi_check import DocumentedResponses
from tests.integration.conftest import migrated, test_config  # noqa: F401  (fixtures)
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router

SECRET = "api-test-secret-" + "x" * 60
SETTINGS = Settings(jwt_secret=SECRET, rate_limit_per_minute=60_000,
                    rate_limit_burst=10_000).validate()
PASSWORD = "correct horse battery staple"


REGIONS = ("north_america", "europe", "asia")


@pytest.fixture
async def primaries(
    migrated: Config,  # noqa: F811
) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    """A connection to each region's primary, to see what the API wrote where."""
    conns = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    try:
        yield conns
    finally:
        for conn in conns.values():
            await conn.close()


@pytest.fixture(scope="session")
def api_router(cluster: LocalCluster, migrated: Config,  # noqa: F811
               test_config: Config) -> Iterator[RouterProcess]:  # noqa: F811
    """A router node for the API tests alone (its own ports: shift 40)."""
    config = router_config(test_config, port_shift=40)
    path = Path(test_config.cluster.state_dir) / "router-api-test.toml"
    with running_router(config, path) as proc:
        yield proc


@pytest.fixture(scope="session")
async def api_db(api_router: RouterProcess) -> AsyncIterator[client.Client]:
    db = await client.connect(api_router.dsn, token=TOKEN, client_name="api-tests")
    async with db:
        yield db


@pytest.fixture(scope="session")
async def category_id(api_db: client.Client) -> str:
    """A category, the same row on every shard (a reference table: one write, with no shard
    hint, goes to every shard's primary in one two-phase commit)."""
    category = str(uuid.uuid4())
    await api_db.execute(
        "INSERT INTO categories (category_id, slug, name) VALUES ($1, $2, 'API tests')",
        uuid.UUID(category), f"api-tests-{category[:8]}")
    return category


@pytest.fixture(scope="session")
def domain(api_db: client.Client) -> Domain:
    # Cheap argon2id parameters: the tests hash many passwords; the algorithm is the same.
    return Domain(api_db, SETTINGS, passwords=Passwords(time_cost=1, memory_cost_kib=1024))


@pytest.fixture(scope="session")
def app(api_db: client.Client, domain: Domain) -> Any:
    return create_app(api_db, SETTINGS, domain=domain, rate_limit=False)


@pytest.fixture(scope="session")
def documented(app: Any) -> DocumentedResponses:
    return DocumentedResponses(app.state.openapi)


def api_client(app: Any, documented: DocumentedResponses | None = None,
               ip: str = "127.0.0.9") -> httpx.AsyncClient:
    """An HTTP client of the in-process app; with `documented`, every response it gets is
    checked against the OpenAPI document (status documented, body valid)."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    hooks = {"response": [documented.hook]} if documented is not None else {}
    return httpx.AsyncClient(transport=transport, base_url="http://api.test/api/v1",
                             event_hooks=hooks)


@pytest.fixture
async def http(app: Any, documented: DocumentedResponses) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app, documented) as c:
        yield c


def email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@dataclass
class Person:
    user_id: str
    email: str
    role: str
    region: str
    token: str
    refresh: str
    headers: dict[str, str] = field(default_factory=dict)


async def signup(http: httpx.AsyncClient, *, role: str = "student", region: str = "europe",
                 name: str = "Test Person") -> Person:
    address = email(role)
    r = await http.post("/auth/register", json={
        "email": address, "password": PASSWORD, "full_name": name, "role": role,
        "region": region, "country": "FR", "city": "Lyon"})
    assert r.status_code == 201, r.text
    return await login(http, address)


async def login(http: httpx.AsyncClient, address: str) -> Person:
    r = await http.post("/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 200, r.text
    grant = r.json()
    return Person(grant["user_id"], address, grant["role"], grant["region"],
                  grant["access_token"], grant["refresh_token"],
                  {"Authorization": f"Bearer {grant['access_token']}"})


async def make_admin(http: httpx.AsyncClient, domain: Domain, region: str = "europe") -> Person:
    """Admins are not self-registered: made through the domain, as an operator would."""
    address = email("admin")
    await domain.auth.register(Register(email=address, password=PASSWORD, full_name="Admin",
                                        region=Region(region), country="DE"), role=UserRole.ADMIN)
    return await login(http, address)


@dataclass
class BuiltCourse:
    course_id: str
    lessons: list[str]
    owner: Person


async def build_course(http: httpx.AsyncClient, owner: Person, category_id: str, *,
                       title: str, description: str = "", price_cents: int = 0,
                       lessons: int = 2, publish: bool = True,
                       capacity: int | None = None) -> BuiltCourse:
    r = await http.post("/courses", headers=owner.headers, json={
        "title": title, "description": description, "category_id": category_id,
        "price_cents": price_cents, "currency": "EUR", "capacity": capacity})
    assert r.status_code == 201, r.text
    course_id = r.json()["course_id"]
    r = await http.post(f"/courses/{course_id}/modules", headers=owner.headers,
                        json={"title": "Module 1"})
    assert r.status_code == 201, r.text
    module_id = r.json()["id"]
    lesson_ids = []
    for i in range(lessons):
        r = await http.post(f"/modules/{module_id}/lessons", headers=owner.headers,
                            json={"title": f"Lesson {i + 1}", "duration_seconds": 60})
        assert r.status_code == 201, r.text
        lesson_ids.append(r.json()["id"])
    if publish:
        r = await http.post(f"/courses/{course_id}/publish", headers=owner.headers)
        assert r.status_code == 200, r.text
    return BuiltCourse(course_id, lesson_ids, owner)


# ---- the API as a real process ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiProcess:
    proc: subprocess.Popen[str]
    base_url: str
    output: list[str] = field(default_factory=list)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_api(router: RouterProcess, *, env: dict[str, str] | None = None,
              extra_args: tuple[str, ...] = (), cwd: Path | None = None,
              api_changes: dict[str, Any] | None = None) -> ApiProcess:
    """`georoute api` on a free port against `router`, started and waited for (its ready
    line, with a deadline)."""
    config = router.config
    if api_changes:
        config = replace(config, api=replace(config.api, **api_changes))
    path = Path(config.cluster.state_dir) / f"api-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(config_to_toml(config))
    environment = dict(os.environ)
    environment[config.router.auth_token_env] = TOKEN
    environment.pop(config.api.jwt_secret_env, None)
    environment.update(env or {})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.tools.cli", "--config", str(path), "api", "--port", str(port),
         *extra_args],
        env=environment, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api = ApiProcess(proc, f"http://127.0.0.1:{port}")
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            api.output.append(line)
            if "ready on" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    return api
