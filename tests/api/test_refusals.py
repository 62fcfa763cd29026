"""What the API refuses, and how: tokens (none, expired, another audience or issuer, alg none,
a forged signature), roles, other users' rows, invalid bodies and parameters, duplicates, a
replayed payment key with another body, and refresh-token reuse. Every answer is an RFC 9457
problem (and, through the `http` fixture, matches the OpenAPI document)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt

from api.domain import Domain
from api.domain.tokens import TokenIssuer
from api.types import Principal, Region, UserRole
from tests.api.conftest import SECRET, SETTINGS, build_course, email, signup


def _problem(r: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if slug is not None:
        assert body["type"] == f"urn:georoute:problem:{slug}", body
    assert "Traceback" not in r.text and "SELECT" not in r.text
    return body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _someone() -> Principal:
    return Principal(uuid.uuid4(), UserRole.STUDENT, Region.EUROPE)


async def test_tokens_that_are_refused(http: httpx.AsyncClient) -> None:
    body = _problem(await http.get("/users/me"), 401, "unauthorized")
    assert "bearer" in body["detail"]
    r = await http.get("/users/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert _problem(r, 401)["detail"].startswith("the Authorization header")
    assert r.headers["www-authenticate"].startswith("Bearer")

    def issuer(**kw: Any) -> TokenIssuer:
        args: dict[str, Any] = {"issuer": SETTINGS.jwt_issuer, "audience": SETTINGS.jwt_audience,
                                "ttl_seconds": 60, **kw}
        return TokenIssuer(args.pop("secret", SECRET), **args)

    expired = issuer(clock=lambda: time.time() - 3600).issue(_someone())
    assert "expired" in _problem(await http.get("/users/me", headers=_bearer(expired)),
                                 401)["detail"]
    other_audience = issuer(audience="another-api").issue(_someone())
    assert "audience" in _problem(await http.get("/users/me", headers=_bearer(other_audience)),
                                  401)["detail"]
    other_issuer = issuer(issuer="someone-else").issue(_someone())
    assert "issuer" in _problem(await http.get("/users/me", headers=_bearer(other_issuer)),
                                401)["detail"]
    forged = issuer(secret="another-secret-" + "y" * 40).issue(_someone())
    _problem(await http.get("/users/me", headers=_bearer(forged)), 401)

    # alg "none": a token with no signature, claims otherwise perfect.
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "role": "admin", "region": "europe", "iat": now,
              "exp": now + 600, "iss": SETTINGS.jwt_issuer, "aud": SETTINGS.jwt_audience}

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
    _problem(await http.get("/users/me", headers=_bearer(unsigned)), 401)
    # Another algorithm keyed with our secret (HS512) is refused too: HS256 is pinned.
    hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    assert "HS256" in _problem(await http.get("/users/me", headers=_bearer(hs512)),
                               401)["detail"]


async def test_roles_are_enforced(http: httpx.AsyncClient, category_id: str) -> None:
    student = await signup(http)
    r = await http.post("/courses", headers=student.headers, json={
        "title": "Mine", "category_id": category_id, "price_cents": 0})
    assert "instructor" in _problem(r, 403, "forbidden")["detail"]
    _problem(await http.get("/analytics/top-courses", headers=student.headers), 403)
    _problem(await http.get("/users", headers=student.headers,
                            params={"region": "europe"}), 403)
    # Registering oneself as an admin is not a choice the body offers.
    r = await http.post("/auth/register", json={
        "email": f"x{uuid.uuid4().hex[:8]}@example.com", "password": "long enough pw",
        "full_name": "Mallory", "role": "admin", "region": "europe"})
    assert [e["field"] for e in _problem(r, 422)["errors"]] == ["role"]


async def test_other_users_rows(http: httpx.AsyncClient, category_id: str) -> None:
    teacher = await signup(http, role="instructor")
    rival = await signup(http, role="instructor")
    course = await build_course(http, teacher, category_id, title="Owned", price_cents=300,
                                lessons=1)
    # Only the course's instructor (or an admin) edits it.
    r = await http.post(f"/courses/{course.course_id}/modules", headers=rival.headers,
                        json={"title": "Sneaky"})
    _problem(r, 403)
    r = await http.put(f"/lessons/{course.lessons[0]}/content", headers=rival.headers,
                       json={"format": "article", "title": "Sneaky"})
    _problem(r, 403)

    alice, bob = await signup(http), await signup(http)
    r = await http.post("/enrollments", headers=alice.headers,
                        json={"course_id": course.course_id})
    eid = r.json()["enrollment_id"]
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    payment = (await http.post("/payments", headers=alice.headers | key,
                               json={"enrollment_id": eid})).json()
    # Bob sees none of Alice's rows: they are reported missing.
    for path in (f"/enrollments/{eid}", f"/enrollments/{eid}/progress",
                 f"/payments/{payment['payment_id']}/invoice"):
        _problem(await http.get(path, headers=bob.headers), 404, "not-found")
    r = await http.post(f"/enrollments/{eid}/lessons/{course.lessons[0]}/complete",
                        headers=bob.headers, json={})
    _problem(r, 404)
    r = await http.post("/payments", headers=bob.headers | {"Idempotency-Key": "bob-0000001"},
                        json={"enrollment_id": eid})
    _problem(r, 404)
    assert (await http.get("/payments", headers=bob.headers)).json()["items"] == []
    # ... nor read the lessons of a course he is not enrolled in.
    _problem(await http.get(f"/lessons/{course.lessons[0]}/content", headers=bob.headers), 403)
    _problem(await http.get(f"/users/{alice.user_id}", headers=bob.headers), 403)


async def test_invalid_requests_name_each_bad_field(http: httpx.AsyncClient) -> None:
    r = await http.post("/auth/register", json={
        "email": "not-an-email", "password": "short", "full_name": "", "region": "mars",
        "shoe_size": 42})
    errors = _problem(r, 422, "validation-error")["errors"]
    assert sorted(e["field"] for e in errors) == [
        "email", "full_name", "password", "region", "shoe_size"]
    assert all(e["in"] == "body" for e in errors)
    r = await http.post("/auth/login", content=b"{not json", headers={
        "content-type": "application/json"})
    _problem(r, 422)
    _problem(await http.post("/auth/login"), 422)
    r = await http.get("/courses", params={"limit": 0, "sort": "random"})
    assert sorted(e["field"] for e in _problem(r, 422)["errors"]) == ["limit", "sort"]
    r = await http.get("/courses", params={"cursor": "garbage!"})
    _problem(r, 422)
    r = await http.get("/courses/not-a-uuid")
    assert _problem(r, 422)["errors"] == [
        {"in": "path", "field": "course_id", "message": "must be a UUID"}]
    _problem(await http.get(f"/courses/{uuid.uuid4()}"), 404)
    _problem(await http.get("/no/such/route"), 404)
    r = await http.delete("/courses")
    assert _problem(r, 405)["type"].endswith("method-not-allowed")


async def test_duplicates_are_conflicts(http: httpx.AsyncClient, category_id: str) -> None:
    student = await signup(http)
    r = await http.post("/auth/register", json={
        "email": student.email.upper(), "password": "long enough pw", "full_name": "Twin",
        "region": "asia"})
    assert "already registered" in _problem(r, 409, "conflict")["detail"]
    teacher = await signup(http, role="instructor")
    course = await build_course(http, teacher, category_id, title="Once", lessons=1)
    first = await http.post("/enrollments", headers=student.headers,
                            json={"course_id": course.course_id})
    assert first.status_code == 201
    again = await http.post("/enrollments", headers=student.headers,
                            json={"course_id": course.course_id})
    _problem(again, 409)


async def test_a_payment_key_replayed_with_another_body(http: httpx.AsyncClient,
                                                        category_id: str) -> None:
    teacher = await signup(http, role="instructor")
    student = await signup(http)
    courses = [await build_course(http, teacher, category_id, title=f"Paid {i}",
                                  price_cents=1500, lessons=1) for i in range(2)]
    eids = []
    for c in courses:
        r = await http.post("/enrollments", headers=student.headers,
                            json={"course_id": c.course_id})
        eids.append(r.json()["enrollment_id"])
    _problem(await http.post("/payments", headers=student.headers,
                             json={"enrollment_id": eids[0]}), 422)
    key = {"Idempotency-Key": f"same-{uuid.uuid4().hex}"}
    first = await http.post("/payments", headers=student.headers | key,
                            json={"enrollment_id": eids[0]})
    assert first.status_code == 201, first.text
    r = await http.post("/payments", headers=student.headers | key,
                        json={"enrollment_id": eids[1]})
    _problem(r, 422, "idempotency-key-reused")
    # Nothing was charged for the second enrollment; the first was charged once.
    payments = (await http.get("/payments", headers=student.headers)).json()["items"]
    assert [p["enrollment_id"] for p in payments] == [eids[0]]
    # Paying the paid enrollment again under a new key is a conflict, not a second charge.
    r = await http.post("/payments", headers=student.headers | {"Idempotency-Key": "another-k1"},
                        json={"enrollment_id": eids[0]})
    _problem(r, 409)


async def test_refresh_tokens_rotate_and_a_reused_one_revokes_its_family(
        http: httpx.AsyncClient) -> None:
    person = await signup(http)
    first = person.refresh
    r = await http.post("/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 200, r.text
    second = r.json()["refresh_token"]
    assert second != first
    assert (await http.get("/users/me", headers=_bearer(r.json()["access_token"]))).status_code \
        == 200
    # The first token again: someone copied it. Its family (the second token too) is revoked.
    assert "already used" in _problem(
        await http.post("/auth/refresh", json={"refresh_token": first}), 401)["detail"]
    _problem(await http.post("/auth/refresh", json={"refresh_token": second}), 401)
    # A token with a wrong secret changes nothing, and is refused.
    session = first.partition(".")[0]
    _problem(await http.post("/auth/refresh",
                             json={"refresh_token": f"{session}.{'z' * 40}"}), 401)
    # Logout revokes: a fresh login's refresh token no longer works after it.
    again = await http.post("/auth/login", json={"email": person.email,
                                                  "password": "correct horse battery staple"})
    token = again.json()["refresh_token"]
    assert (await http.post("/auth/logout", json={"refresh_token": token})).status_code == 204
    _problem(await http.post("/auth/refresh", json={"refresh_token": token}), 401)


async def test_login_answers_alike_for_an_unknown_email_and_a_wrong_password(
        http: httpx.AsyncClient, domain: Domain, monkeypatch: Any) -> None:
    person = await signup(http)
    checks: list[str] = []
    passwords = domain.auth._passwords
    real_check = passwords._check

    def counting(stored_hash: str, password: str) -> bool:
        checks.append(stored_hash.rsplit("$", 2)[0])  # its variant, version and costs
        return real_check(stored_hash, password)

    monkeypatch.setattr(passwords, "_check", counting)
    wrong = await http.post("/auth/login", json={"email": person.email, "password": "nope"})
    unknown = await http.post("/auth/login", json={"email": "nobody-" + person.email,
                                                   "password": "nope"})
    a, b = _problem(wrong, 401), _problem(unknown, 401)
    assert a["detail"] == b["detail"] == "invalid email or password"
    # Both paths ran exactly one argon2id verification (the unknown email against a decoy),
    # at the same costs (memory, time, parallelism) as the user's own hash.
    assert len(checks) == 2 and checks[0] == checks[1], checks
    assert checks[0].startswith("$argon2id$v=19$m=") and ",t=" in checks[0]


async def test_public_operations_refuse_a_bad_token_as_documented(
    http: httpx.AsyncClient, category_id: str,
) -> None:
    """A public operation that reads a token when one is sent (a course, drafts shown to
    their instructor), and logout's malformed refresh token: 401 problems, and documented
    (`http` checks every answer against the OpenAPI document)."""
    owner = await signup(http, role="instructor")
    course = await build_course(http, owner, category_id, title="Public", lessons=1)
    r = await http.get(f"/courses/{course.course_id}", headers=_bearer("not-a-jwt"))
    _problem(r, 401)
    assert (await http.get(f"/courses/{course.course_id}")).status_code == 200  # no token
    _problem(await http.post("/auth/logout", json={"refresh_token": "malformed-token"}), 401)


async def test_register_with_the_seeds_body_takes_the_countrys_region(
    http: httpx.AsyncClient,
) -> None:
    """The seed's register body is email, password, full_name and role: no region. The home
    region is then the one serving the country (US by default); a country no region serves
    must name its region, and the refusal says which field."""
    for extra, region in (({}, "north_america"), ({"country": "de"}, "europe"),
                          ({"country": "JP"}, "asia"),
                          ({"country": "JP", "region": "europe"}, "europe")):
        address = email("seed")
        r = await http.post("/auth/register", json={
            "email": address, "password": "a long password", "full_name": "Seed Body",
            "role": "student", **extra})
        assert r.status_code == 201, r.text
        assert r.json()["home_region"] == region, (extra, r.json())
    r = await http.post("/auth/register", json={
        "email": email("seed"), "password": "a long password", "full_name": "Seed Body",
        "role": "student", "country": "BR"})
    assert [e["field"] for e in _problem(r, 422)["errors"]] == ["region"]
