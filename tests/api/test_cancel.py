"""Cancelling an enrollment (POST /enrollments/{enrollment_id}/cancel), on the real stack: its
student or an admin cancels it, once (again answers the same); another user's is missing, as
for every enrollment endpoint; a completed or a paid one is refused (409: a paid one is
refunded instead); a cancelled one cannot be paid. A cross-region enrollment's seat is given
back on its course's shard in the same transaction, both or neither; an admin's refund of its
payment gives the seat back too. Races: a payment and a cancellation of one enrollment never
leave it cancelled and paid; a remote cancellation and the same student enrolling again both
finish (no deadlock across the two shards)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from api.domain import Domain
from tests.api.conftest import BuiltCourse, Person, build_course, make_admin, signup


async def _course(http: httpx.AsyncClient, category_id: str, *, region: str = "europe",
                  price_cents: int = 0, capacity: int | None = None, lessons: int = 1
                  ) -> BuiltCourse:
    teacher = await signup(http, role="instructor", region=region)
    return await build_course(http, teacher, category_id, title=f"Cancel {uuid.uuid4().hex[:6]}",
                              price_cents=price_cents, lessons=lessons, capacity=capacity)


async def _enroll(http: httpx.AsyncClient, student: Person, course: BuiltCourse) -> str:
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text
    return str(r.json()["enrollment_id"])


async def _pay(http: httpx.AsyncClient, student: Person, eid: str) -> httpx.Response:
    return await http.post("/payments", json={"enrollment_id": eid},
                           headers=student.headers | {"Idempotency-Key": f"c-{uuid.uuid4()}"})


async def _status(http: httpx.AsyncClient, student: Person, eid: str) -> str:
    r = await http.get(f"/enrollments/{eid}", headers=student.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


async def _seat(asia: asyncpg.Connection, course: BuiltCourse, eid: str) -> dict[str, Any]:
    """On the course's shard: whether the enrollment's seat is held, the course's enrollment
    count, and what course_statistics says."""
    cid = uuid.UUID(course.course_id)
    stats = await asia.fetchrow("SELECT enrollments, cancellations, remote_enrollments "
                                "FROM course_statistics($1)", cid)
    assert stats is not None
    return {"held": await asia.fetchval("SELECT seat_held FROM remote_enrollments "
                                        "WHERE enrollment_id = $1", uuid.UUID(eid)),
            "count": await asia.fetchval("SELECT enrollment_count FROM courses "
                                         "WHERE course_id = $1", cid),
            "stats": dict(stats)}


async def test_a_student_cancels_a_local_enrollment_once_and_the_seat_is_free(
        http: httpx.AsyncClient, category_id: str) -> None:
    course = await _course(http, category_id, capacity=1)
    student = await signup(http)
    eid = await _enroll(http, student, course)
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert (cancelled["enrollment_id"], cancelled["status"]) == (eid, "cancelled")
    assert cancelled["course_id"] == course.course_id
    assert await _status(http, student, eid) == "cancelled"
    again = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert again.status_code == 200 and again.json() == cancelled, again.text
    assert (await http.get(f"/courses/{course.course_id}")).json()["enrollment_count"] == 0
    await _enroll(http, await signup(http), course)  # the one seat is free again


async def test_another_user_is_refused_as_for_any_enrollment_and_an_admin_may_cancel(
        http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    course = await _course(http, category_id)
    student = await signup(http)
    eid = await _enroll(http, student, course)
    for who in (await signup(http), course.owner):  # another student; the course's teacher
        read = await http.get(f"/enrollments/{eid}", headers=who.headers)
        r = await http.post(f"/enrollments/{eid}/cancel", headers=who.headers)
        assert (r.status_code, r.json()["detail"]) == (404, "no such enrollment"), r.text
        assert (read.status_code, read.json()["detail"]) == (404, "no such enrollment")
    assert await _status(http, student, eid) == "active"
    admin = await make_admin(http, domain)
    r = await http.post(f"/enrollments/{eid}/cancel", headers=admin.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert await _status(http, student, eid) == "cancelled"
    r = await http.post(f"/enrollments/{uuid.uuid4()}/cancel", headers=admin.headers)
    assert r.status_code == 404, r.text  # a uuid that is no georoute id


async def test_a_completed_enrollment_is_refused(
        http: httpx.AsyncClient, category_id: str) -> None:
    course = await _course(http, category_id, lessons=1)
    student = await signup(http)
    eid = await _enroll(http, student, course)
    r = await http.post(f"/enrollments/{eid}/lessons/{course.lessons[0]}/complete",
                        headers=student.headers, json={})
    assert r.status_code == 200, r.text
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 409 and "completed" in r.json()["detail"], r.text
    assert await _status(http, student, eid) == "completed"


async def test_a_paid_enrollment_is_refunded_not_cancelled(
        http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    course = await _course(http, category_id, price_cents=1500)
    student = await signup(http)
    admin = await make_admin(http, domain)
    eid = await _enroll(http, student, course)
    r = await _pay(http, student, eid)
    assert r.status_code == 201, r.text
    payment_id = r.json()["payment_id"]
    for who in (student, admin):
        r = await http.post(f"/enrollments/{eid}/cancel", headers=who.headers)
        assert r.status_code == 409, r.text
        assert "refund the payment" in r.json()["detail"], r.text
    assert await _status(http, student, eid) == "active"
    r = await http.post(f"/payments/{payment_id}/refund", headers=admin.headers,
                        json={"reason": "asked to cancel"})
    assert r.status_code == 200 and r.json()["status"] == "refunded", r.text
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text


async def test_a_cancelled_enrollment_cannot_be_paid(
        http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    course = await _course(http, category_id, price_cents=900)
    student = await signup(http)
    eid = await _enroll(http, student, course)
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 200, r.text
    r = await _pay(http, student, eid)
    assert r.status_code == 409 and "cancelled" in r.json()["detail"], r.text
    assert (await http.get("/payments", headers=student.headers)).json()["items"] == []
    assert await domain.data.db.fetchval(
        "SELECT count(*) FROM payments WHERE enrollment_id = $1", uuid.UUID(eid)) == 0


async def test_a_payment_and_a_cancellation_racing_never_leave_a_paid_cancelled_enrollment(
        http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    """Paying and cancelling one enrollment at once: one of them wins, the other is refused
    (409); never a cancelled enrollment with a captured payment (both lock the enrollment's
    row first; the cancellation checks for a payment under that lock)."""
    course = await _course(http, category_id, price_cents=700)
    for _ in range(6):
        student = await signup(http)
        eid = await _enroll(http, student, course)
        paid, cancelled = await asyncio.gather(
            _pay(http, student, eid),
            http.post(f"/enrollments/{eid}/cancel", headers=student.headers))
        codes = (paid.status_code, cancelled.status_code)
        assert codes in {(201, 409), (409, 200)}, (paid.text, cancelled.text)
        row = await domain.data.db.fetchrow(
            "SELECT e.status, count(p.payment_id) FILTER (WHERE p.status = 'succeeded') AS paid "
            "FROM enrollments e LEFT JOIN payments p ON p.enrollment_id = e.enrollment_id "
            "WHERE e.enrollment_id = $1 GROUP BY e.status", uuid.UUID(eid))
        assert row is not None
        assert (row["status"], row["paid"]) == (
            ("active", 1) if codes == (201, 409) else ("cancelled", 0))


async def test_a_remote_cancellation_gives_the_seat_back_on_the_course_shard(
        http: httpx.AsyncClient, category_id: str,
        primaries: dict[str, asyncpg.Connection]) -> None:
    course = await _course(http, category_id, region="asia", capacity=1)
    student = await signup(http, region="europe")
    eid = await _enroll(http, student, course)
    asia = primaries["asia"]
    assert await _seat(asia, course, eid) == {
        "held": True, "count": 1,
        "stats": {"enrollments": 1, "cancellations": 0, "remote_enrollments": 1}}
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert (cancelled["status"], cancelled["course_region"]) == ("cancelled", "asia")
    assert await primaries["europe"].fetchval(
        "SELECT status FROM enrollments WHERE enrollment_id = $1", uuid.UUID(eid)) == "cancelled"
    released = {"held": False, "count": 0,
                "stats": {"enrollments": 0, "cancellations": 1, "remote_enrollments": 1}}
    assert await _seat(asia, course, eid) == released
    again = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert again.status_code == 200 and again.json() == cancelled, again.text
    assert await _seat(asia, course, eid) == released
    await _enroll(http, await signup(http, region="asia"), course)  # the one seat is free


@pytest.mark.parametrize("refusing", ["europe", "asia"])
async def test_a_remote_cancellation_is_both_shards_or_neither(
        http: httpx.AsyncClient, category_id: str,
        primaries: dict[str, asyncpg.Connection], refusing: str) -> None:
    """A shard that refuses at commit (a deferred check on the row the cancellation changes
    there) leaves the enrollment active on the student's shard and the seat held on the
    course's."""
    course = await _course(http, category_id, region="asia")
    student = await signup(http, region="europe")
    eid = await _enroll(http, student, course)
    table = "enrollments" if refusing == "europe" else "remote_enrollments"
    conn = primaries[refusing]
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'GR900'; END $$;
        CREATE CONSTRAINT TRIGGER {name} AFTER UPDATE ON {table}
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.enrollment_id = '{eid}') EXECUTE FUNCTION {name}();""")
    try:
        r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
        assert r.status_code == 500, r.text
    finally:
        await conn.execute(f"DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}()")
    assert await _status(http, student, eid) == "active"
    assert await _seat(primaries["asia"], course, eid) == {
        "held": True, "count": 1,
        "stats": {"enrollments": 1, "cancellations": 0, "remote_enrollments": 1}}
    for c in primaries.values():
        assert await c.fetchval("SELECT count(*) FROM pg_prepared_xacts "
                                "WHERE gid LIKE 'georoute:%'") == 0
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert (await _seat(primaries["asia"], course, eid))["held"] is False


async def test_a_remote_paid_enrollment_keeps_its_seat_until_an_admin_refunds_it(
        http: httpx.AsyncClient, domain: Domain, category_id: str,
        primaries: dict[str, asyncpg.Connection]) -> None:
    course = await _course(http, category_id, region="asia", price_cents=2500)
    student = await signup(http, region="europe")
    admin = await make_admin(http, domain)
    eid = await _enroll(http, student, course)
    r = await _pay(http, student, eid)
    assert r.status_code == 201, r.text
    payment_id = r.json()["payment_id"]
    asia = primaries["asia"]
    held = {"held": True, "count": 1,
            "stats": {"enrollments": 1, "cancellations": 0, "remote_enrollments": 1}}

    # Cancelling is refused, and the seat, given back first in the same transaction, is
    # held again.
    r = await http.post(f"/enrollments/{eid}/cancel", headers=student.headers)
    assert r.status_code == 409 and "refund the payment" in r.json()["detail"], r.text
    assert await _status(http, student, eid) == "active"
    assert await _seat(asia, course, eid) == held

    r = await http.post(f"/payments/{payment_id}/refund", headers=admin.headers,
                        json={"reason": "moved away"})
    assert r.status_code == 200, r.text
    refunded = r.json()
    assert refunded["status"] == "refunded"
    assert await _status(http, student, eid) == "cancelled"
    released = {"held": False, "count": 0,
                "stats": {"enrollments": 0, "cancellations": 1, "remote_enrollments": 1}}
    assert await _seat(asia, course, eid) == released
    invoice = (await http.get(f"/payments/{payment_id}/invoice", headers=student.headers)).json()
    assert invoice["refunded_cents"] == 2500
    again = await http.post(f"/payments/{payment_id}/refund", headers=admin.headers,
                            json={"reason": "again"})
    assert again.status_code == 200 and again.json() == refunded, again.text
    assert await _seat(asia, course, eid) == released


async def test_a_remote_cancellation_and_a_reenrollment_racing_both_finish(
        http: httpx.AsyncClient, category_id: str,
        primaries: dict[str, asyncpg.Connection]) -> None:
    """Cancelling a remote enrollment while its student enrolls in the course again: both
    take the course's row first (the cancellation gives the seat back before it cancels), so
    one waits for the other on the course's shard, never each for the other across two
    shards, which no PostgreSQL sees as a deadlock (both would wait for a timeout). The
    enrollment ends active (enrolled again after the cancellation) or cancelled (the
    enrollment came first and was refused as a duplicate), its seat held accordingly."""
    course = await _course(http, category_id, region="asia")
    for _ in range(8):
        student = await signup(http, region="europe")
        eid = await _enroll(http, student, course)
        cancelled, enrolled = await asyncio.wait_for(asyncio.gather(
            http.post(f"/enrollments/{eid}/cancel", headers=student.headers),
            http.post("/enrollments", headers=student.headers,
                      json={"course_id": course.course_id})), timeout=15)
        assert cancelled.status_code == 200, cancelled.text
        assert enrolled.status_code in (201, 409), enrolled.text
        status = await _status(http, student, eid)
        assert status == ("active" if enrolled.status_code == 201 else "cancelled")
        assert (await _seat(primaries["asia"], course, eid))["held"] is (status == "active")
