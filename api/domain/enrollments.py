"""Enrollments, progress and certificates.

An enrollment lives on its student's home shard, beside their payments, progress and
certificate; its course may be in another region's catalogue, on another shard. Enrolling
in such a course is one transaction over the two shards (README, "Enrolling across
regions"): the course's shard locks the course, checks it is open and not full and hands
over its terms (remote_course_terms), the student's shard writes the enrollment with them
(enroll_remote), and the course's shard takes the seat (hold_remote_seat). Both commit or
neither does. A course of the student's own region is enrolled in with enroll(), on one
shard. Cancelling a remote enrollment is one such transaction too: the seat given back on
the course's shard (release_remote_seat), the enrollment cancelled on the student's."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from api.domain.data import Data, TxData
from api.errors import NotFound
from api.models import Certificate, Enrollment, EnrollmentList, LessonDone, Progress
from api.types import Principal

__all__ = ["ENROLLMENT_COLUMNS", "Enrollments", "release_remote_seat"]

ENROLLMENT_COLUMNS = ("e.enrollment_id, e.user_id, e.course_id, e.status, e.progress_pct, "
                      "e.enrolled_at, e.completed_at, e.course_lesson_ids IS NOT NULL AS remote")


# An enrollment with its course's title and region when the course is on the same shard (NULL
# for a remote enrollment's course: its id names another shard, never this one's).
_WITH_COURSE = (f"SELECT {ENROLLMENT_COLUMNS}, c.title AS course_title, "
                "c.region AS course_region "
                "FROM enrollments e LEFT JOIN courses c ON c.course_id = e.course_id ")


async def release_remote_seat(tx: TxData, course_id: uuid.UUID,
                              enrollment_id: uuid.UUID) -> None:
    """Give a remote enrollment's seat back on its course's shard, inside the transaction
    that cancels (or refunds) it on the student's shard. Sent first, so the transaction
    takes the course's row before the enrollment's, in the order enrolling takes them
    (remote_course_terms, then enroll_remote): a cancellation and an enrollment of the same
    student in the same course queue on the course's row, on one shard. In the other order
    each could hold one shard's row and wait for the other's, a deadlock across two shards
    that no PostgreSQL sees (both would wait for the statement timeout)."""
    await tx.value("SELECT release_remote_seat($1, $2)", course_id, enrollment_id)


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def _own(found: dict[str, Any] | None, by: Principal) -> dict[str, Any]:
    if found is None or (found["user_id"] != by.user_id and not by.is_admin):
        raise NotFound("no such enrollment")
    return found


class Enrollments:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def enroll(self, course_id: uuid.UUID, *, by: Principal) -> Enrollment:
        course = await self._data.row_by_id(
            "SELECT region FROM courses WHERE course_id = $1", course_id)
        if course is None:
            raise NotFound("no such course")
        if course["region"] == by.region.value:
            enrollment_id = await self._data.write_value(
                "SELECT enroll($1, $2)", by.user_id, course_id)
        else:
            enrollment_id = await self._enroll_remote(course_id, by)
        return await self.get(enrollment_id, by=by)

    async def _enroll_remote(self, course_id: uuid.UUID, by: Principal) -> uuid.UUID:
        """Both shards or neither; concurrent enrollments from every region queue on the
        course's row, so its capacity holds."""
        async with self._data.transaction() as tx:
            terms = await tx.row(
                "SELECT price_cents, currency, lesson_ids FROM remote_course_terms($1, $2)",
                course_id, by.user_id)
            assert terms is not None
            enrollment_id: uuid.UUID = await tx.value(
                "SELECT enroll_remote($1, $2, $3, $4, $5)", by.user_id, course_id,
                terms["price_cents"], terms["currency"], list(terms["lesson_ids"]))
            await tx.value("SELECT hold_remote_seat($1, $2)", course_id, enrollment_id)
        return enrollment_id

    async def cancel(self, enrollment_id: uuid.UUID, *, by: Principal) -> Enrollment:
        """The enrolled student, or an admin, cancels an enrollment (another user's is
        missing, as in owned()); cancelling a cancelled one answers it unchanged. Refused
        (409) for a completed enrollment, and for a paid one (sql/026: its payment is
        refunded instead, which cancels it), both checked in SQL under the enrollment's lock,
        the one a payment takes. A remote enrollment's seat is given back on its course's
        shard in the same transaction (release_remote_seat): both commit or neither."""
        found = await self.owned(enrollment_id, by)
        if found["remote"]:
            async with self._data.transaction() as tx:
                await release_remote_seat(tx, found["course_id"], enrollment_id)
                await tx.value("SELECT cancel_enrollment($1, true)", enrollment_id)
        else:
            await self._data.write("SELECT cancel_enrollment($1)", enrollment_id)
        return await self.get(enrollment_id, by=by)

    async def _courses(self, course_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        """Title and region of each course, read from the shards they are on."""
        wanted = sorted(set(course_ids))
        if not wanted:
            return {}
        rows = await self._data.rows(
            "SELECT course_id, title, region FROM courses WHERE course_id = ANY($1)", wanted)
        return {r["course_id"]: r for r in rows}

    async def _with_courses(self, where: str, arg: uuid.UUID) -> list[dict[str, Any]]:
        """Enrollments with their courses' titles and regions. One statement on the shard of
        `arg` (the enrollments' user's, or the enrollment's): a course of the same shard is
        joined there; only the others (a remote enrollment's course, on its own shard) are
        then read where they are, in one more read for all of them."""
        rows = await self._data.rows_by_id(_WITH_COURSE + where, arg, shard_key=arg)
        elsewhere = [r["course_id"] for r in rows if r["course_title"] is None]
        if elsewhere:
            courses = await self._courses(elsewhere)
            for r in rows:
                if r["course_title"] is None:
                    course = courses.get(r["course_id"])
                    r["course_title"] = course["title"] if course else ""
                    r["course_region"] = course["region"] if course else ""
        return rows

    async def owned(self, enrollment_id: uuid.UUID, by: Principal) -> dict[str, Any]:
        """The enrollment, if `by` may see it (its student, or an admin). Another user's
        enrollment is reported missing, as if it did not exist."""
        found = await self._data.row_by_id(
            f"SELECT {ENROLLMENT_COLUMNS} FROM enrollments e WHERE e.enrollment_id = $1",
            enrollment_id)
        return _own(found, by)

    async def get(self, enrollment_id: uuid.UUID, *, by: Principal) -> Enrollment:
        found = await self._with_courses("WHERE e.enrollment_id = $1", enrollment_id)
        return Enrollment.model_validate(_own(_first(found), by))

    async def mine(self, *, by: Principal) -> EnrollmentList:
        rows = await self._with_courses(
            "WHERE e.user_id = $1 ORDER BY e.enrolled_at DESC, e.enrollment_id", by.user_id)
        return EnrollmentList(items=[Enrollment.model_validate(r) for r in rows])

    async def progress(self, enrollment_id: uuid.UUID, *, by: Principal) -> Progress:
        """The enrollment's progress and its completed lessons: one read, on its shard."""
        found = _own(_first(await self._data.rows_by_id(
            "SELECT e.user_id, p.lessons_total, p.lessons_completed, p.progress_pct, p.status,"
            " (SELECT coalesce(json_agg(lp.lesson_id ORDER BY lp.lesson_id), '[]')"
            "  FROM lesson_progress lp WHERE lp.enrollment_id = e.enrollment_id"
            "  AND lp.status = 'completed') AS completed_lessons "
            "FROM enrollments e CROSS JOIN LATERAL course_progress(e.enrollment_id) p "
            "WHERE e.enrollment_id = $1", enrollment_id)), by)
        return Progress(enrollment_id=enrollment_id, lessons_total=found["lessons_total"],
                        lessons_completed=found["lessons_completed"],
                        progress_pct=found["progress_pct"], status=found["status"],
                        completed_lessons=found["completed_lessons"].value)

    async def complete_lesson(self, enrollment_id: uuid.UUID, lesson_id: uuid.UUID,
                              seconds_spent: int = 0, *, by: Principal) -> LessonDone:
        """One write that checks who asks (sql/025): another user's enrollment is missing,
        as in owned(). A remote enrollment's lessons are those its course's shard has now:
        the write answers that it needs them, they are read there, and the write is sent
        again with them (they replace the enrollment's copy in the same write)."""
        found = await self._complete_lesson(enrollment_id, lesson_id, seconds_spent, None, by)
        if found["outcome"] == "lessons_needed":
            rows = await self._data.rows(
                "SELECT l.lesson_id FROM lessons l JOIN course_modules m USING (module_id) "
                "WHERE m.course_id = $1 ORDER BY m.position, l.position", found["course_id"])
            found = await self._complete_lesson(enrollment_id, lesson_id, seconds_spent,
                                                [r["lesson_id"] for r in rows], by)
        if found["outcome"] != "done":
            raise NotFound("no such enrollment")
        return LessonDone(enrollment_id=enrollment_id, lesson_id=lesson_id,
                          progress_pct=found["progress_pct"])

    async def _complete_lesson(self, enrollment_id: uuid.UUID, lesson_id: uuid.UUID,
                               seconds_spent: int, lessons: list[uuid.UUID] | None,
                               by: Principal) -> dict[str, Any]:
        found = await self._data.write_by_id(
            "SELECT outcome, course_id, progress_pct "
            "FROM complete_lesson($1, $2, $3, $4, $5, $6)",
            enrollment_id, lesson_id, seconds_spent, lessons, by.user_id, by.is_admin)
        if found is None:  # an id of no shard: no such enrollment
            return {"outcome": "not_found"}
        return found[0]

    async def issue_certificate(self, enrollment_id: uuid.UUID, *, by: Principal
                                ) -> Certificate:
        """The certificate of a completed course (issued once; asking again returns it). One
        write that checks who asks (sql/025): another user's enrollment is missing."""
        found = await self._data.write_by_id(
            "SELECT certificate_id, enrollment_id, serial_number, issued_at "
            "FROM issue_certificate($1, $2, $3)", enrollment_id, by.user_id, by.is_admin)
        if not found:
            raise NotFound("no such enrollment")
        return Certificate.model_validate(found[0])

    async def certificate(self, enrollment_id: uuid.UUID, *, by: Principal) -> Certificate:
        """The enrollment's certificate: one read, on its shard."""
        found = _own(_first(await self._data.rows_by_id(
            "SELECT e.user_id, e.enrollment_id, c.certificate_id, c.serial_number, c.issued_at "
            "FROM enrollments e LEFT JOIN certificates c ON c.enrollment_id = e.enrollment_id "
            "WHERE e.enrollment_id = $1", enrollment_id)), by)
        if found["certificate_id"] is None:
            raise NotFound("no certificate has been issued for this enrollment")
        return Certificate.model_validate(found)
