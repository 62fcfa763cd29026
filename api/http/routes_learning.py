"""Routes: courses and the catalogue, enrollments and progress, lesson content, reviews."""

from __future__ import annotations

from api.http.operations import Call, Operation, bearer_token
from api.models import (
    CatalogueQuery,
    Certificate,
    Course,
    CourseCreate,
    CourseDetail,
    CoursePage,
    CreatedId,
    Enrollment,
    EnrollmentCreate,
    EnrollmentList,
    LessonComplete,
    LessonContent,
    LessonCreate,
    LessonDone,
    ModuleCreate,
    Progress,
    Published,
    Review,
    ReviewList,
    ReviewWrite,
    SearchQuery,
)
from api.types import UserRole

__all__ = ["OPERATIONS"]

_TEACHERS = frozenset({UserRole.INSTRUCTOR, UserRole.ADMIN})


async def browse_courses(call: Call) -> CoursePage:
    return await call.domain.courses.browse(call.query)


async def search_courses(call: Call) -> CoursePage:
    return await call.domain.courses.search(call.query)


async def create_course(call: Call) -> Course:
    return await call.domain.courses.create(call.body, by=call.by)


async def get_course(call: Call) -> CourseDetail:
    viewer = None
    if call.request.headers.get("authorization"):
        viewer = call.domain.auth.authenticate(bearer_token(call.request))
    return await call.domain.courses.get(call.path["course_id"], viewer=viewer)


async def add_module(call: Call) -> CreatedId:
    module_id = await call.domain.courses.add_module(call.path["course_id"], call.body.title,
                                                     by=call.by)
    return CreatedId(id=module_id)


async def add_lesson(call: Call) -> CreatedId:
    lesson_id = await call.domain.courses.add_lesson(call.path["module_id"], call.body,
                                                     by=call.by)
    return CreatedId(id=lesson_id)


async def publish_course(call: Call) -> Published:
    return await call.domain.courses.publish(call.path["course_id"], by=call.by)


async def enroll(call: Call) -> Enrollment:
    return await call.domain.enrollments.enroll(call.body.course_id, by=call.by)


async def my_enrollments(call: Call) -> EnrollmentList:
    return await call.domain.enrollments.mine(by=call.by)


async def get_enrollment(call: Call) -> Enrollment:
    return await call.domain.enrollments.get(call.path["enrollment_id"], by=call.by)


async def cancel_enrollment(call: Call) -> Enrollment:
    return await call.domain.enrollments.cancel(call.path["enrollment_id"], by=call.by)


async def get_progress(call: Call) -> Progress:
    return await call.domain.enrollments.progress(call.path["enrollment_id"], by=call.by)


async def complete_lesson(call: Call) -> LessonDone:
    return await call.domain.enrollments.complete_lesson(
        call.path["enrollment_id"], call.path["lesson_id"], call.body.seconds_spent, by=call.by)


async def issue_certificate(call: Call) -> Certificate:
    return await call.domain.enrollments.issue_certificate(call.path["enrollment_id"],
                                                           by=call.by)


async def get_certificate(call: Call) -> Certificate:
    return await call.domain.enrollments.certificate(call.path["enrollment_id"], by=call.by)


async def put_lesson_content(call: Call) -> LessonContent:
    return await call.domain.content.put_lesson(call.path["lesson_id"], call.body, by=call.by)


async def get_lesson_content(call: Call) -> LessonContent:
    return await call.domain.content.get_lesson(call.path["lesson_id"], by=call.by)


async def write_review(call: Call) -> Review:
    return await call.domain.reviews.write(call.path["course_id"], call.body, by=call.by)


async def course_reviews(call: Call) -> ReviewList:
    return await call.domain.reviews.of_course(call.path["course_id"])


