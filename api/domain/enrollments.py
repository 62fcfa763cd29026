"""Enrollments, progress and certificates. A student enrolls only in their own region's
catalogue: the enrollment, the user and the course must share a shard, and a cross-region
enrollment would need a two-phase commit the router does not have yet, so it is refused."""

from __future__ import annotations

import uuid
from typing import Any

from api.domain.data import Data
from api.errors import InvalidInput, NotFound
from api.models import Certificate, Enrollment, EnrollmentList, LessonDone, Progress
from api.types import Principal

__all__ = ["ENROLLMENT_COLUMNS", "Enrollments"]

ENROLLMENT_COLUMNS = ("e.enrollment_id, e.user_id, e.course_id, c.title AS course_title, "
                      "e.status, e.progress_pct, e.enrolled_at, e.completed_at")


class Enrollments:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def enroll(self, course_id: uuid.UUID, *, by: Principal) -> Enrollment:
        region = await self._data.row(
            "SELECT region FROM courses WHERE course_id = $1", course_id)
        if region is None:
            raise NotFound("no such course")
        if region["region"] != by.region.value:
            raise InvalidInput(
                f"this course is in the {region['region']} catalogue; you can enroll only in "
                f"your home region's ({by.region.value}): cross-region enrollment needs "
                "two-phase commit, which is not built yet")
        enrollment_id = await self._data.write_value(
            "SELECT enroll($1, $2)", by.user_id, course_id)
        return await self.get(enrollment_id, by=by)

    async def owned(self, enrollment_id: uuid.UUID, by: Principal) -> dict[str, Any]:
        """The enrollment, if `by` may see it (its student, or an admin). Another user's
        enrollment is reported missing, as if it did not exist."""
        found = await self._data.row(
            f"SELECT {ENROLLMENT_COLUMNS} FROM enrollments e "
            "JOIN courses c ON c.course_id = e.course_id WHERE e.enrollment_id = $1",
            enrollment_id)
        if found is None or (found["user_id"] != by.user_id and not by.is_admin):
            raise NotFound("no such enrollment")
        return found

    async def get(self, enrollment_id: uuid.UUID, *, by: Principal) -> Enrollment:
        return Enrollment.model_validate(await self.owned(enrollment_id, by))

    async def mine(self, *, by: Principal) -> EnrollmentList:
        rows = await self._data.rows(
            f"SELECT {ENROLLMENT_COLUMNS} FROM enrollments e "
            "JOIN courses c ON c.course_id = e.course_id WHERE e.user_id = $1 "
            "ORDER BY e.enrolled_at DESC, e.enrollment_id", by.user_id)
        return EnrollmentList(items=[Enrollment.model_validate(r) for r in rows])

    async def progress(self, enrollment_id: uuid.UUID, *, by: Principal) -> Progress:
        await self.owned(enrollment_id, by)
        summary = await self._data.row("SELECT * FROM course_progress($1)", enrollment_id)
        done = await self._data.rows(
            "SELECT lesson_id FROM lesson_progress WHERE enrollment_id = $1 "
            "AND status = 'completed' ORDER BY lesson_id", enrollment_id)
        assert summary is not None
        return Progress(enrollment_id=enrollment_id, **summary,
                        completed_lessons=[r["lesson_id"] for r in done])

    async def complete_lesson(self, enrollment_id: uuid.UUID, lesson_id: uuid.UUID,
                              seconds_spent: int = 0, *, by: Principal) -> LessonDone:
        await self.owned(enrollment_id, by)
        pct = await self._data.write_value(
            "SELECT complete_lesson($1, $2, $3)", enrollment_id, lesson_id, seconds_spent)
        return LessonDone(enrollment_id=enrollment_id, lesson_id=lesson_id, progress_pct=pct)

    async def issue_certificate(self, enrollment_id: uuid.UUID, *, by: Principal
                                ) -> Certificate:
        """The certificate of a completed course (issued once; asking again returns it)."""
        await self.owned(enrollment_id, by)
        certificate_id = await self._data.write_value(
            "SELECT issue_certificate($1)", enrollment_id)
        found = await self._data.row(
            "SELECT certificate_id, enrollment_id, serial_number, issued_at FROM certificates "
            "WHERE certificate_id = $1", certificate_id)
        assert found is not None
        return Certificate.model_validate(found)

    async def certificate(self, enrollment_id: uuid.UUID, *, by: Principal) -> Certificate:
        await self.owned(enrollment_id, by)
        found = await self._data.row(
            "SELECT certificate_id, enrollment_id, serial_number, issued_at FROM certificates "
            "WHERE enrollment_id = $1", enrollment_id)
        if found is None:
            raise NotFound("no certificate has been issued for this enrollment")
        return Certificate.model_validate(found)
