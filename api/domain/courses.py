"""Courses: create and build them (modules, lessons), publish, read one, and the catalogue:
browsed and searched across every region by cross-shard reads that the router merges
exactly (ordering, LIMIT), with keyset cursors for pages."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from api.domain.data import Data, decode_cursor, encode_cursor
from api.errors import FieldError, Forbidden, InvalidInput, NotFound
from api.models import (
    CatalogueQuery,
    Course,
    CourseCreate,
    CourseDetail,
    CoursePage,
    CourseSummary,
    LessonCreate,
    Published,
    SearchQuery,
)
from api.types import Principal, UserRole

__all__ = ["SUMMARY_COLUMNS", "Courses"]

SUMMARY_COLUMNS = ("c.course_id, c.title, c.slug, c.region, c.level, c.language, c.price_cents, "
                   "c.currency, c.rating_avg, c.review_count, c.enrollment_count, c.published_at")
_COURSE_COLUMNS = (SUMMARY_COLUMNS + ", c.instructor_id, c.category_id, c.description, c.status, "
                   "c.capacity")

# A course with its modules and their lessons, in position order, as one JSON array (each
# correlated subquery's key confines it to the course's shard, so the router sends the whole
# statement there).
_DETAIL_SQL = (
    f"SELECT {_COURSE_COLUMNS}, "
    "(SELECT coalesce(json_agg(json_build_object("
    "'module_id', m.module_id, 'position', m.position, 'title', m.title, 'lessons', "
    "(SELECT coalesce(json_agg(json_build_object("
    "'lesson_id', l.lesson_id, 'position', l.position, 'title', l.title, "
    "'duration_seconds', l.duration_seconds, 'is_preview', l.is_preview) "
    "ORDER BY l.position), '[]') FROM lessons l WHERE l.module_id = m.module_id)) "
    "ORDER BY m.position), '[]') FROM course_modules m WHERE m.course_id = c.course_id) "
    "AS modules "
    "FROM courses c WHERE c.course_id = $1")

# sort -> (ORDER BY key expression, direction, how a cursor value is read back)
_SORTS: dict[str, tuple[str, str, Any]] = {
    "newest": ("c.published_at", "DESC", dt.datetime.fromisoformat),
    "price_asc": ("c.price_cents", "ASC", int),
    "price_desc": ("c.price_cents", "DESC", int),
    "popular": ("c.enrollment_count", "DESC", int),
    "rating": ("coalesce(c.rating_avg, 0)", "DESC", Decimal),
}


def _summary(row: dict[str, Any]) -> CourseSummary:
    return CourseSummary.model_validate(row)


class Courses:
    def __init__(self, data: Data) -> None:
        self._data = data

    # ---- building

    async def create(self, body: CourseCreate, *, by: Principal) -> Course:
        """A draft course in the instructor's own region's catalogue."""
        if by.role is UserRole.STUDENT:
            raise Forbidden("only instructors and admins create courses")
        course_id = await self._data.write_value(
            "SELECT create_course($1, $2, $3, $4, $5, $6, $7::course_level, $8, $9)",
            by.user_id, body.category_id, body.title, body.price_cents, body.currency.upper(),
            body.capacity, body.level, body.language, body.description)
        return await self._course(course_id, viewer=by)

    async def _owned(self, course_id: uuid.UUID, by: Principal) -> dict[str, Any]:
        found = await self._data.row_by_id(
            "SELECT course_id, instructor_id, status FROM courses WHERE course_id = $1",
            course_id)
        if found is None:
            raise NotFound("no such course")
        if found["instructor_id"] != by.user_id and not by.is_admin:
            raise Forbidden("only the course's instructor or an admin may change it")
        return found

    async def add_module(self, course_id: uuid.UUID, title: str, *, by: Principal) -> uuid.UUID:
        await self._owned(course_id, by)
        module_id: uuid.UUID = await self._data.write_value(
            "SELECT add_module($1, $2)", course_id, title)
        return module_id

    async def add_lesson(self, module_id: uuid.UUID, body: LessonCreate, *,
                         by: Principal) -> uuid.UUID:
        found = await self._data.row_by_id(
            "SELECT c.instructor_id FROM course_modules m "
            "JOIN courses c ON c.course_id = m.course_id WHERE m.module_id = $1", module_id)
        if found is None:
            raise NotFound("no such module")
        if found["instructor_id"] != by.user_id and not by.is_admin:
            raise Forbidden("only the course's instructor or an admin may change it")
        lesson_id: uuid.UUID = await self._data.write_value(
            "SELECT add_lesson($1, $2, $3, $4)",
            module_id, body.title, body.duration_seconds, body.is_preview)
        return lesson_id

    async def publish(self, course_id: uuid.UUID, *, by: Principal) -> Published:
        await self._owned(course_id, by)
        published_at = await self._data.write_value("SELECT publish_course($1)", course_id)
        return Published(course_id=course_id, published_at=published_at)

    # ---- reading

    async def _course_row(self, course_id: uuid.UUID, *,
                          viewer: Principal | None) -> dict[str, Any]:
        found = await self._data.row_by_id(
            f"SELECT {_COURSE_COLUMNS} FROM courses c WHERE c.course_id = $1", course_id)
        if found is None or not _visible(found, viewer):
            raise NotFound("no such course")
        return found

    async def _course(self, course_id: uuid.UUID, *, viewer: Principal | None) -> Course:
        return Course.model_validate(await self._course_row(course_id, viewer=viewer))

    async def get(self, course_id: uuid.UUID, *, viewer: Principal | None = None
                  ) -> CourseDetail:
        """A course with its modules and lessons in order. Drafts only for their instructor
        and admins. One statement, on the course's shard: its modules and their lessons come
        as one JSON array beside the row (a round trip to the router costs the API, the
        router and PostgreSQL more than the aggregate does)."""
        rows = await self._data.rows_by_id(_DETAIL_SQL, course_id)
        found = rows[0] if rows else None
        if found is None or not _visible(found, viewer):
            raise NotFound("no such course")
        modules = found.pop("modules")
        # Validated once, row and modules together (not the row as a Course first).
        return CourseDetail.model_validate({**found, "modules": modules.value})

    async def browse(self, query: CatalogueQuery) -> CoursePage:
        """Published courses of every region (or one), filtered, sorted, a page at a time.
        One statement; without a region it is read from every shard and merged."""
        key, direction, parse = _SORTS[query.sort]
        where = ["c.status = 'published'"]
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.level is not None:
            where.append(f"c.level = {arg(query.level)}::course_level")
        if query.language is not None:
            where.append(f"c.language = {arg(query.language)}")
        if query.region is not None:
            where.append(f"c.region = {arg(query.region.value)}")
        if query.max_price_cents is not None:
            where.append(f"c.price_cents <= {arg(query.max_price_cents)}")
        if query.cursor is not None:
            last_value, last_id = decode_cursor(query.cursor, 2)
            try:
                value, after = parse(last_value), uuid.UUID(str(last_id))
            except (ValueError, TypeError, ArithmeticError):
                raise InvalidInput("malformed cursor", errors=[
                    FieldError("query", "cursor", "malformed")]) from None
            op = "<" if direction == "DESC" else ">"
            v, i = arg(value), arg(after)
            where.append(f"({key} {op} {v} OR ({key} = {v} AND c.course_id {op} {i}))")
        limit = arg(query.limit + 1)
        rows = await self._data.rows(
            f"SELECT {SUMMARY_COLUMNS}, {key} AS sort_key FROM courses c "
            f"WHERE {' AND '.join(where)} "
            f"ORDER BY {key} {direction}, c.course_id {direction} LIMIT {limit}", *args)
        more = len(rows) > query.limit
        page = rows[: query.limit]
        cursor = (encode_cursor([page[-1]["sort_key"], str(page[-1]["course_id"])])
                  if more and page else None)
        return CoursePage(items=[_summary(r) for r in page], next_cursor=cursor)

    async def search(self, query: SearchQuery) -> CoursePage:
        """Full-text search of titles and descriptions (PostgreSQL's, on the GIN-indexed
        search_vector), ranked across every region. ts_rank reads only its own row, so ranks
        from different shards compare exactly."""
        rows = await self._data.rows(
            f"SELECT {SUMMARY_COLUMNS}, "
            "ts_rank(c.search_vector, websearch_to_tsquery('simple', $1)) AS rank "
            "FROM courses c WHERE c.status = 'published' "
            "AND c.search_vector @@ websearch_to_tsquery('simple', $1) "
            "ORDER BY rank DESC, c.course_id LIMIT $2", query.q, query.limit)
        return CoursePage(items=[_summary(r) for r in rows], next_cursor=None)

    async def top(self, limit: int) -> list[CourseSummary]:
        """The most enrolled published courses of every region."""
        rows = await self._data.rows(
            f"SELECT {SUMMARY_COLUMNS} FROM courses c WHERE c.status = 'published' "
            "ORDER BY c.enrollment_count DESC, c.course_id LIMIT $1", limit)
        return [_summary(r) for r in rows]

    async def categories(self) -> list[dict[str, Any]]:
        """The reference table of categories (the same rows on every shard)."""
        return await self._data.rows(
            "SELECT category_id, parent_id, slug, name FROM categories ORDER BY slug")


def _visible(course: dict[str, Any], viewer: Principal | None) -> bool:
    if course["status"] != "draft":
        return True
    return viewer is not None and (viewer.is_admin or viewer.user_id == course["instructor_id"])
