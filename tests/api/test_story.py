"""The end-to-end story through the API in process, on the real stack: register in Europe, log
in, browse and search the catalogue across regions, enroll (in Asia's catalogue too), pay
(retried with the same key: one charge), complete every lesson, get the certificate, review,
and an admin sees it all in the analytics."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx

from api.domain import Domain
from tests.api.conftest import Person, build_course, make_admin, signup


async def europe_figures(http: httpx.AsyncClient, admin: Person,
                         period: dict[str, str]) -> tuple[int, int, int]:
    """Europe's EUR revenue (gross cents), enrollments and completions in `period`, as an
    admin reads them."""
    revenue = (await http.get("/analytics/revenue", params=period,
                              headers=admin.headers)).json()["items"]
    gross = sum(row["gross_cents"] for row in revenue
                if row["region"] == "europe" and row["currency"] == "EUR")
    stats = (await http.get("/analytics/enrollments", params=period,
                            headers=admin.headers)).json()["items"]
    europe = [s for s in stats if s["region"] == "europe"]
    return (gross, sum(s["enrollments"] for s in europe),
            sum(s["completions"] for s in europe))


async def test_the_story(http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    word = f"zq{uuid.uuid4().hex[:10]}"  # a word no other course has
    # The analytics before the story: what it adds is the difference (the session's other
    # tests paid and enrolled today too).
    admin = await make_admin(http, domain)
    today = dt.datetime.now(dt.UTC).date()
    period = {"from": str(today), "to": str(today + dt.timedelta(days=1))}
    gross_before, enrollments_before, completions_before = await europe_figures(
        http, admin, period)
    teacher = await signup(http, role="instructor", region="europe", name="Grace Hopper")
    course = await build_course(
        http, teacher, category_id, title=f"Compilers {word}", price_cents=4900, lessons=3,
        description="From source text to machine code.")
    far_teacher = await signup(http, role="instructor", region="asia")
    far_course = await build_course(http, far_teacher, category_id,
                                    title=f"Introduction {word} {word} {word}",
                                    description=f"{word} everywhere")

    student = await signup(http, region="europe", name="Ada Lovelace")
    assert student.region == "europe" and student.role == "student"
    me = (await http.get("/users/me", headers=student.headers)).json()
    assert me["home_region"] == "europe" and me["full_name"] == "Ada Lovelace"

    # Browse the catalogue of every region, page by page, until both courses are seen.
    seen: dict[str, str] = {}
    cursor: str | None = None
    for _ in range(500):
        params: dict[str, str | int] = {"sort": "newest", "limit": 50}
        if cursor:
            params["cursor"] = cursor
        page = (await http.get("/courses", params=params)).json()
        for c in page["items"]:
            seen[c["course_id"]] = c["region"]
        cursor = page["next_cursor"]
        if cursor is None or {course.course_id, far_course.course_id} <= set(seen):
            break
    assert seen[course.course_id] == "europe" and seen[far_course.course_id] == "asia"

    # Search ranks across regions: the Asian course repeats the word, so it ranks first.
    found = (await http.get("/courses/search", params={"q": word})).json()["items"]
    assert [c["course_id"] for c in found] == [far_course.course_id, course.course_id]
    assert found[0]["rank"] > found[1]["rank"] > 0

    # Another region's course is open to her too (test_cross_region.py follows such an
    # enrollment through payment, lessons, certificate and review).
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": far_course.course_id})
    assert r.status_code == 201, r.text
    far = r.json()
    assert (far["course_region"], far["course_title"]) == ("asia", f"Introduction {word} "
                                                                   f"{word} {word}")

    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text
    enrollment = r.json()
    assert enrollment["status"] == "pending_payment"
    eid = enrollment["enrollment_id"]

    # Pay, and retry with the same key: the same answer, one charge.
    pay = {"enrollment_id": eid}
    key = {"Idempotency-Key": f"story-{uuid.uuid4().hex}"}
    first = await http.post("/payments", headers=student.headers | key, json=pay)
    assert first.status_code == 201, first.text
    again = await http.post("/payments", headers=student.headers | key, json=pay)
    assert again.status_code == 201 and again.json() == first.json()
    payment = first.json()
    assert payment["amount_cents"] == 4900 and payment["status"] == "succeeded"
    payments = (await http.get("/payments", headers=student.headers)).json()["items"]
    assert [p["payment_id"] for p in payments] == [payment["payment_id"]]
    invoice = (await http.get(f"/payments/{payment['payment_id']}/invoice",
                              headers=student.headers)).json()
    assert invoice["subtotal_cents"] + invoice["tax_cents"] == 4900
    assert invoice["billing_name"] == "Ada Lovelace"

    for lesson in course.lessons:
        r = await http.post(f"/enrollments/{eid}/lessons/{lesson}/complete",
                            headers=student.headers, json={"seconds_spent": 30})
        assert r.status_code == 200, r.text
    assert float(r.json()["progress_pct"]) == 100.0
    progress = (await http.get(f"/enrollments/{eid}/progress", headers=student.headers)).json()
    assert progress["status"] == "completed" and progress["lessons_completed"] == 3
    assert sorted(progress["completed_lessons"]) == sorted(course.lessons)

    r = await http.post(f"/enrollments/{eid}/certificate", headers=student.headers)
    assert r.status_code == 201, r.text
    certificate = r.json()
    assert certificate["serial_number"].startswith("CERT-")
    assert (await http.get(f"/enrollments/{eid}/certificate",
                           headers=student.headers)).json() == certificate

    r = await http.put(f"/courses/{course.course_id}/review", headers=student.headers,
                       json={"rating": 5, "body": "Wonderful."})
    assert r.status_code == 200, r.text
    reviews = (await http.get(f"/courses/{course.course_id}/reviews")).json()
    assert reviews["review_count"] == 1 and reviews["distribution"]["5"] == 1
    assert float(reviews["rating_avg"]) == 5.0

    mine = (await http.get("/enrollments", headers=student.headers)).json()["items"]
    assert [(e["enrollment_id"], e["status"]) for e in mine] == [
        (eid, "completed"), (far["enrollment_id"], "active")]

    # The admin sees the story's payment (one charge of 49 EUR), its European enrollment and
    # its completion in the analytics, labelled Europe.
    gross, enrollments, completions = await europe_figures(http, admin, period)
    assert gross - gross_before == 4900
    # Both of hers: an enrollment is counted where it is kept, her home region (Asia's
    # course's too).
    assert enrollments - enrollments_before == 2
    assert completions - completions_before == 1
    top = (await http.get("/analytics/top-courses", params={"limit": 100},
                          headers=admin.headers)).json()["items"]
    assert course.course_id in [c["course_id"] for c in top]
