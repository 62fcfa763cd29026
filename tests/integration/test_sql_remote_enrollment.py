"""Remote enrollments in SQL (sql/009), each function on its own shard's primary: what
replaces the foreign keys that cannot cross shards (checks in the enroll path and on the
rows), the seat, rating and coupon a course's shard records of enrollments held elsewhere,
and cancelling one, which must give its seat back on the course's shard. Both shards in one
transaction through the router: tests/api/test_cross_region.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from router.config import Config
from router.tools.db.connect import connect_node
from tests.integration.conftest import Catalogue, Course, sql_error
from tests.support.present import present


@pytest.fixture
async def asia(migrated: Config) -> AsyncIterator[Catalogue]:
    conn = await connect_node(migrated, migrated.shards["asia"].primary)
    try:
        yield Catalogue(conn, "asia")
    finally:
        await conn.close()


async def enroll_remote(student: Catalogue, course_shard: Catalogue, course: Course,
                        user: uuid.UUID) -> uuid.UUID:
    """The three steps of a cross-region enrollment, each on its shard (not atomic here)."""
    terms = await course_shard.conn.fetchrow(
        "SELECT * FROM remote_course_terms($1, $2)", course.course_id, user)
    assert terms is not None
    enrollment: uuid.UUID = await student.conn.fetchval(
        "SELECT enroll_remote($1, $2, $3, $4, $5)", user, course.course_id,
        terms["price_cents"], terms["currency"], terms["lesson_ids"])
    await course_shard.conn.fetchval("SELECT hold_remote_seat($1, $2)", course.course_id,
                                     enrollment)
    return enrollment


async def count_of(shard: Catalogue, course: Course) -> int:
    n: int = await shard.conn.fetchval(
        "SELECT enrollment_count FROM courses WHERE course_id = $1", course.course_id)
    return n


async def test_the_checks_that_replace_the_foreign_key_to_courses(
    catalogue: Catalogue, asia: Catalogue
) -> None:
    eu = catalogue.conn
    user = await catalogue.user()
    local = await catalogue.course()
    far = await asia.course()
    insert = "INSERT INTO enrollments (user_id, course_id) VALUES ($1, $2)"
    # A course id of this shard must name a course here, as the foreign key said.
    missing_here = await eu.fetchval("SELECT georoute_id()")
    with sql_error("23503", "does not exist"):
        await eu.execute(insert, user, missing_here)
    # Another shard's course: only with its terms (through enroll_remote), and only a
    # georoute id (a random uuid names no shard at all).
    with sql_error("23503", "needs that course's terms"):
        await eu.execute(insert, user, far.course_id)
    with sql_error("23503", "not a georoute id"):
        await eu.execute(insert + " RETURNING 1", user, uuid.uuid4())
    # A local course's enrollment keeps no copy of the course.
    with sql_error("23514", "keeps no copy"):
        await eu.execute("INSERT INTO enrollments (user_id, course_id, course_price_cents, "
                         "course_currency, course_lesson_ids) VALUES ($1, $2, 0, 'EUR', '{}')",
                         user, local.course_id)
    # enroll() and enroll_remote() each refuse the other's courses.
    with sql_error("P0002", "does not exist on this shard"):
        await eu.fetchval("SELECT enroll($1, $2)", user, far.course_id)
    with sql_error("GR003", "enroll() takes"):
        await eu.fetchval("SELECT enroll_remote($1, $2, 0, 'EUR', '{}')", user, local.course_id)
    with sql_error("GR003", "enroll() enrolls"):
        await asia.conn.fetchrow("SELECT * FROM remote_course_terms($1, $2)", far.course_id,
                                 await asia.user())
    # A course with enrollments is not deleted, here or on the course's shard.
    await catalogue.enrolled(local, user)
    with sql_error("23503", "has enrollments"):
        await eu.execute("DELETE FROM courses WHERE course_id = $1", local.course_id)
    await enroll_remote(catalogue, asia, far, user)
    with sql_error("23001", "remote_enrollments"):  # restrict_violation
        await asia.conn.execute("DELETE FROM courses WHERE course_id = $1", far.course_id)


async def test_seats_of_remote_enrollments_count_against_capacity(
    catalogue: Catalogue, asia: Catalogue
) -> None:
    course = await asia.course(capacity=2, price_cents=900)
    near, _ = await asia.enrolled(course)
    student = await catalogue.user()
    enrollment = await enroll_remote(catalogue, asia, course, student)
    assert await count_of(asia, course) == 2
    row = await catalogue.conn.fetchrow(
        "SELECT status, course_price_cents, course_currency FROM enrollments "
        "WHERE enrollment_id = $1", enrollment)
    assert row is not None
    assert tuple(row) == ("pending_payment", 900, "EUR")
    # Full for remote and local students alike.
    with sql_error("GR001", "is full"):
        await asia.conn.fetchrow("SELECT * FROM remote_course_terms($1, $2)",
                                 course.course_id, await catalogue.user())
    with sql_error("GR001", "is full"):
        await asia.enrolled(course)
    with sql_error("GR001", "is full"):
        await asia.conn.fetchval("SELECT hold_remote_seat($1, $2)", course.course_id,
                                 await catalogue.conn.fetchval("SELECT georoute_id()"))
    # Holding the same seat again changes nothing; a duplicate enrollment is refused.
    assert await asia.conn.fetchval("SELECT hold_remote_seat($1, $2)", course.course_id,
                                    enrollment) == 2
    with sql_error("23505", "already enrolled"):
        await catalogue.conn.fetchval("SELECT enroll_remote($1, $2, 0, 'EUR', '{}')", student,
                                      course.course_id)
    # Cancelling gives the seat back only together with the course's shard.
    with sql_error("GR014", "release_remote_seat"):
        await catalogue.conn.execute("SELECT cancel_enrollment($1)", enrollment)
    assert await asia.conn.fetchval("SELECT release_remote_seat($1, $2)", course.course_id,
                                    enrollment)
    await catalogue.conn.execute("SELECT cancel_enrollment($1, true)", enrollment)
    assert await count_of(asia, course) == 1
    # Taken again: the same enrollment and seat rows, terms refreshed.
    assert await enroll_remote(catalogue, asia, course, student) == enrollment
    assert await count_of(asia, course) == 2
    # recalculate_aggregates counts remote seats as the triggers do.
    await asia.conn.execute("UPDATE courses SET enrollment_count = 0 WHERE course_id = $1",
                            course.course_id)
    await asia.conn.fetchval("SELECT recalculate_aggregates()")
    assert await count_of(asia, course) == 2
    assert near is not None


async def test_a_remote_enrollment_pays_refunds_and_is_rated(
    catalogue: Catalogue, asia: Catalogue
) -> None:
    eu = catalogue.conn
    course = await asia.course(price_cents=1200, lessons=2)
    student = await catalogue.user()
    enrollment = await enroll_remote(catalogue, asia, course, student)
    with sql_error("GR005", "another region"):
        await eu.fetchrow("SELECT * FROM process_payment($1, 'key-remote-1', 'SAVE10')",
                          enrollment)
    payment = await eu.fetchrow("SELECT * FROM process_payment($1, $2)", enrollment,
                                f"key-{uuid.uuid4().hex}")
    assert payment is not None
    assert (payment["amount_cents"], payment["currency"]) == (1200, "EUR")
    # Progress and completion from the enrollment's copy of the course's lessons.
    assert await eu.fetchval("SELECT complete_lesson($1, $2)", enrollment,
                             course.lessons[0]) == 50
    with sql_error("GR006"):
        await eu.fetchval("SELECT complete_lesson($1, $2)", enrollment, uuid.uuid4())
    assert await eu.fetchval("SELECT complete_lesson($1, $2)", enrollment,
                             course.lessons[1]) == 100
    assert present(await eu.fetchrow("SELECT * FROM course_progress($1)", enrollment))["status"] == (
        "completed")
    # The review on the student's shard, its rating on the course's.
    await eu.fetchval("SELECT upsert_review($1, $2, 5)", student, course.course_id)
    await asia.conn.execute("SELECT set_remote_rating($1, $2, 5)", course.course_id,
                            enrollment)
    other, paid = await asia.enrolled(course)
    await asia.conn.fetchrow("SELECT * FROM process_payment($1, $2)", paid,
                             f"key-{uuid.uuid4().hex}")
    await asia.conn.fetchval("SELECT upsert_review($1, $2, 2)", other, course.course_id)
    rating = await asia.conn.fetchrow(
        "SELECT review_count, rating_avg FROM courses WHERE course_id = $1", course.course_id)
    assert rating is not None
    assert (rating["review_count"], float(rating["rating_avg"])) == (2, 3.5)
    # A refund cancels the enrollment: again only with its seat released.
    with sql_error("GR014"):
        await eu.fetchval("SELECT refund_payment($1, 'changed my mind')", payment["payment_id"])


async def test_lesson_progress_and_coupons_without_their_foreign_keys(
    catalogue: Catalogue,
) -> None:
    eu = catalogue.conn
    course = await catalogue.course(lessons=2, price_cents=1000)
    _, enrollment = await catalogue.enrolled(course)
    # A coupon of this shard must exist; a redeemed one is not deleted.
    code = f"C{uuid.uuid4().hex[:8]}"
    coupon = await eu.fetchval("INSERT INTO coupons (course_id, code, percent_off) "
                               "VALUES ($1, $2, 10) RETURNING coupon_id", course.course_id, code)
    await eu.fetchrow("SELECT * FROM process_payment($1, $2, $3)", enrollment,
                      f"key-{uuid.uuid4().hex}", code)
    await eu.fetchval("SELECT complete_lesson($1, $2)", enrollment, course.lessons[0])
    # Deleting a lesson deletes its progress, as ON DELETE CASCADE did.
    await eu.execute("DELETE FROM lessons WHERE lesson_id = $1", course.lessons[0])
    assert await eu.fetchval("SELECT count(*) FROM lesson_progress WHERE lesson_id = $1",
                             course.lessons[0]) == 0
    with sql_error("23503", "was redeemed"):
        await eu.execute("DELETE FROM coupons WHERE coupon_id = $1", coupon)
    with sql_error("23503", "does not exist"):
        await eu.execute("UPDATE payments SET coupon_id = georoute_id() WHERE enrollment_id = $1",
                         enrollment)


async def test_only_enrollments_of_other_shards_hold_remote_seats(
    catalogue: Catalogue, asia: Catalogue
) -> None:
    course = await asia.course()
    _, local_enrollment = await asia.enrolled(course)
    with sql_error("GR003", "not held on another shard"):
        await asia.conn.fetchval("SELECT hold_remote_seat($1, $2)", course.course_id,
                                 local_enrollment)
    with pytest.raises(asyncpg.CheckViolationError):
        await asia.conn.execute("INSERT INTO remote_enrollments (enrollment_id, course_id) "
                                "VALUES ($1, $2)", uuid.uuid4(), course.course_id)


async def true_course_figures(config: Config, course: Course) -> dict[str, int]:
    """A course's enrollment and payment figures read from every shard's primary."""
    figures = dict.fromkeys(("enrollments", "active", "completions", "cancellations",
                             "gross_cents", "refunded_cents"), 0)
    for shard in config.shards.values():
        conn = await connect_node(config, shard.primary)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status <> 'cancelled') AS enrollments, "
                "count(*) FILTER (WHERE status = 'active') AS active, "
                "count(*) FILTER (WHERE status = 'completed') AS completions, "
                "count(*) FILTER (WHERE status = 'cancelled') AS cancellations "
                "FROM enrollments WHERE course_id = $1", course.course_id)
            money = await conn.fetchrow(
                "SELECT coalesce(sum(p.amount_cents) FILTER (WHERE p.status IN "
                "('succeeded', 'refunded')), 0) AS gross_cents, "
                "coalesce(sum(p.amount_cents) FILTER (WHERE p.status = 'refunded'), 0) "
                "AS refunded_cents FROM payments p JOIN enrollments e USING (enrollment_id) "
                "WHERE e.course_id = $1", course.course_id)
        finally:
            await conn.close()
        assert row is not None and money is not None
        for name in figures:
            figures[name] += (row if name in row else money)[name]
    return figures


async def test_course_statistics_counts_remote_students_or_says_it_cannot(
    migrated: Config, catalogue: Catalogue, asia: Catalogue
) -> None:
    """course_statistics runs on the course's shard: its enrollment and cancellation counts
    include the seats of enrollments held on other shards, and the figures only those shards
    know (status, progress, payments) are NULL rather than this shard's part of them."""
    eu = catalogue.conn
    course = await asia.course(price_cents=1000, lessons=1)
    # Before any remote student every figure is this shard's, and exact.
    _, local = await asia.enrolled(course)
    await asia.conn.fetchrow("SELECT * FROM process_payment($1, $2)", local,
                             f"key-{uuid.uuid4().hex}")
    await asia.conn.fetchval("SELECT complete_lesson($1, $2)", local, course.lessons[0])
    stats = await asia.conn.fetchrow("SELECT * FROM course_statistics($1)", course.course_id)
    assert stats is not None
    truth = await true_course_figures(migrated, course)
    assert truth == {"enrollments": 1, "active": 0, "completions": 1, "cancellations": 0,
                     "gross_cents": 1000, "refunded_cents": 0}
    assert {name: stats[name] for name in truth} == truth
    assert stats["completion_rate"] == 1
    before_remote = stats
    # Remote students of europe: one completes, one is refunded, one has not paid yet.
    done = await enroll_remote(catalogue, asia, course, await catalogue.user())
    await eu.fetchrow("SELECT * FROM process_payment($1, $2)", done, f"key-{uuid.uuid4().hex}")
    await eu.fetchval("SELECT complete_lesson($1, $2)", done, course.lessons[0])
    refunded = await enroll_remote(catalogue, asia, course, await catalogue.user())
    payment = await eu.fetchrow("SELECT * FROM process_payment($1, $2)", refunded,
                                f"key-{uuid.uuid4().hex}")
    assert payment is not None
    await eu.fetchval("SELECT refund_payment($1, 'changed my mind', true)",
                      payment["payment_id"])
    assert await asia.conn.fetchval("SELECT release_remote_seat($1, $2)", course.course_id,
                                    refunded)
    await enroll_remote(catalogue, asia, course, await catalogue.user())
    truth = await true_course_figures(migrated, course)
    assert truth == {"enrollments": 3, "active": 0, "completions": 2, "cancellations": 1,
                     "gross_cents": 3000, "refunded_cents": 1000}
    stats = await asia.conn.fetchrow("SELECT * FROM course_statistics($1)", course.course_id)
    assert stats is not None
    # Counted exactly from the seats the course's shard holds...
    assert (stats["enrollments"], stats["cancellations"]) == (3, 1)
    assert stats["enrollments"] == await count_of(asia, course)
    assert (before_remote["remote_enrollments"], stats["remote_enrollments"]) == (0, 3)
    # ...and never a part passed off as the whole.
    for name in ("active", "completions", "completion_rate", "avg_progress", "gross_cents",
                 "refunded_cents"):
        assert stats[name] is None, (name, stats[name])
    # The student's shard has no course row: course_statistics is the course's shard's.
    with sql_error("P0002", "does not exist"):
        await eu.fetchrow("SELECT * FROM course_statistics($1)", course.course_id)