OPERATIONS = [
    Operation("GET", "/courses", browse_courses, "Browse the catalogue of every region",
              "courses", roles=None, query=CatalogueQuery, response=CoursePage,
              description="Published courses of all regions (or `region`'s), filtered and "
                          "sorted, a page at a time: pass `next_cursor` as `cursor`."),
    Operation("GET", "/courses/search", search_courses, "Full-text search of the catalogue",
              "courses", roles=None, query=SearchQuery, response=CoursePage,
              description="Titles and descriptions of every region's published courses, "
                          "best match first (PostgreSQL full-text search, web-search syntax)."),
    Operation("POST", "/courses", create_course, "Create a draft course in my region",
              "courses", roles=_TEACHERS, body=CourseCreate, response=Course, status=201,
              errors=(403, 404, 409)),
    Operation("GET", "/courses/{course_id}", get_course, "A course with its modules and lessons",
              "courses", roles=None, response=CourseDetail, errors=(404,), optional_bearer=True,
              description="Drafts are shown only to their instructor and admins (send the "
                          "bearer token)."),
    Operation("POST", "/courses/{course_id}/modules", add_module, "Add a module to a course",
              "courses", roles=_TEACHERS, body=ModuleCreate, response=CreatedId, status=201,
              errors=(403, 404, 409)),
    Operation("POST", "/modules/{module_id}/lessons", add_lesson, "Add a lesson to a module",
              "courses", roles=_TEACHERS, body=LessonCreate, response=CreatedId, status=201,
              errors=(403, 404, 409)),
    Operation("POST", "/courses/{course_id}/publish", publish_course, "Publish a course",
              "courses", roles=_TEACHERS, response=Published, errors=(403, 404, 409)),
    Operation("POST", "/enrollments", enroll, "Enroll in a course of any region",
              "enrollments", body=EnrollmentCreate, response=Enrollment, status=201,
              errors=(404, 409),
              description="Paid courses start as `pending_payment`. A course of another "
                          "region's catalogue is enrolled in with one transaction over the "
                          "two regions (the enrollment on the student's, the seat on the "
                          "course's): both or neither. A full course is 409."),
    Operation("GET", "/enrollments", my_enrollments, "My enrollments", "enrollments",
              response=EnrollmentList),
    Operation("GET", "/enrollments/{enrollment_id}", get_enrollment, "One of my enrollments",
              "enrollments", response=Enrollment, errors=(404,)),
    Operation("POST", "/enrollments/{enrollment_id}/cancel", cancel_enrollment,
              "Cancel one of my enrollments (admins: anyone's)", "enrollments",
              response=Enrollment, errors=(404, 409),
              description="Answers the enrollment, `cancelled`; cancelling it again answers "
                          "the same. A course of another region's catalogue gives its seat "
                          "back there in the same transaction over the two regions: both or "
                          "neither. Refused (409) for a completed enrollment, and for a paid "
                          "one: an admin refunds its payment, which cancels it."),
    Operation("GET", "/enrollments/{enrollment_id}/progress", get_progress,
              "My progress in a course", "enrollments", response=Progress, errors=(404,)),
    Operation("POST", "/enrollments/{enrollment_id}/lessons/{lesson_id}/complete",
              complete_lesson, "Complete a lesson", "enrollments", body=LessonComplete,
              response=LessonDone, errors=(404, 409)),
    Operation("POST", "/enrollments/{enrollment_id}/certificate", issue_certificate,
              "Get the certificate of a completed course (issued once)", "enrollments",
              response=Certificate, status=201, errors=(404, 409)),
    Operation("GET", "/enrollments/{enrollment_id}/certificate", get_certificate,
              "The certificate of an enrollment", "enrollments", response=Certificate,
              errors=(404,)),
    Operation("PUT", "/lessons/{lesson_id}/content", put_lesson_content,
              "Write a lesson's content", "content", roles=_TEACHERS, body=LessonContent,
              response=LessonContent, errors=(403, 404)),
    Operation("GET", "/lessons/{lesson_id}/content", get_lesson_content, "A lesson's content",
              "content", response=LessonContent, errors=(403, 404)),
    Operation("PUT", "/courses/{course_id}/review", write_review,
              "Review a course I am enrolled in (one review each; writing again replaces it)",
              "reviews", body=ReviewWrite, response=Review, errors=(404, 409)),
    Operation("GET", "/courses/{course_id}/reviews", course_reviews,
              "A course's reviews and rating summary", "reviews", roles=None,
              response=ReviewList, errors=(404,)),
]
