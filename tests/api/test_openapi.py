"""The OpenAPI document validates, and every operation in it answers as documented: one tour
calls each operation on the real stack, and every response is checked against the document
(a documented status, a body valid against the documented schema)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from api.domain import Domain
from tests.api.conftest import api_client, build_course, make_admin, signup
from tests.api.openapi_check import DocumentedResponses


def test_the_document_is_valid_openapi_3_1(app: Any) -> None:
    document = app.state.openapi
    assert document["openapi"] == "3.1.0"
    validate(document)
    ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)) >= 30


async def test_the_document_is_served(http: httpx.AsyncClient, app: Any) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200 and r.json() == app.state.openapi


def test_the_checker_refuses_an_undocumented_status(app: Any) -> None:
    checker = DocumentedResponses(app.state.openapi)
    request = httpx.Request("GET", "http://api.test/api/v1/users/me")
    with pytest.raises(AssertionError, match="not documented"):
        checker.check(httpx.Response(418, json={}, request=request))
    bad_body = httpx.Response(200, json={"user_id": "not-a-uuid"}, request=request)
    with pytest.raises(AssertionError):
        checker.check(bad_body)


async def test_every_operation_answers_as_documented(
        app: Any, domain: Domain, category_id: str) -> None:
    documented = DocumentedResponses(app.state.openapi)
    async with api_client(app, documented) as http:
        await _tour(http, domain, category_id)
    expected = {(method.upper(), path, int(next(s for s in op["responses"] if s < "300")))
                for path, methods in app.state.openapi["paths"].items()
                for method, op in methods.items()}
    missing = expected - documented.answered
    assert not missing, f"operations never answered with success: {sorted(missing)}"


async def _tour(http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    async def ok(method: str, url: str, status: int = 200, **kw: Any) -> Any:
        r = await http.request(method, url, **kw)
        assert r.status_code == status, f"{method} {url}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    teacher = await signup(http, role="instructor")
    student = await signup(http)
    admin = await make_admin(http, domain)
    t, s, a = teacher.headers, student.headers, admin.headers
    await ok("GET", "/health")
    await ok("GET", "/categories")
    await ok("GET", "/users/me", headers=s)
    await ok("PATCH", "/users/me", headers=s, json={"city": "Nantes"})
    await ok("GET", f"/users/{student.user_id}", headers=a)
    await ok("GET", "/users", headers=a, params={"region": "europe", "limit": 2})
    await ok("PUT", "/users/me/preferences", headers=s,
             json={"theme": "dark", "interests": ["databases"]})
    assert (await ok("GET", "/users/me/preferences", headers=s))["theme"] == "dark"

    course = await build_course(http, teacher, category_id, title="Tour course",
                                price_cents=1000, lessons=1)
    cid, lesson = course.course_id, course.lessons[0]
    await ok("GET", f"/courses/{cid}")
    await ok("GET", "/courses", params={"region": "europe", "sort": "price_desc"})
    await ok("GET", "/courses/search", params={"q": "tour"})
    await ok("PUT", f"/lessons/{lesson}/content", headers=t,
             json={"format": "article", "title": "Welcome", "body": "Hello."})
    code = f"T{uuid.uuid4().hex[:8]}"
    await ok("POST", f"/courses/{cid}/coupons", 201, headers=t,
             json={"code": code, "percent_off": 50})
    price = await ok("GET", f"/courses/{cid}/price", params={"coupon": code})
    assert price["final_price_cents"] == 500

    enrollment = await ok("POST", "/enrollments", 201, headers=s, json={"course_id": cid})
    eid = enrollment["enrollment_id"]
    await ok("GET", "/enrollments", headers=s)
    await ok("GET", f"/enrollments/{eid}", headers=s)
    payment = await ok("POST", "/payments", 201, headers=s | {"Idempotency-Key": "tour-0001"},
                       json={"enrollment_id": eid, "coupon_code": code})
    assert payment["amount_cents"] == 500
    await ok("GET", "/payments", headers=s)
    await ok("GET", f"/payments/{payment['payment_id']}/invoice", headers=s)
    assert (await ok("GET", f"/lessons/{lesson}/content", headers=s))["title"] == "Welcome"
    await ok("POST", f"/enrollments/{eid}/lessons/{lesson}/complete", headers=s, json={})
    await ok("GET", f"/enrollments/{eid}/progress", headers=s)
    await ok("POST", f"/enrollments/{eid}/certificate", 201, headers=s)
    await ok("GET", f"/enrollments/{eid}/certificate", headers=s)
    await ok("PUT", f"/courses/{cid}/review", headers=s, json={"rating": 4})
    await ok("GET", f"/courses/{cid}/reviews")

    today = dt.datetime.now(dt.UTC).date()
    period = {"from": str(today), "to": str(today + dt.timedelta(days=1))}
    await ok("GET", "/analytics/revenue", headers=a, params=period)
    await ok("GET", "/analytics/enrollments", headers=a, params=period)
    await ok("GET", "/analytics/top-courses", headers=a)

    # A second paid enrollment, refunded by the admin (the first has its certificate).
    other = await build_course(http, teacher, category_id, title="Tour refund",
                               price_cents=800, lessons=1)
    second = await ok("POST", "/enrollments", 201, headers=s, json={"course_id": other.course_id})
    paid = await ok("POST", "/payments", 201, headers=s | {"Idempotency-Key": "tour-0002"},
                    json={"enrollment_id": second["enrollment_id"]})
    refunded = await ok("POST", f"/payments/{paid['payment_id']}/refund", headers=a,
                        json={"reason": "tour"})
    assert refunded["status"] == "refunded"

    # A third enrollment, not paid, cancelled by its student.
    third = await build_course(http, teacher, category_id, title="Tour cancel", lessons=1)
    unpaid = await ok("POST", "/enrollments", 201, headers=s, json={"course_id": third.course_id})
    cancelled = await ok("POST", f"/enrollments/{unpaid['enrollment_id']}/cancel", headers=s)
    assert cancelled["status"] == "cancelled"

    grant = await ok("POST", "/auth/refresh", json={"refresh_token": student.refresh})
    await ok("POST", "/auth/logout", 204, json={"refresh_token": grant["refresh_token"]})
