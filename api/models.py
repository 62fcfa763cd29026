"""The API's shapes, declared once: what requests carry and what responses hold. The domain
takes and returns these; the HTTP layer validates requests with them and derives the OpenAPI
document's schemas from them."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api.types import Region, UserRole

__all__ = [
    "AccessGrant",
    "CatalogueQuery",
    "Certificate",
    "Coupon",
    "CouponCreate",
    "Course",
    "CourseCreate",
    "CourseDetail",
    "CoursePage",
    "CourseSummary",
    "CreatedId",
    "Enrollment",
    "EnrollmentCreate",
    "EnrollmentList",
    "EnrollmentsReport",
    "Health",
    "Invoice",
    "LessonComplete",
    "LessonContent",
    "LessonCreate",
    "LessonDone",
    "Login",
    "ModuleCreate",
    "Payment",
    "PaymentCreate",
    "PaymentList",
    "PeriodQuery",
    "Preferences",
    "Price",
    "Progress",
    "Published",
    "RefreshRequest",
    "RefundCreate",
    "Register",
    "RevenueReport",
    "Review",
    "ReviewList",
    "ReviewWrite",
    "SearchQuery",
    "TopCourses",
    "TopCoursesQuery",
    "User",
    "UserList",
    "UserListQuery",
    "UserUpdate",
]


class _In(BaseModel):
    """A request shape: unknown fields are refused (a typo must not silently do nothing), and
    so is a NUL character in any string (PostgreSQL's text cannot hold one: it was a 500)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _holds_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return False


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=False)


Text = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]


# ---- auth and users ----------------------------------------------------------------------

class Register(_In):
    email: Email
    password: Annotated[str, StringConstraints(min_length=10, max_length=256)]
    full_name: Text
    role: Literal[UserRole.STUDENT, UserRole.INSTRUCTOR] = UserRole.STUDENT
    region: Region | None = Field(
        default=None, description="home region: the user's data stays on its shard. Default: "
        "the region serving `country` (North America, Europe or Asia); a country of none of "
        "them must name one")
    country: Country = "US"
    city: Annotated[str, StringConstraints(max_length=100)] = ""


class Login(_In):
    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RefreshRequest(_In):
    refresh_token: Annotated[str, StringConstraints(min_length=10, max_length=200)]


class AccessGrant(_Out):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_token: str
    refresh_expires_at: dt.datetime
    user_id: uuid.UUID
    role: UserRole
    region: Region


class User(_Out):
    user_id: uuid.UUID
    email: str
    full_name: str
    role: UserRole
    home_region: Region
    country: str
    city: str
    is_active: bool
    created_at: dt.datetime


class UserUpdate(_In):
    full_name: Text | None = None
    country: Country | None = None
    city: Annotated[str, StringConstraints(max_length=100)] | None = None


class UserListQuery(_In):
    region: Region
    role: UserRole | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)


class UserList(_Out):
    items: list[User]
    next_cursor: str | None


# ---- courses -----------------------------------------------------------------------------

Level = Literal["beginner", "intermediate", "advanced"]


class CourseCreate(_In):
    title: Text
    description: Annotated[str, StringConstraints(max_length=20_000)] = ""
    category_id: uuid.UUID
    price_cents: int = Field(ge=0, le=100_000_000)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")] = "USD"
    capacity: int | None = Field(None, gt=0)
    level: Level = "beginner"
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")] = "en"


class ModuleCreate(_In):
    title: Text


class LessonCreate(_In):
    title: Text
    duration_seconds: int = Field(0, ge=0, le=86_400)
    is_preview: bool = False


class CreatedId(_Out):
    id: uuid.UUID


class Published(_Out):
    course_id: uuid.UUID
    published_at: dt.datetime


class CourseSummary(_Out):
    course_id: uuid.UUID
    title: str
    slug: str
    region: Region
    level: Level
    language: str
    price_cents: int
    currency: str
    rating_avg: Decimal | None
    review_count: int
    enrollment_count: int
    published_at: dt.datetime | None
    rank: float | None = Field(None, description="full-text match rank (search only)")


class Course(CourseSummary):
    instructor_id: uuid.UUID
    category_id: uuid.UUID
    description: str
    status: Literal["draft", "published", "archived"]
    capacity: int | None


class Lesson(_Out):
    lesson_id: uuid.UUID
    position: int
    title: str
    duration_seconds: int
    is_preview: bool


class Module(_Out):
    module_id: uuid.UUID
    position: int
    title: str
    lessons: list[Lesson]


class CourseDetail(Course):
    modules: list[Module]


Sort = Literal["newest", "price_asc", "price_desc", "popular", "rating"]


class CatalogueQuery(_In):
    level: Level | None = None
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")] | None = None
    region: Region | None = None
    max_price_cents: int | None = Field(None, ge=0)
    sort: Sort = "newest"
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=300)


class SearchQuery(_In):
    q: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    limit: int = Field(20, ge=1, le=100)


class CoursePage(_Out):
    items: list[CourseSummary]
    next_cursor: str | None


# ---- enrollments -------------------------------------------------------------------------

class EnrollmentCreate(_In):
    course_id: uuid.UUID


class Enrollment(_Out):
    enrollment_id: uuid.UUID
    user_id: uuid.UUID
    course_id: uuid.UUID
    course_title: str
    # The catalogue the course is in: another than the student's own for a cross-region
    # enrollment (README, "Enrolling across regions").
    course_region: str
    status: Literal["pending_payment", "active", "completed", "cancelled"]
    progress_pct: Decimal
    enrolled_at: dt.datetime
    completed_at: dt.datetime | None


