"""Enrolling across regions through the API, on the real cluster: a student in Europe enrolls
in a course taught from Asia. The enrollment (and its payment, invoice, progress,
certificate and review) is on the student's shard, the seat on the course's; both are
written in one transaction over the two shards, or neither is; three students of three
regions racing for a course's last seat: exactly one gets it. A user who moved to another
region is found by their old ids."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

import client
from api.domain import Domain
from tests.api.conftest import (
    REGIONS,
    BuiltCourse,
    Person,
    build_course,
    make_admin,
    signup,
)


async def _course(http: httpx.AsyncClient, category_id: str, *, region: str = "asia",
                  price_cents: int = 0, capacity: int | None = None, lessons: int = 2
                  ) -> BuiltCourse:
    teacher = await signup(http, role="instructor", region=region)
    return await build_course(http, teacher, category_id, title=f"Far {uuid.uuid4().hex[:6]}",
                              price_cents=price_cents, lessons=lessons, capacity=capacity)


async def _held(primaries: dict[str, asyncpg.Connection], course_id: str) -> dict[str, Any]:
    """Where the enrollments of `course_id` are: rows per shard, seats held on the course's
    shard, and its enrollment count."""
    cid = uuid.UUID(course_id)
    rows = {r: int(await c.fetchval("SELECT count(*) FROM enrollments WHERE course_id = $1", cid))
            for r, c in primaries.items()}
    asia = primaries["asia"]
    return {"enrollments": rows,
            "seats": int(await asia.fetchval("SELECT count(*) FROM remote_enrollments "
                                             "WHERE course_id = $1 AND seat_held", cid)),
            "count": await asia.fetchval("SELECT enrollment_count FROM courses "
                                         "WHERE course_id = $1", cid)}


async def test_a_cross_region_enrollment_works_as_a_local_one(
    http: httpx.AsyncClient, category_id: str, primaries: dict[str, asyncpg.Connection]
) -> None:
    course = await _course(http, category_id, price_cents=2500, lessons=2)
    student = await signup(http, region="europe", name="Ada Lovelace")
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text
    enrollment = r.json()
    eid = enrollment["enrollment_id"]
    assert enrollment["course_region"] == "asia" and enrollment["status"] == "pending_payment"

    # The enrollment on the student's shard, with the course's terms; the seat on Asia's.
    row = await primaries["europe"].fetchrow(
        "SELECT course_price_cents, course_currency, course_lesson_ids FROM enrollments "
        "WHERE enrollment_id = $1", uuid.UUID(eid))
    assert row is not None and (row[0], row[1]) == (2500, "EUR")
    assert [str(x) for x in row[2]] == course.lessons
    assert await _held(primaries, course.course_id) == {
        "enrollments": {"north_america": 0, "europe": 1, "asia": 0}, "seats": 1, "count": 1}
    detail = (await http.get(f"/courses/{course.course_id}")).json()
    assert detail["enrollment_count"] == 1

    # Enrolling again is a conflict, as for a local course.
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 409, r.text

    # Paid at the price enrolled under; the course's coupons are its region's.
    key = {"Idempotency-Key": f"far-{uuid.uuid4().hex}"}
    r = await http.post("/payments", headers=student.headers | key,
                        json={"enrollment_id": eid, "coupon_code": "ANY-CODE"})
    assert r.status_code == 422 and "another region" in r.json()["detail"], r.text
    r = await http.post("/payments", headers=student.headers | key,
                        json={"enrollment_id": eid})
    assert r.status_code == 201, r.text
    payment = r.json()
    assert (payment["amount_cents"], payment["currency"]) == (2500, "EUR")
    invoice = (await http.get(f"/payments/{payment['payment_id']}/invoice",
                              headers=student.headers)).json()
    assert invoice["billing_name"] == "Ada Lovelace" and invoice["currency"] == "EUR"

    # A lesson added after enrolling counts: completing one reads the course's lessons.
    added = await _add_lesson(http, course)
    for lesson in course.lessons:
        r = await http.post(f"/enrollments/{eid}/lessons/{lesson}/complete",
                            headers=student.headers, json={"seconds_spent": 10})
        assert r.status_code == 200, r.text
    assert float(r.json()["progress_pct"]) == pytest.approx(66.67)
    r = await http.post(f"/enrollments/{eid}/certificate", headers=student.headers)
    assert r.status_code == 409, r.text  # not completed yet
    r = await http.post(f"/enrollments/{eid}/lessons/{added}/complete",
                        headers=student.headers, json={})
    assert float(r.json()["progress_pct"]) == 100.0
    progress = (await http.get(f"/enrollments/{eid}/progress", headers=student.headers)).json()
    assert (progress["status"], progress["lessons_total"], progress["lessons_completed"]) == (
        "completed", 3, 3)
    # A lesson of another course is refused, as for a local enrollment.
    other = await _course(http, category_id)
    r = await http.post(f"/enrollments/{eid}/lessons/{other.lessons[0]}/complete",
                        headers=student.headers, json={})
    assert r.status_code == 422, r.text

    r = await http.post(f"/enrollments/{eid}/certificate", headers=student.headers)
    assert r.status_code == 201, r.text
    assert await primaries["europe"].fetchval(
        "SELECT count(*) FROM certificates WHERE enrollment_id = $1", uuid.UUID(eid)) == 1

    # The review lives with its author; the course's rating, on Asia's shard, counts it.
    r = await http.put(f"/courses/{course.course_id}/review", headers=student.headers,
                       json={"rating": 4, "body": "Far but fine."})
    assert r.status_code == 200, r.text
    reviews = (await http.get(f"/courses/{course.course_id}/reviews")).json()
    assert (reviews["review_count"], float(reviews["rating_avg"])) == (1, 4.0)
    assert reviews["distribution"]["4"] == 1
    assert [i["body"] for i in reviews["items"]] == ["Far but fine."]
    mine = (await http.get("/enrollments", headers=student.headers)).json()["items"]
    assert [(e["enrollment_id"], e["status"], e["course_region"]) for e in mine] == [
        (eid, "completed", "asia")]


async def _add_lesson(http: httpx.AsyncClient, course: BuiltCourse) -> str:
    r = await http.post(f"/courses/{course.course_id}/modules", headers=course.owner.headers,
                        json={"title": "Module 2"})
    assert r.status_code == 201, r.text
    r = await http.post(f"/modules/{r.json()['id']}/lessons", headers=course.owner.headers,
                        json={"title": "Added later", "duration_seconds": 60})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("refusing", ["europe", "asia"])
async def test_both_shards_or_neither(
    http: httpx.AsyncClient, category_id: str, primaries: dict[str, asyncpg.Connection],
    refusing: str
) -> None:
    """A shard that refuses at commit (a deferred check: the student's shard at its PREPARE,
    the course's at the COMMIT that decides) leaves neither the enrollment nor the seat."""
    course = await _course(http, category_id)
    student = await signup(http, region="europe")
    table = "enrollments" if refusing == "europe" else "remote_enrollments"
    conn = primaries[refusing]
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'GR900'; END $$;
        CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON {table}
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.course_id = '{course.course_id}') EXECUTE FUNCTION {name}();""")
    try:
        r = await http.post("/enrollments", headers=student.headers,
                            json={"course_id": course.course_id})
        assert r.status_code == 500, r.text
    finally:
        await conn.execute(f"DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}()")
    assert await _held(primaries, course.course_id) == {
        "enrollments": {"north_america": 0, "europe": 0, "asia": 0}, "seats": 0, "count": 0}
    for c in primaries.values():
        assert await c.fetchval("SELECT count(*) FROM pg_prepared_xacts "
                                "WHERE gid LIKE 'georoute:%'") == 0
    # With the check gone the same request succeeds: nothing half-done stood in its way.
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text


async def test_the_last_seat_goes_to_exactly_one_of_three_regions(
    http: httpx.AsyncClient, category_id: str, primaries: dict[str, asyncpg.Connection]
) -> None:
    course = await _course(http, category_id, capacity=2)
    first = await signup(http, region="asia")
    r = await http.post("/enrollments", headers=first.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text  # one seat left
    racers: list[Person] = [await signup(http, region=region) for region in REGIONS]

    async def enroll(person: Person) -> httpx.Response:
        return await http.post("/enrollments", headers=person.headers,
                               json={"course_id": course.course_id})

    answers = await asyncio.gather(*(enroll(p) for p in racers))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201, 409, 409], [a.text for a in answers]
    assert all("full" in a.json()["detail"] for a in answers if a.status_code == 409)
    winner = racers[[a.status_code for a in answers].index(201)]
    held = await _held(primaries, course.course_id)
    assert held["count"] == 2
    expected = {r: int(r == "asia") for r in REGIONS}  # the first student's
    expected[winner.region] += 1
    assert held["enrollments"] == expected
    assert held["seats"] == (winner.region != "asia")


async def test_a_moved_user_is_found_by_their_old_ids(
    http: httpx.AsyncClient, category_id: str, api_db: client.Client, domain: Domain
) -> None:
    """After `move_user` (what `georoute user move` asks), the old ids still resolve: the
    old access token finds the profile, the old refresh token rotates (into tokens of the
    new id and region), an admin reads the profile by the old id; the preferences and the
    enrollment came along."""
    course = await _course(http, category_id, region="europe")
    student = await signup(http, region="europe", name="Moving Person")
    r = await http.put("/users/me/preferences", headers=student.headers,
                       json={"language": "de", "theme": "dark"})
    assert r.status_code == 200, r.text
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text
    report = await api_db.move_user(student.user_id, "asia")
    new_id = report["current_id"]
    assert report["moved"] and new_id != student.user_id

    me = await http.get("/users/me", headers=student.headers)  # a token of the old id
    assert me.status_code == 200, me.text
    assert (me.json()["user_id"], me.json()["home_region"]) == (new_id, "asia")
    r = await http.post("/auth/refresh", json={"refresh_token": student.refresh})
    assert r.status_code == 200, r.text
    grant = r.json()
    assert (grant["user_id"], grant["region"]) == (new_id, "asia")
    headers = {"Authorization": f"Bearer {grant['access_token']}"}
    prefs = (await http.get("/users/me/preferences", headers=headers)).json()
    assert (prefs["language"], prefs["theme"]) == ("de", "dark")
    mine = (await http.get("/enrollments", headers=headers)).json()["items"]
    assert [(e["course_id"], e["course_region"]) for e in mine] == [(course.course_id,
                                                                     "europe")]
    admin = await make_admin(http, domain)
    r = await http.get(f"/users/{student.user_id}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["user_id"] == new_id, r.text
    r = await http.get(f"/users/{student.user_id}", headers=headers)  # their own old id
    assert r.status_code == 200 and r.json()["user_id"] == new_id, r.text
    other = await signup(http, region="europe")
    r = await http.get(f"/users/{student.user_id}", headers=other.headers)
    assert r.status_code == 403, r.text
