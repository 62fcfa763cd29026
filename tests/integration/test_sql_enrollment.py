"""Enrollment and progress: enroll (duplicates, capacity, state), cancel_enrollment, the
enrollment-count and progress triggers, complete_lesson, course_progress, issue_certificate."""

from __future__ import annotations

import uuid
from decimal import Decimal

from tests.integration.conftest import Catalogue, sql_error


async def count_of(catalogue: Catalogue, course_id: uuid.UUID) -> int:
    n: int = await catalogue.conn.fetchval(
        "SELECT enrollment_count FROM courses WHERE course_id = $1", course_id)
    return n


async def test_enroll_refuses_duplicates_and_full_courses(catalogue: Catalogue) -> None:
    course = await catalogue.course(capacity=2)
    first, _ = await catalogue.enrolled(course)
    with sql_error("23505", "already enrolled"):
        await catalogue.enrolled(course, first)
    await catalogue.enrolled(course)
    assert await count_of(catalogue, course.course_id) == 2
    with sql_error("GR001", "is full (capacity 2)"):
        await catalogue.enrolled(course)


async def test_enroll_refuses_closed_courses_and_inactive_users(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    draft = await catalogue.course(publish=False)
    with sql_error("GR002", "not open for enrollment"):
        await catalogue.enrolled(draft)
    course = await catalogue.course()
    with sql_error("GR011", "own course"):
        await catalogue.enrolled(course, course.instructor_id)
    gone = await catalogue.user()
    await conn.execute("SELECT deactivate_user($1, 'left')", gone)
    with sql_error("GR009"):
        await catalogue.enrolled(course, gone)
    with sql_error("P0002"):
        await catalogue.enrolled(course, uuid.uuid4())


async def test_enrollment_count_follows_cancel_and_reenroll(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course(capacity=1)
    user, enrollment = await catalogue.enrolled(course)
    assert await count_of(catalogue, course.course_id) == 1
    await conn.execute("SELECT cancel_enrollment($1)", enrollment)
    assert await count_of(catalogue, course.course_id) == 0
    other, _ = await catalogue.enrolled(course)  # the freed seat can be taken
    with sql_error("GR001"):
        await catalogue.enrolled(course, user)
    await conn.execute("DELETE FROM enrollments WHERE user_id = $1", other)
    assert await count_of(catalogue, course.course_id) == 0
    assert await catalogue.conn.fetchval("SELECT enroll($1, $2)", user,
                                         course.course_id) == enrollment  # row reused
    assert await count_of(catalogue, course.course_id) == 1


async def test_progress_trigger_completes_the_enrollment(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course(lessons=3)
    _, enrollment = await catalogue.enrolled(course)
    with sql_error("GR007", "needs a completed course"):
        await conn.fetchval("SELECT issue_certificate($1)", enrollment)
    assert await conn.fetchval("SELECT complete_lesson($1, $2, 100)", enrollment,
                               course.lessons[0]) == Decimal("33.33")
    # Completing again is idempotent for progress and accumulates time.
    assert await conn.fetchval("SELECT complete_lesson($1, $2, 50)", enrollment,
                               course.lessons[0]) == Decimal("33.33")
    assert await conn.fetchval(
        "SELECT seconds_spent FROM lesson_progress WHERE enrollment_id = $1", enrollment) == 150
    progress = await conn.fetchrow("SELECT * FROM course_progress($1)", enrollment)
    assert progress is not None
    assert tuple(progress) == (3, 1, Decimal("33.33"), "active")
    for lesson in course.lessons[1:]:
        await conn.fetchval("SELECT complete_lesson($1, $2)", enrollment, lesson)
    row = await conn.fetchrow(
        "SELECT status, progress_pct, completed_at FROM enrollments WHERE enrollment_id = $1",
        enrollment)
    assert row is not None
    assert row["status"] == "completed" and row["progress_pct"] == 100
    assert row["completed_at"] is not None
    certificate = await conn.fetchval("SELECT issue_certificate($1)", enrollment)
    assert await conn.fetchval("SELECT issue_certificate($1)", enrollment) == certificate
    serial = await conn.fetchval(
        "SELECT serial_number FROM certificates WHERE certificate_id = $1", certificate)
    assert serial.startswith("CERT-")
    with sql_error("GR011", "cannot be cancelled"):
        await conn.execute("SELECT cancel_enrollment($1)", enrollment)
    # Un-completing a lesson (e.g. content reset) reopens the enrollment.
    await conn.execute("DELETE FROM lesson_progress WHERE enrollment_id = $1 AND lesson_id = $2",
                       enrollment, course.lessons[2])
    row = await conn.fetchrow(
        "SELECT status, progress_pct, completed_at FROM enrollments WHERE enrollment_id = $1",
        enrollment)
    assert row is not None
    assert (row["status"], row["progress_pct"], row["completed_at"]) == ("active", Decimal("66.67"), None)


async def test_complete_lesson_refusals(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course()
    elsewhere = await catalogue.course()
    _, enrollment = await catalogue.enrolled(course)
    with sql_error("GR006", "is not part of course"):
        await conn.fetchval("SELECT complete_lesson($1, $2)", enrollment, elsewhere.lessons[0])
    with sql_error("GR006"):  # the trigger guards direct writes too
        await conn.execute(
            "INSERT INTO lesson_progress (enrollment_id, lesson_id) VALUES ($1, $2)",
            enrollment, elsewhere.lessons[0])
    paid = await catalogue.course(price_cents=1000)
    _, unpaid = await catalogue.enrolled(paid)
    with sql_error("GR012", "pending_payment"):
        await conn.fetchval("SELECT complete_lesson($1, $2)", unpaid, paid.lessons[0])
    with sql_error("P0002"):
        await conn.fetchval("SELECT complete_lesson($1, $2)", uuid.uuid4(), paid.lessons[0])


async def test_enrollment_statistics(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course(lessons=1)
    _, done = await catalogue.enrolled(course)
    await conn.fetchval("SELECT complete_lesson($1, $2)", done, course.lessons[0])
    _, dropped = await catalogue.enrolled(course)
    await conn.execute("SELECT cancel_enrollment($1)", dropped)
    rows = await conn.fetch(
        "SELECT * FROM enrollment_statistics(now() - interval '2 days', now() + interval '1 hour')")
    assert len(rows) >= 3  # every day in range is listed, even empty ones
    today = [r for r in rows if r["enrollments"]][-1]
    assert today["enrollments"] >= 2 and today["completions"] >= 1
    assert today["cancellations"] >= 1
    stats = await conn.fetchrow("SELECT * FROM course_statistics($1)", course.course_id)
    assert stats is not None
    assert (stats["enrollments"], stats["completions"], stats["cancellations"]) == (1, 1, 1)
    assert stats["completion_rate"] == 1
    with sql_error("22023", "range is empty"):
        await conn.fetch("SELECT * FROM enrollment_statistics(now(), now())")
