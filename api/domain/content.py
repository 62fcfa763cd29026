"""Documents: a lesson's content (course_content) and a user's preferences
(user_preferences), in the document store, reached through the router like everything else."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from api.domain.data import Data
from api.domain.failures import mapped
from api.errors import Forbidden, NotFound
from api.models import LessonContent, Preferences
from api.types import Principal

__all__ = ["Content"]

_COURSE_CONTENT = "course_content"
_USER_PREFERENCES = "user_preferences"


class Content:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def _lesson(self, lesson_id: uuid.UUID) -> dict[str, Any]:
        found = await self._data.row_by_id(
            "SELECT l.is_preview, c.course_id, c.instructor_id, c.region, c.status "
            "FROM lessons l JOIN course_modules m ON m.module_id = l.module_id "
            "JOIN courses c ON c.course_id = m.course_id WHERE l.lesson_id = $1", lesson_id)
        if found is None:
            raise NotFound("no such lesson")
        return found

    async def put_lesson(self, lesson_id: uuid.UUID, body: LessonContent, *,
                         by: Principal) -> LessonContent:
        lesson = await self._lesson(lesson_id)
        if lesson["instructor_id"] != by.user_id and not by.is_admin:
            raise Forbidden("only the course's instructor or an admin writes its content")
        doc: dict[str, Any] = {
            "_id": str(lesson_id), "lesson_id": str(lesson_id),
            "course_id": str(lesson["course_id"]), "region": lesson["region"],
            **body.model_dump(exclude_none=True), "updated_at": dt.datetime.now(dt.UTC)}
        if not body.quiz:
            doc.pop("quiz", None)
        with mapped():
            await self._data.docs(_COURSE_CONTENT).replace_one(
                {"_id": str(lesson_id)}, doc, upsert=True)
        return body

    async def get_lesson(self, lesson_id: uuid.UUID, *, by: Principal) -> LessonContent:
        """A lesson's content: for preview lessons of published courses, the instructor,
        admins, and students enrolled (active or completed)."""
        lesson = await self._lesson(lesson_id)
        allowed = (by.is_admin or lesson["instructor_id"] == by.user_id
                   or (lesson["is_preview"] and lesson["status"] == "published"))
        if not allowed:
            enrolled = await self._data.row(
                "SELECT status FROM enrollments WHERE user_id = $1 AND course_id = $2 "
                "AND status IN ('active', 'completed')", by.user_id, lesson["course_id"])
            allowed = enrolled is not None
        if not allowed:
            raise Forbidden("enroll in the course to read this lesson")
        with mapped():
            doc = await self._data.docs(_COURSE_CONTENT).find_one({"_id": str(lesson_id)})
        if doc is None:
            raise NotFound("this lesson has no content yet")
        return LessonContent.model_validate(
            {k: v for k, v in doc.items() if k in LessonContent.model_fields})

    async def preferences(self, *, by: Principal) -> Preferences:
        with mapped():
            doc = await self._data.docs(_USER_PREFERENCES).find_one({"_id": str(by.user_id)})
        if doc is None:
            return Preferences()
        return Preferences.model_validate(
            {k: v for k, v in doc.items() if k in Preferences.model_fields})

    async def set_preferences(self, body: Preferences, *, by: Principal) -> Preferences:
        doc = {"_id": str(by.user_id), "user_id": str(by.user_id), "region": by.region.value,
               **body.model_dump(), "updated_at": dt.datetime.now(dt.UTC)}
        with mapped():
            await self._data.docs(_USER_PREFERENCES).replace_one(
                {"_id": str(by.user_id)}, doc, upsert=True)
        return body
