"""Reviews: one per enrolled student and course (writing again replaces it), and a course's
rating summary. A review lives on its author's shard; a course's reviews are read from every
shard (its students may live in any region)."""

from __future__ import annotations

import uuid

from api.domain.data import Data
from api.errors import NotFound
from api.models import Review, ReviewList, ReviewWrite
from api.types import Principal

__all__ = ["Reviews"]

_COLUMNS = "review_id, course_id, user_id, rating, body, created_at, updated_at"


class Reviews:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def write(self, course_id: uuid.UUID, body: ReviewWrite, *, by: Principal) -> Review:
        """The caller's review of a course they are enrolled in (active or completed). The
        review lives with its author; for a course of another region its rating is also
        recorded on the course's shard, in the same transaction, where the course's rating
        counts it."""
        exists = await self._data.row_by_id(
            "SELECT region FROM courses WHERE course_id = $1 AND status <> 'draft'", course_id)
        if exists is None:
            raise NotFound("no such course")
        if exists["region"] == by.region.value:
            review_id = await self._data.write_value(
                "SELECT upsert_review($1, $2, $3, $4)", by.user_id, course_id, body.rating,
                body.body)
        else:
            async with self._data.transaction() as tx:
                review_id = await tx.value(
                    "SELECT upsert_review($1, $2, $3, $4)", by.user_id, course_id,
                    body.rating, body.body)
                enrollment_id = await tx.value(
                    "SELECT enrollment_id FROM enrollments WHERE user_id = $1 "
                    "AND course_id = $2", by.user_id, course_id)
                await tx.value("SELECT set_remote_rating($1, $2, $3)", course_id,
                               enrollment_id, body.rating)
        found = await self._data.row(
            f"SELECT {_COLUMNS} FROM reviews WHERE review_id = $1", review_id)
        assert found is not None
        return Review.model_validate(found)

    async def of_course(self, course_id: uuid.UUID, *, limit: int = 50) -> ReviewList:
        course = await self._data.row_by_id(
            "SELECT rating_avg, review_count FROM courses WHERE course_id = $1 "
            "AND status <> 'draft'", course_id)
        if course is None:
            raise NotFound("no such course")
        stars = await self._data.rows(
            "SELECT rating, count(*) AS n FROM reviews WHERE course_id = $1 GROUP BY rating",
            course_id)
        items = await self._data.rows(
            f"SELECT {_COLUMNS} FROM reviews WHERE course_id = $1 "
            "ORDER BY created_at DESC, review_id LIMIT $2", course_id, limit)
        distribution = {str(star): 0 for star in range(1, 6)}
        for r in stars:
            distribution[str(r["rating"])] = int(r["n"])
        return ReviewList(course_id=course_id, rating_avg=course["rating_avg"],
                          review_count=course["review_count"], distribution=distribution,
                          items=[Review.model_validate(r) for r in items])
