"""Reviews: upsert_review's refusals and the rating/review-count trigger on insert, update and
delete; recalculate_aggregates repairs caches that were bypassed."""

from __future__ import annotations

from decimal import Decimal

from tests.integration.conftest import Catalogue, sql_error


async def rating_of(catalogue: Catalogue, course_id: object) -> tuple[Decimal | None, int]:
    row = await catalogue.conn.fetchrow(
        "SELECT rating_avg, review_count FROM courses WHERE course_id = $1", course_id)
    assert row is not None
    return row["rating_avg"], row["review_count"]


async def test_rating_follows_insert_update_delete(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course()
    alice, _ = await catalogue.enrolled(course)
    bob, _ = await catalogue.enrolled(course)
    assert await rating_of(catalogue, course.course_id) == (None, 0)
    review = await conn.fetchval("SELECT upsert_review($1, $2, 5, 'great')", alice,
                                 course.course_id)
    await conn.fetchval("SELECT upsert_review($1, $2, 2)", bob, course.course_id)
    assert await rating_of(catalogue, course.course_id) == (Decimal("3.50"), 2)
    # The same user reviewing again updates their review (one per user and course).
    assert await conn.fetchval("SELECT upsert_review($1, $2, 4, 'good')", alice,
                               course.course_id) == review
    assert await rating_of(catalogue, course.course_id) == (Decimal("3.00"), 2)
    assert await conn.fetchval("SELECT delete_review($1)", review) is True
    assert await rating_of(catalogue, course.course_id) == (Decimal("2.00"), 1)
    await conn.execute("DELETE FROM reviews WHERE course_id = $1", course.course_id)
    assert await rating_of(catalogue, course.course_id) == (None, 0)


async def test_upsert_review_refusals(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course()
    user, enrollment = await catalogue.enrolled(course)
    for bad in (0, 6, -1):
        with sql_error("22023", "rating must be between 1 and 5"):
            await conn.fetchval("SELECT upsert_review($1, $2, $3)", user, course.course_id, bad)
    stranger = await catalogue.user()
    with sql_error("GR012", "not enrolled"):
        await conn.fetchval("SELECT upsert_review($1, $2, 5)", stranger, course.course_id)
    await conn.execute("SELECT cancel_enrollment($1)", enrollment)
    with sql_error("GR012", "cancelled"):
        await conn.fetchval("SELECT upsert_review($1, $2, 5)", user, course.course_id)
    assert await rating_of(catalogue, course.course_id) == (None, 0)


async def test_recalculate_aggregates_repairs_caches(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course(lessons=2)
    user, enrollment = await catalogue.enrolled(course)
    await conn.fetchval("SELECT complete_lesson($1, $2)", enrollment, course.lessons[0])
    await conn.fetchval("SELECT upsert_review($1, $2, 4)", user, course.course_id)
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # bypass triggers
        await conn.execute(
            "UPDATE courses SET enrollment_count = 7, rating_avg = 1, review_count = 9 "
            "WHERE course_id = $1", course.course_id)
        await conn.execute("UPDATE enrollments SET progress_pct = 0 WHERE enrollment_id = $1",
                           enrollment)
    assert await conn.fetchval("SELECT recalculate_aggregates()") >= 2
    assert await rating_of(catalogue, course.course_id) == (Decimal("4.00"), 1)
    assert await conn.fetchval(
        "SELECT enrollment_count FROM courses WHERE course_id = $1", course.course_id) == 1
    assert await conn.fetchval(
        "SELECT progress_pct FROM enrollments WHERE enrollment_id = $1", enrollment) == 50
