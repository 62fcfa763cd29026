"""Analytics for admins: revenue and enrollments per region and day, and the top courses.
The per-day reports are the schema's functions run on each region's shard (named by a shard
hint, in parallel) and labelled with the region; top courses is one cross-shard read."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from api.domain.courses import Courses
from api.domain.data import Data
from api.errors import FieldError, Forbidden, InvalidInput
from api.models import EnrollmentsReport, PeriodQuery, RevenueReport, TopCourses
from api.types import REGIONS, Principal

__all__ = ["MAX_PERIOD_DAYS", "Analytics"]

MAX_PERIOD_DAYS = 366


def _bounds(period: PeriodQuery) -> tuple[dt.datetime, dt.datetime]:
    if period.end <= period.start:
        raise InvalidInput("the period is empty", errors=[
            FieldError("query", "to", "must be after from")])
    if (period.end - period.start).days > MAX_PERIOD_DAYS:
        raise InvalidInput(f"the period is longer than {MAX_PERIOD_DAYS} days", errors=[
            FieldError("query", "to", f"at most {MAX_PERIOD_DAYS} days after from")])
    start = dt.datetime.combine(period.start, dt.time(), dt.UTC)
    return start, dt.datetime.combine(period.end, dt.time(), dt.UTC)


class Analytics:
    def __init__(self, data: Data, courses: Courses) -> None:
        self._data = data
        self._courses = courses

    async def _per_region(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        parts = await asyncio.gather(
            *(self._data.rows(sql, *args, shard=region) for region in REGIONS))
        return [{"region": region, **row}
                for region, rows in zip(REGIONS, parts, strict=True) for row in rows]

    async def revenue(self, period: PeriodQuery, *, by: Principal) -> RevenueReport:
        _admin(by)
        start, end = _bounds(period)
        rows = await self._per_region(
            "SELECT day, currency, sum(payments) AS payments, sum(gross_cents) AS gross_cents, "
            "sum(refunded_cents) AS refunded_cents, sum(net_cents) AS net_cents "
            "FROM revenue_report($1, $2) GROUP BY day, currency ORDER BY day, currency",
            start, end)
        return RevenueReport(start=period.start, end=period.end, items=rows)

    async def enrollments(self, period: PeriodQuery, *, by: Principal) -> EnrollmentsReport:
        _admin(by)
        start, end = _bounds(period)
        rows = await self._per_region("SELECT * FROM enrollment_statistics($1, $2)", start, end)
        return EnrollmentsReport(start=period.start, end=period.end, items=rows)

    async def top_courses(self, limit: int, *, by: Principal) -> TopCourses:
        _admin(by)
        return TopCourses(items=await self._courses.top(limit))


def _admin(by: Principal) -> None:
    if not by.is_admin:
        raise Forbidden("analytics are for admins")
