"""Round trips to the router per operation: GET one course, my enrollments and completing a
lesson each take one (the REST API's busiest calls: each round trip costs the API, the router
and PostgreSQL), with the rules they kept: a draft only for its instructor and admins,
another user's enrollment missing, an admin may act, a remote enrollment completes against
its course's current lessons. Counted at the domain's seam: every statement the domain
sends goes through the client's `fetch`, one request to the router each."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

import client
from api.domain import Domain
from api.errors import Conflict, NotFound
from api.models import CourseCreate, LessonCreate, Register
from api.types import Principal, Region, UserRole
from tests.api.conftest import PASSWORD, SETTINGS, email
from tests.support.ids import new_id


class CountingClient:
    """The client library, counting the requests the domain sends through it."""

    def __init__(self, db: client.Client) -> None:
        self._db = db
        self.requests = 0

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await self._db.fetch(*args, **kwargs)

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("these operations use no transaction")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class Counted:
    """A domain over a counting client: `await counted.once(coro)` runs one operation and
    answers its result and how many requests it sent."""

    def __init__(self, db: client.Client) -> None:
        self.client = CountingClient(db)
        self.domain = Domain(self.client, SETTINGS)  # type: ignore[arg-type]

    async def run(self, operation: Any) -> tuple[Any, int]:
        before = self.client.requests
        result = await operation
        return result, self.client.requests - before

    async def refused(self, operation: Any) -> tuple[NotFound, int]:
        before = self.client.requests
        with pytest.raises(NotFound) as caught:
            await operation
        return caught.value, self.client.requests - before


async def person(domain: Domain, role: UserRole, region: Region) -> Principal:
    user = await domain.auth.register(Register(
        email=email(role.value), password=PASSWORD, full_name="Round Trip", region=region,
        country="FR"), role=role)
    return Principal(user.user_id, role, region)


async def course_of(domain: Domain, category_id: str, teacher: Principal, lessons: int, *,
                    publish: bool = True) -> tuple[uuid.UUID, list[uuid.UUID]]:
    course = await domain.courses.create(CourseCreate(
        title="Round trips", category_id=uuid.UUID(category_id), price_cents=0), by=teacher)
    ids = []
    for m in range(2):
        module = await domain.courses.add_module(course.course_id, f"M{m}", by=teacher)
        for i in range(lessons):
            ids.append(await domain.courses.add_lesson(
                module, LessonCreate(title=f"M{m} L{i}", duration_seconds=60 * i,
                                     is_preview=i == 0), by=teacher))
    if publish:
        await domain.courses.publish(course.course_id, by=teacher)
    return course.course_id, ids


@pytest.fixture
def counted(api_db: client.Client) -> Counted:
    return Counted(api_db)


async def test_get_course_is_one_round_trip_and_drafts_stay_hidden(
        domain: Domain, counted: Counted, category_id: str) -> None:
    teacher = await person(domain, UserRole.INSTRUCTOR, Region.EUROPE)
    course_id, lessons = await course_of(domain, category_id, teacher, 3)
    detail, requests = await counted.run(counted.domain.courses.get(course_id))
    assert requests == 1
    assert [m.title for m in detail.modules] == ["M0", "M1"]
    assert [m.position for m in detail.modules] == [1, 2]
    assert [lesson.lesson_id for m in detail.modules for lesson in m.lessons] == lessons
    first = detail.modules[0].lessons
    assert [(x.position, x.title, x.duration_seconds, x.is_preview) for x in first] == [
        (1, "M0 L0", 0, True), (2, "M0 L1", 60, False), (3, "M0 L2", 120, False)]
    assert (detail.course_id, detail.instructor_id, detail.status) == (
        course_id, teacher.user_id, "published")

    # A course without modules: an empty list, not null.
    bare = (await domain.courses.create(CourseCreate(
        title="Bare", category_id=uuid.UUID(category_id), price_cents=0), by=teacher)).course_id
    detail, requests = await counted.run(counted.domain.courses.get(bare, viewer=teacher))
    assert (requests, detail.modules) == (1, [])

    # A draft: its instructor and admins only; anyone else (or nobody) is told it is not there.
    draft, _ = await course_of(domain, category_id, teacher, 1, publish=False)
    admin = await person(domain, UserRole.ADMIN, Region.ASIA)
    stranger = await person(domain, UserRole.INSTRUCTOR, Region.EUROPE)
    for viewer in (teacher, admin):
        detail, requests = await counted.run(counted.domain.courses.get(draft, viewer=viewer))
        assert (requests, detail.status, len(detail.modules[0].lessons)) == (1, "draft", 1)
    for nobody in (None, stranger):
        refused, requests = await counted.refused(counted.domain.courses.get(draft,
                                                                             viewer=nobody))
        assert (requests, refused.detail) == (1, "no such course")
    for nowhere in (uuid.uuid4(), new_id(200)):  # not a georoute id; one of no shard here
        refused, requests = await counted.refused(counted.domain.courses.get(nowhere))
        assert refused.detail == "no such course"


async def test_my_enrollments_is_one_round_trip_when_the_courses_are_local(
        domain: Domain, counted: Counted, category_id: str) -> None:
    teacher = await person(domain, UserRole.INSTRUCTOR, Region.EUROPE)
    far_teacher = await person(domain, UserRole.INSTRUCTOR, Region.ASIA)
    here, _ = await course_of(domain, category_id, teacher, 1)
    there, _ = await course_of(domain, category_id, far_teacher, 1)
    student = await person(domain, UserRole.STUDENT, Region.EUROPE)
    mine, requests = await counted.run(counted.domain.enrollments.mine(by=student))
    assert (requests, mine.items) == (1, [])

    local = await domain.enrollments.enroll(here, by=student)
    mine, requests = await counted.run(counted.domain.enrollments.mine(by=student))
    assert requests == 1
    assert [(e.enrollment_id, e.course_title, e.course_region) for e in mine.items] == [
        (local.enrollment_id, "Round trips", "europe")]
    one, requests = await counted.run(counted.domain.enrollments.get(local.enrollment_id,
                                                                     by=student))
    assert (requests, one) == (1, mine.items[0])

    # A course on another shard: the one statement cannot join it; read there in one more.
    remote = await domain.enrollments.enroll(there, by=student)
    mine, requests = await counted.run(counted.domain.enrollments.mine(by=student))
    assert requests == 2
    assert [(e.enrollment_id, e.course_id, e.course_title, e.course_region)
            for e in mine.items] == [
        (remote.enrollment_id, there, "Round trips", "asia"),
        (local.enrollment_id, here, "Round trips", "europe")]
    assert (remote.course_title, remote.course_region) == ("Round trips", "asia")

    # Another user's enrollment is missing, as if it did not exist; an admin sees it.
    other = await person(domain, UserRole.STUDENT, Region.EUROPE)
    refused, _ = await counted.refused(counted.domain.enrollments.get(local.enrollment_id,
                                                                      by=other))
    assert refused.detail == "no such enrollment"
    admin = await person(domain, UserRole.ADMIN, Region.NORTH_AMERICA)
    seen, _ = await counted.run(counted.domain.enrollments.get(local.enrollment_id, by=admin))
    assert seen == mine.items[1]


async def _progress(domain: Domain, enrollment_id: uuid.UUID, who: Principal) -> Any:
    return await domain.enrollments.progress(enrollment_id, by=who)


async def test_completing_a_lesson_is_one_round_trip_and_checks_who_asks(
        domain: Domain, counted: Counted, category_id: str) -> None:
    teacher = await person(domain, UserRole.INSTRUCTOR, Region.EUROPE)
    course_id, lessons = await course_of(domain, category_id, teacher, 2)
    student = await person(domain, UserRole.STUDENT, Region.EUROPE)
    enrollment = (await domain.enrollments.enroll(course_id, by=student)).enrollment_id

    done, requests = await counted.run(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[0], 30, by=student))
    assert (requests, done.progress_pct) == (1, Decimal("25.00"))

    # Another student: missing, as if it did not exist, and nothing is written.
    other = await person(domain, UserRole.STUDENT, Region.EUROPE)
    refused, requests = await counted.refused(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[1], by=other))
    assert (requests, refused.detail) == (1, "no such enrollment")
    # The course's instructor is not the enrollment's student either.
    refused, _ = await counted.refused(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[1], by=teacher))
    assert refused.detail == "no such enrollment"
    # Ids that name no shard (not a georoute id; one of a shard not configured): missing.
    for nowhere in (uuid.uuid4(), new_id(200)):
        refused, _ = await counted.refused(counted.domain.enrollments.complete_lesson(
            nowhere, lessons[1], by=student))
        assert refused.detail == "no such enrollment"
    progress = await _progress(domain, enrollment, student)
    assert (progress.lessons_completed, progress.completed_lessons) == (1, [lessons[0]])

    # An admin may act on it (from another region too).
    admin = await person(domain, UserRole.ADMIN, Region.ASIA)
    done, requests = await counted.run(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[1], by=admin))
    assert (requests, done.progress_pct) == (1, Decimal("50.00"))
    progress = await _progress(domain, enrollment, student)
    assert progress.completed_lessons == sorted(lessons[:2])


async def test_a_remote_enrollment_completes_against_its_course_s_current_lessons(
        domain: Domain, counted: Counted, category_id: str) -> None:
    teacher = await person(domain, UserRole.INSTRUCTOR, Region.ASIA)
    course_id, lessons = await course_of(domain, category_id, teacher, 1)
    student = await person(domain, UserRole.STUDENT, Region.EUROPE)
    enrollment = (await domain.enrollments.enroll(course_id, by=student)).enrollment_id

    # Completing asks the student's shard, which answers that it needs the course's lessons,
    # reads them on the course's shard, and completes with them.
    done, requests = await counted.run(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[0], by=student))
    assert (requests, done.progress_pct) == (3, Decimal("50.00"))

    # A lesson added since the enrollment counts: the write used the course's lessons now.
    modules = (await domain.courses.get(course_id)).modules
    added = await domain.courses.add_lesson(modules[1].module_id, LessonCreate(title="New"),
                                            by=teacher)
    done, requests = await counted.run(counted.domain.enrollments.complete_lesson(
        enrollment, added, by=student))
    assert (requests, done.progress_pct) == (3, Decimal("66.67"))

    # Another user's remote enrollment: missing after the one write, no read of the course.
    other = await person(domain, UserRole.STUDENT, Region.EUROPE)
    refused, requests = await counted.refused(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[1], by=other))
    assert (requests, refused.detail) == (1, "no such enrollment")
    admin = await person(domain, UserRole.ADMIN, Region.NORTH_AMERICA)
    done, requests = await counted.run(counted.domain.enrollments.complete_lesson(
        enrollment, lessons[1], by=admin))
    assert (requests, done.progress_pct) == (3, Decimal("100.00"))
    progress = await _progress(domain, enrollment, student)
    assert (progress.status, progress.lessons_total, progress.lessons_completed) == (
        "completed", 3, 3)


async def test_progress_and_certificates_are_one_round_trip_each(
        domain: Domain, counted: Counted, category_id: str) -> None:
    teacher = await person(domain, UserRole.INSTRUCTOR, Region.EUROPE)
    course_id, lessons = await course_of(domain, category_id, teacher, 1)
    student = await person(domain, UserRole.STUDENT, Region.EUROPE)
    enrollment = (await domain.enrollments.enroll(course_id, by=student)).enrollment_id
    enrollments = counted.domain.enrollments

    progress, requests = await counted.run(enrollments.progress(enrollment, by=student))
    assert requests == 1
    assert (progress.lessons_total, progress.lessons_completed, progress.progress_pct,
            progress.status, progress.completed_lessons) == (2, 0, Decimal("0.00"), "active", [])
    refused, requests = await counted.refused(enrollments.certificate(enrollment, by=student))
    assert (requests, refused.detail) == (1, "no certificate has been issued for this enrollment")

    # Issuing checks who asks in the same write; a course not completed is refused.
    with pytest.raises(Conflict):
        await enrollments.issue_certificate(enrollment, by=student)
    for lesson in lessons:
        await domain.enrollments.complete_lesson(enrollment, lesson, by=student)
    other = await person(domain, UserRole.STUDENT, Region.EUROPE)
    for who, enrollment_id in ((other, enrollment), (teacher, enrollment),
                               (student, uuid.uuid4()), (student, new_id(200))):
        refused, requests = await counted.refused(enrollments.issue_certificate(
            enrollment_id, by=who))
        assert (requests, refused.detail) == (1, "no such enrollment")
    refused, _ = await counted.refused(enrollments.certificate(enrollment, by=student))
    assert refused.detail == "no certificate has been issued for this enrollment"
    issued, requests = await counted.run(enrollments.issue_certificate(enrollment, by=student))
    assert (requests, issued.enrollment_id) == (1, enrollment)
    assert issued.serial_number.startswith("CERT-")
    admin = await person(domain, UserRole.ADMIN, Region.ASIA)
    again, requests = await counted.run(enrollments.issue_certificate(enrollment, by=admin))
    assert (requests, again) == (1, issued)  # issued once; asking again returns it
    progress, requests = await counted.run(enrollments.progress(enrollment, by=student))
    assert (requests, progress.status, progress.completed_lessons) == (
        1, "completed", sorted(lessons))
    certificate, requests = await counted.run(enrollments.certificate(enrollment, by=student))
    assert (requests, certificate) == (1, issued)

    # An admin sees both; another user, or an id of no shard, finds nothing.
    assert await enrollments.progress(enrollment, by=admin) == progress
    assert await enrollments.certificate(enrollment, by=admin) == issued
    for who, enrollment_id in ((other, enrollment), (student, uuid.uuid4()),
                               (student, new_id(200))):
        for operation in (enrollments.progress, enrollments.certificate, enrollments.get):
            refused, _ = await counted.refused(operation(enrollment_id, by=who))
            assert refused.detail == "no such enrollment"
