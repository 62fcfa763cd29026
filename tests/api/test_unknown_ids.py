"""Ids that name no shard, in every operation that takes one: each path parameter, and each
id field of a request body, given (a) a random uuid4 (no georoute id: the router refuses a
statement routed by it, MISSING_SHARD_KEY) and (b) a georoute id whose shard number this
cluster does not have (UNKNOWN_SHARD). No row has either id, so the answer is the
operation's own 404 (or 422 for a body's id, or 403 where the caller may not see the row
anyway), as an RFC 9457 problem: never a 5xx. The cases come from the API's table of
operations, so a new operation with an id is covered without being named here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from api.domain import Domain
from api.http.app import OPERATIONS, PREFIX
from api.http.operations import Operation
from api.types import UserRole
from router.config import Config
from tests.api.conftest import Person, api_client
from tests.api.openapi_check import DocumentedResponses
from tests.api.openapi_requests import Call, Context, calls, make_context
from tests.support.ids import new_id

KINDS = ("uuid4", "unknown-shard")
# An id checked as a part of another resource rather than looked up by itself: a lesson to
# complete is one of the enrollment's course's lessons (on the enrollment's shard, GR006), so
# one that is no lesson there is 422 as for a lesson of another course.
CHECKED_AS_PART = {("POST", "/enrollments/{enrollment_id}/lessons/{lesson_id}/complete",
                    "lesson_id"): 422}


def _body_ids(op: Operation) -> tuple[str, ...]:
    if op.body is None:
        return ()
    return tuple(name for name, f in op.body.model_fields.items()
                 if f.annotation in (uuid.UUID, uuid.UUID | None))


def _cases() -> Iterator[Any]:
    for op in OPERATIONS:
        fields = [("path", name) for name in op.params()]
        fields += [("body", name) for name in _body_ids(op)]
        for where, name in fields:
            for kind in KINDS:
                yield pytest.param(op, where, name, kind,
                                   id=f"{op.method} {op.path} {where}.{name} {kind}")


CASES = list(_cases())


@pytest.fixture(scope="module")
async def context(app: Any, domain: Domain, category_id: str) -> Context:
    async with api_client(app) as http:
        return await make_context(http, domain, category_id)


@pytest.fixture(scope="module")
def unknown_shard(test_config: Config) -> int:
    """A shard number no shard of this cluster has."""
    return next(n for n in range(255, -1, -1) if test_config.shard_by_number(n) is None)


@pytest.fixture(scope="module")
async def http_m(app: Any, documented: DocumentedResponses) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app, documented) as c:
        yield c


def _callers(op: Operation, ctx: Context) -> list[Person | None]:
    if op.roles is None:
        return [None]
    people = {UserRole.STUDENT: ctx.student, UserRole.INSTRUCTOR: ctx.instructor,
              UserRole.ADMIN: ctx.admin}
    return [people[role] for role in UserRole if role in op.roles]


def test_every_operation_with_an_id_is_covered() -> None:
    """The table has the operations this test is about (a guard against walking nothing)."""
    walked = {(op.method, op.path) for op, *_ in (c.values for c in CASES)}
    assert ("GET", "/users/{user_id}") in walked
    assert ("POST", "/enrollments") in walked  # a body's course_id
    assert ("POST", "/payments") in walked  # a body's enrollment_id
    assert ("POST", "/enrollments/{enrollment_id}/lessons/{lesson_id}/complete") in walked


@pytest.mark.parametrize(("op", "where", "name", "kind"), CASES)
async def test_an_id_of_no_shard_is_a_clean_refusal(
    http_m: httpx.AsyncClient, app: Any, context: Context, unknown_shard: int,
    op: Operation, where: str, name: str, kind: str,
) -> None:
    allowed = {404} | ({403} & set(op.errors))
    if where == "body":
        allowed.add(422)
    if (op.method, op.path, name) in CHECKED_AS_PART:
        allowed.add(CHECKED_AS_PART[op.method, op.path, name])
    wrong = []
    for who in _callers(op, context):
        # Built afresh each time: a new Idempotency-Key, the other ids real rows.
        call = next(c for c in calls(app.state.openapi, context)
                    if (c.method, c.template) == (op.method, PREFIX + op.path))
        nowhere = str(uuid.uuid4() if kind == "uuid4" else new_id(unknown_shard))
        params = {**call.params, "path": dict(call.params["path"])}
        body = call.body
        if where == "path":
            params["path"][name] = nowhere
        else:
            body = {**body, name: nowhere}
        headers = {} if who is None else dict(who.headers)
        r = await Call(call.method, call.template, params, body, headers).send(http_m)
        role = "anonymous" if who is None else who.role
        if (r.status_code not in allowed
                or r.headers["content-type"] != "application/problem+json"):
            wrong.append(f"as {role}: {r.status_code} {r.text[:200]}")
            continue
        problem = r.json()
        assert problem["status"] == r.status_code and problem["detail"]
    assert not wrong, f"{op.method} {op.path} with {where}.{name} of {kind}, not {allowed}: {wrong}"


async def test_a_refresh_token_of_no_shard_is_refused_like_any_unknown_one(
    http_m: httpx.AsyncClient, unknown_shard: int,
) -> None:
    """A refresh token carries its session's id (`<session_id>.<secret>`), which routes it:
    one of no shard is unknown (refresh: 401), and logging out with it revokes nothing (204,
    as for any unknown or revoked token)."""
    for nowhere in (uuid.uuid4(), new_id(unknown_shard)):
        token = f"{nowhere}.{'s' * 43}"
        r = await http_m.post("/auth/refresh", json={"refresh_token": token})
        assert r.status_code == 401, r.text
        assert r.headers["content-type"] == "application/problem+json"
        r = await http_m.post("/auth/logout", json={"refresh_token": token})
        assert r.status_code == 204, r.text
