"""X-Request-ID end to end: the API takes a well-formed id from the client (else makes one),
echoes it, and sends it with every request it makes to the router, whose log lines about
those requests name it: every statement's with `router.log_min_duration_ms = 0`, a failed
one's whatever it took, a transaction's Commit, and the two-phase commit's. An invalid id
sent on the wire is refused with INVALID_REQUEST, and the connection goes on."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import client
from api import create_app
from api.domain import Domain
from api.domain.passwords import Passwords
from protocol import Commit, Error, ErrorCode, Hints, Query, Rows, Status
from router.config import Config
from tests.api.conftest import PASSWORD, SETTINGS, build_course, email, signup
from tests.integration.test_wire_fixes import Raw
from tests.support.router_proc import (
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    router_config,
    running_router,
)


@pytest.fixture(scope="module")
def logging_router(migrated: Config, test_config: Config) -> Iterator[RouterProcess]:
    """A router node that logs every request (its own ports: shift 43)."""
    config = router_config(test_config, port_shift=43, log_min_duration_ms=0.0)
    path = Path(test_config.cluster.state_dir) / "router-request-id-test.toml"
    with running_router(config, path) as proc:
        yield proc


@pytest.fixture
async def logged_api(logging_router: RouterProcess) -> AsyncIterator[httpx.AsyncClient]:
    db = await client.connect(logging_router.dsn, token=TOKEN, client_name="request-id-tests")
    async with db:
        domain = Domain(db, SETTINGS, passwords=Passwords(time_cost=1, memory_cost_kib=1024))
        app = create_app(db, SETTINGS, domain=domain, rate_limit=False)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 40000))
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://api.test/api/v1") as http:
            yield http


def lines_naming(router: RouterProcess, request_id: str) -> list[str]:
    assert router.wait_for_output(f"request_id={request_id}"), (
        f"no router log line names {request_id}:\n" + "".join(router.output[-30:]))
    return [line for line in router.output if line.rstrip().endswith(f"request_id={request_id}")]


def registration(address: str) -> dict[str, Any]:
    return {"email": address, "password": PASSWORD, "full_name": "Traced Person",
            "role": "student", "region": "europe", "country": "FR", "city": "Lyon"}


async def test_an_api_requests_id_reaches_the_routers_log_for_its_statements(
        logged_api: httpx.AsyncClient, logging_router: RouterProcess) -> None:
    request_id = f"it-{uuid.uuid4().hex}"
    r = await logged_api.post("/auth/register", json=registration(email("traced")),
                              headers={"X-Request-ID": request_id})
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-ID"] == request_id  # echoed
    lines = lines_naming(logging_router, request_id)
    statements = [line for line in lines if " ok in " in line and "sql=" in line]
    assert statements, lines
    assert all("europe" in line for line in statements), statements  # where it ran


async def test_an_id_the_api_made_reaches_the_router_too(
        logged_api: httpx.AsyncClient, logging_router: RouterProcess) -> None:
    bad_inbound = "not a valid id: spaces and " + "x" * 200
    r = await logged_api.post("/auth/register", json=registration(email("traced")),
                              headers={"X-Request-ID": bad_inbound})
    assert r.status_code == 201, r.text
    made = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)  # replaced, not passed on
    assert lines_naming(logging_router, made)
    assert not any(bad_inbound[:20] in line for line in logging_router.output)


async def test_a_failed_request_is_logged_with_its_id_whatever_it_took(
        http: httpx.AsyncClient, api_router: RouterProcess, category_id: str) -> None:
    """The session's API router keeps the default threshold (1 s): only the failure logs."""
    assert api_router.config.router.log_min_duration_ms == 1000.0
    teacher = await signup(http, role="instructor")
    course = await build_course(http, teacher, category_id, title="Traced twice")
    student = await signup(http)
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text
    request_id = f"dup-{uuid.uuid4().hex}"
    r = await http.post("/enrollments", headers={**student.headers, "X-Request-ID": request_id},
                        json={"course_id": course.course_id})
    assert r.status_code == 409, r.text
    [line] = lines_naming(api_router, request_id)
    assert "POSTGRES_ERROR [23505]" in line and "sql='SELECT enroll(" in line, line


async def test_a_transactions_begin_statements_and_commit_name_the_request(
        logging_router: RouterProcess) -> None:
    request_id = f"tx-{uuid.uuid4().hex}"
    db = await client.connect(logging_router.dsn, token=TOKEN, client_name="request-id-tx")
    async with db:
        for region in ("europe", "asia"):
            await db.execute(SCRATCH_DDL, shard=region)
        with client.request_id(request_id):
            async with db.transaction() as tx:  # over shards: written on two, 2PC
                for region in ("europe", "asia"):
                    await tx.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, $2)",
                                     uuid.uuid4(), region)
    assert logging_router.wait_for_output("request Commit ")
    lines = lines_naming(logging_router, request_id)
    assert any(" request Begin " in line for line in lines), lines
    assert sum(" request Query " in line and "rt_items" in line for line in lines) == 2, lines
    assert any(" request Commit " in line for line in lines), lines


async def test_an_invalid_id_on_the_wire_is_refused_and_the_connection_goes_on(
        logging_router: RouterProcess) -> None:
    raw = await Raw.open(logging_router)
    try:
        for bad in (42, "x" * 129, "has space", ""):
            reply = await raw.request(Query(0, "SELECT 1", hints=Hints(shard="europe",
                                                                        request_id=bad)))  # type: ignore[arg-type]
            assert isinstance(reply, Error), reply
            assert reply.code == ErrorCode.INVALID_REQUEST
            assert "hints.request_id" in reply.message
        reply = await raw.request(Commit(0, 1, "a b"))  # the trailing field is checked too
        assert isinstance(reply, Error) and reply.code == ErrorCode.INVALID_REQUEST
        ok = await raw.request(Query(0, "SELECT 1", hints=Hints(shard="europe",
                                                               request_id="fine-1")))
        assert isinstance(ok, (Rows, Status)), ok
    finally:
        await raw.close()
