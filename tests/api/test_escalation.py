"""Role escalation and token forgery, beyond test_refusals.py (which covers no token, expired,
another audience or issuer, a foreign key's signature, alg none and HS512): every
operation walked from the API's own table of operations, with the token of a role it does
not allow; tokens edited after signing, tokens our secret signed with a claim missing or
issued in the future, an empty signature, an oversized token; and another instructor's
course published or couponed."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from api.domain import Domain
from api.http.app import OPERATIONS
from api.types import UserRole
from tests.api.conftest import SECRET, SETTINGS, Person, build_course, signup
from tests.api.openapi_requests import Call, Context, calls, make_context
from tests.support.reliability import record

PREFIX = "/api/v1"


@pytest.fixture
async def context(http: httpx.AsyncClient, domain: Domain, category_id: str) -> Context:
    return await make_context(http, domain, category_id)


def _problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.headers["content-type"] == "application/problem+json"


def _as(call: Call, person: Person | None) -> Call:
    headers = {} if person is None else dict(person.headers)
    return Call(call.method, call.template, call.params, call.body, headers)


async def test_every_operation_refuses_the_roles_it_does_not_allow(
    http: httpx.AsyncClient, context: Context, app: Any,
) -> None:
    by_route = {(c.method, c.template): c for c in calls(app.state.openapi, context)}
    people = {UserRole.STUDENT: context.student, UserRole.INSTRUCTOR: context.instructor,
              UserRole.ADMIN: context.admin}
    refused = anonymous = 0
    for op in OPERATIONS:
        if op.roles is None:
            continue  # public
        call = by_route[(op.method, PREFIX + op.path)]
        _problem(await _as(call, None).send(http), 401)
        anonymous += 1
        for role, person in people.items():
            if role not in op.roles:
                _problem(await _as(call, person).send(http), 403)
                refused += 1
    record("role escalation (every operation, every role it does not allow)",
           "each operation of the API's table called with the token of each role it does not "
           "allow, and with none", None, refused_403=refused, refused_401=anonymous)
    assert refused >= 10  # instructor and admin operations exist for a student to try


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _claims(person: Person, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": person.user_id, "role": person.role, "region": person.region, "iat": now,
              "exp": now + 600, "iss": SETTINGS.jwt_issuer, "aud": SETTINGS.jwt_audience}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def test_forged_and_malformed_tokens(http: httpx.AsyncClient, context: Context) -> None:
    student = context.student
    header, payload, signature = student.token.split(".")
    claims = json.loads(_unb64(payload))

    async def refused(token: str, path: str = "/users/me") -> None:
        _problem(await http.get(path, headers={"Authorization": f"Bearer {token}"}), 401)

    # The payload edited after signing: a role, another user, a later expiry.
    for change in ({"role": "admin"}, {"sub": context.admin.user_id},
                   {"exp": claims["exp"] + 86_400}):
        edited = _b64(json.dumps({**claims, **change}).encode())
        await refused(f"{header}.{edited}.{signature}", "/analytics/top-courses")
    # The header edited after signing (alg none, keeping the signature).
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    await refused(f"{none_header}.{payload}.{signature}")
    await refused(f"{header}.{payload}.")  # no signature
    await refused(f"{header}.{payload}")  # two parts
    await refused("a" * 100_000)  # oversized
    # Signed with our own secret, but a required claim missing, or issued in the future.
    for missing in ("exp", "iat", "iss", "aud", "sub", "role", "region"):
        token = jwt.encode(_claims(student, **{missing: None}), SECRET, algorithm="HS256")
        await refused(token)
    future = int(time.time()) + 3600
    await refused(jwt.encode(_claims(student, iat=future, exp=future + 600), SECRET,
                             algorithm="HS256"))
    await refused(jwt.encode(_claims(student, role="superuser"), SECRET, algorithm="HS256"))
    await refused(jwt.encode(_claims(student, sub="not-a-uuid"), SECRET, algorithm="HS256"))
    # A well-signed token of ours still works (the refusals were the edits).
    ok = jwt.encode(_claims(student), SECRET, algorithm="HS256")
    r = await http.get("/users/me", headers={"Authorization": f"Bearer {ok}"})
    assert r.status_code == 200, r.text
    record("forged JWTs",
           "payload or header edited after signing (role, sub, exp, alg none), no or two "
           "parts, 100 KB token, our secret with each required claim missing, issued in the "
           "future, an unknown role, a malformed sub", None, all_refused_401=True)


async def test_another_instructors_course(http: httpx.AsyncClient, context: Context,
                                          category_id: str) -> None:
    rival = await signup(http, role="instructor")
    course = await build_course(http, context.instructor, category_id, title="Not yours",
                                lessons=1, publish=False)
    r = await http.post(f"/courses/{course.course_id}/publish", headers=rival.headers)
    _problem(r, 403)
    r = await http.post(f"/courses/{course.course_id}/coupons", headers=rival.headers,
                        json={"code": f"R{uuid.uuid4().hex[:6]}", "percent_off": 90})
    _problem(r, 403)
    # ... nor does a student enroll in it before it is published (it is not open yet).
    r = await http.post("/enrollments", headers=context.student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code in (404, 409), r.text