class EnrollmentList(_Out):
    items: list[Enrollment]


class Progress(_Out):
    enrollment_id: uuid.UUID
    lessons_total: int
    lessons_completed: int
    progress_pct: Decimal
    status: Literal["pending_payment", "active", "completed", "cancelled"]
    completed_lessons: list[uuid.UUID]


class LessonComplete(_In):
    seconds_spent: int = Field(0, ge=0, le=86_400)


class LessonDone(_Out):
    enrollment_id: uuid.UUID
    lesson_id: uuid.UUID
    progress_pct: Decimal


class Certificate(_Out):
    certificate_id: uuid.UUID
    enrollment_id: uuid.UUID
    serial_number: str
    issued_at: dt.datetime


# ---- payments ----------------------------------------------------------------------------

class PaymentCreate(_In):
    enrollment_id: uuid.UUID
    coupon_code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{3,32}$")] | None = None


class Payment(_Out):
    payment_id: uuid.UUID
    enrollment_id: uuid.UUID
    amount_cents: int
    currency: str
    status: Literal["pending", "succeeded", "failed", "refunded"]
    invoice_id: uuid.UUID | None
    created_at: dt.datetime


class PaymentList(_Out):
    items: list[Payment]


class Invoice(_Out):
    invoice_id: uuid.UUID
    payment_id: uuid.UUID
    invoice_number: str
    billing_name: str
    billing_country: str
    subtotal_cents: int
    tax_cents: int
    currency: str
    issued_at: dt.datetime
    # Set when the payment was refunded: the amounts above stay as issued.
    refunded_at: dt.datetime | None = None
    refunded_cents: int | None = None


class RefundCreate(_In):
    reason: Text


class CouponCreate(_In):
    code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{3,32}$")]
    percent_off: int | None = Field(None, ge=1, le=100)
    amount_off_cents: int | None = Field(None, gt=0)
    max_redemptions: int | None = Field(None, gt=0)
    valid_until: dt.datetime | None = None


class Coupon(_Out):
    coupon_id: uuid.UUID
    course_id: uuid.UUID
    code: str
    percent_off: int | None
    amount_off_cents: int | None
    max_redemptions: int | None
    valid_until: dt.datetime | None


class Price(_Out):
    course_id: uuid.UUID
    price_cents: int
    discount_cents: int
    final_price_cents: int
    currency: str
    coupon_code: str | None


# ---- reviews -----------------------------------------------------------------------------

class ReviewWrite(_In):
    rating: int = Field(ge=1, le=5)
    body: Annotated[str, StringConstraints(max_length=5000)] = ""


class Review(_Out):
    review_id: uuid.UUID
    course_id: uuid.UUID
    user_id: uuid.UUID
    rating: int
    body: str
    created_at: dt.datetime
    updated_at: dt.datetime


class ReviewList(_Out):
    course_id: uuid.UUID
    rating_avg: Decimal | None
    review_count: int
    distribution: dict[str, int] = Field(description="reviews per star, '1' to '5'")
    items: list[Review]


# ---- analytics ---------------------------------------------------------------------------

class PeriodQuery(_In):
    start: dt.date = Field(alias="from")
    end: dt.date = Field(alias="to", description="exclusive")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RevenueRow(_Out):
    region: Region
    day: dt.date
    currency: str
    payments: int
    gross_cents: int
    refunded_cents: int
    net_cents: int


class RevenueReport(_Out):
    start: dt.date = Field(serialization_alias="from")
    end: dt.date = Field(serialization_alias="to")
    items: list[RevenueRow]


class EnrollmentsRow(_Out):
    region: Region
    day: dt.date
    enrollments: int
    completions: int
    cancellations: int


class EnrollmentsReport(_Out):
    start: dt.date = Field(serialization_alias="from")
    end: dt.date = Field(serialization_alias="to")
    items: list[EnrollmentsRow]


class TopCoursesQuery(_In):
    limit: int = Field(10, ge=1, le=100)


class TopCourses(_Out):
    items: list[CourseSummary]


# ---- documents ---------------------------------------------------------------------------

class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(/\S*)?$")]


class QuizQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    choices: list[Annotated[str, StringConstraints(max_length=300)]] = Field(min_length=2)
    answer: int = Field(ge=0)


class LessonContent(BaseModel):
    """A lesson's body in the document store (course_content)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["video", "article", "quiz"]
    title: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    body: Annotated[str, StringConstraints(max_length=200_000)] = ""
    video_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    duration_seconds: int = Field(0, ge=0)
    attachments: list[Attachment] = []
    quiz: list[QuizQuestion] = []


class Notifications(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: bool = True
    push: bool = False
    weekly_digest: bool = True


class Preferences(BaseModel):
    """A user's preferences in the document store (user_preferences)."""

    model_config = ConfigDict(extra="forbid")
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en"
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "UTC"
    theme: Literal["light", "dark", "system"] = "system"
    notifications: Notifications = Notifications()
    interests: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
                         Field(max_length=50)] = []


# ---- health ------------------------------------------------------------------------------

class NodeOverview(_Out):
    name: str
    shard: str
    role: str
    state: str
    lag_bytes: int | None


class Health(_Out):
    status: Literal["ok", "degraded"]
    router: str
    nodes: list[NodeOverview]
    metrics_url: str | None
