"""Routes: payments (with Idempotency-Key), invoices, coupons, and admin analytics."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from api.errors import FieldError, InvalidInput
from api.http.operations import Call, Header, Operation
from api.models import (
    Coupon,
    CouponCreate,
    EnrollmentsReport,
    Invoice,
    Payment,
    PaymentCreate,
    PaymentList,
    PeriodQuery,
    Price,
    RefundCreate,
    RevenueReport,
    TopCourses,
    TopCoursesQuery,
)
from api.types import UserRole

__all__ = ["IDEMPOTENCY_KEY", "OPERATIONS"]

IDEMPOTENCY_KEY = Header(
    "Idempotency-Key", "a unique key per payment attempt: a retry with the same key and body "
    "returns the first response and never charges twice", required=True,
    pattern=r"^[A-Za-z0-9_.:-]{8,128}$")
_KEY_PATTERN = re.compile(IDEMPOTENCY_KEY.pattern or "")
_ADMINS = frozenset({UserRole.ADMIN})
_TEACHERS = frozenset({UserRole.INSTRUCTOR, UserRole.ADMIN})


class PriceQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    coupon: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{3,32}$")


async def pay(call: Call) -> Payment:
    key = call.request.headers.get("idempotency-key")
    if key is None or not _KEY_PATTERN.match(key):
        raise InvalidInput("an Idempotency-Key header is required", errors=[
            FieldError("header", "Idempotency-Key",
                       "required: 8 to 128 characters of A-Z a-z 0-9 _ . : -")])
    return await call.domain.payments.pay(call.body, key, by=call.by)


async def my_payments(call: Call) -> PaymentList:
    return await call.domain.payments.mine(by=call.by)


async def get_invoice(call: Call) -> Invoice:
    return await call.domain.payments.invoice(call.path["payment_id"], by=call.by)


async def refund_payment(call: Call) -> Payment:
    return await call.domain.payments.refund(call.path["payment_id"], call.body, by=call.by)


async def create_coupon(call: Call) -> Coupon:
    return await call.domain.payments.create_coupon(call.path["course_id"], call.body,
                                                    by=call.by)


async def course_price(call: Call) -> Price:
    return await call.domain.payments.price(call.path["course_id"], call.query.coupon)


async def revenue(call: Call) -> RevenueReport:
    return await call.domain.analytics.revenue(call.query, by=call.by)


async def enrollment_stats(call: Call) -> EnrollmentsReport:
    return await call.domain.analytics.enrollments(call.query, by=call.by)


async def top_courses(call: Call) -> TopCourses:
    return await call.domain.analytics.top_courses(call.query.limit, by=call.by)


OPERATIONS = [
    Operation("POST", "/payments", pay, "Pay for one of my enrollments", "payments",
              body=PaymentCreate, response=Payment, status=201, errors=(404, 409),
              headers=(IDEMPOTENCY_KEY,),
              description="Retrying with the same Idempotency-Key and body returns the first "
                          "response and charges once; the same key with another body is "
                          "refused (422). An invoice is issued with the payment."),
    Operation("GET", "/payments", my_payments, "My payments", "payments",
              response=PaymentList),
    Operation("GET", "/payments/{payment_id}/invoice", get_invoice, "A payment's invoice",
              "payments", response=Invoice, errors=(404,)),
    Operation("POST", "/payments/{payment_id}/refund", refund_payment,
              "Refund a payment (admins)", "payments", roles=_ADMINS, body=RefundCreate,
              response=Payment, errors=(403, 404, 409),
              description="Pays the payment back and cancels its enrollment; its invoice "
                          "keeps its amounts and records the refund (`refunded_at`, "
                          "`refunded_cents`). Refunding again answers the refunded payment "
                          "and changes nothing. Refused (409) for a payment not captured, "
                          "or once the course's certificate was issued."),
    Operation("POST", "/courses/{course_id}/coupons", create_coupon, "Create a coupon",
              "payments", roles=_TEACHERS, body=CouponCreate, response=Coupon, status=201,
              errors=(403, 404, 409)),
    Operation("GET", "/courses/{course_id}/price", course_price,
              "A course's price, with a coupon applied", "payments", roles=None,
              query=PriceQuery, response=Price, errors=(404,)),
    Operation("GET", "/analytics/revenue", revenue, "Revenue per region and day (admins)",
              "analytics", roles=_ADMINS, query=PeriodQuery, response=RevenueReport,
              errors=(403,)),
    Operation("GET", "/analytics/enrollments", enrollment_stats,
              "Enrollments, completions and cancellations per region and day (admins)",
              "analytics", roles=_ADMINS, query=PeriodQuery, response=EnrollmentsReport,
              errors=(403,)),
    Operation("GET", "/analytics/top-courses", top_courses,
              "The most enrolled courses of every region (admins)", "analytics",
              roles=_ADMINS, query=TopCoursesQuery, response=TopCourses, errors=(403,)),
]
