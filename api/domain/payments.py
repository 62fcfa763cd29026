"""Payments, invoices and coupons.

Paying is idempotent twice over: the router stores the first reply of a write sent with an
idempotency key (PROTOCOL.md; a retry gets that reply, a different request under the same key
is refused), and process_payment itself never charges an enrollment twice. The key a client
sends is scoped to its user, so two users' keys never meet; a user's payments all live on
their home shard, where the router's keys are kept."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from api.domain.data import Data
from api.domain.enrollments import Enrollments, release_remote_seat
from api.errors import Conflict, Forbidden, InvalidInput, NotFound
from api.models import (
    Coupon,
    CouponCreate,
    Invoice,
    Payment,
    PaymentCreate,
    PaymentList,
    Price,
    RefundCreate,
)
from api.types import Principal

__all__ = ["Payments"]

_PAYMENT_COLUMNS = ("p.payment_id, p.enrollment_id, p.amount_cents, p.currency, p.status, "
                    "i.invoice_id, p.created_at")
_INVOICE_COLUMNS = ("i.invoice_id, i.payment_id, i.invoice_number, i.billing_name, "
                    "i.billing_country, i.subtotal_cents, i.tax_cents, i.currency, i.issued_at, "
                    "i.refunded_at, i.refunded_cents")


class Payments:
    def __init__(self, data: Data, enrollments: Enrollments) -> None:
        self._data = data
        self._enrollments = enrollments

    async def pay(self, body: PaymentCreate, idempotency_key: str, *, by: Principal) -> Payment:
        enrollment = await self._enrollments.owned(body.enrollment_id, by)
        if enrollment["user_id"] != by.user_id:
            raise Forbidden("only the enrolled student pays for an enrollment")
        key = f"pay:{by.user_id}:{idempotency_key}"
        rows = await self._data.write(
            "SELECT payment_id FROM process_payment($1, $2, $3)",
            body.enrollment_id, key, body.coupon_code, idempotency_key=key)
        payment_id = rows[0]["payment_id"]
        await self._data.write("SELECT issue_invoice($1, 0)", payment_id)
        return await self._payment(payment_id)

    async def refund(self, payment_id: uuid.UUID, body: RefundCreate, *,
                     by: Principal) -> Payment:
        """An admin refunds a captured payment: its enrollment is cancelled and its invoice
        records the refund (sql/021). Idempotent: a refunded payment refunded again changes
        nothing (the first reason stays) and is answered the same. Refused (409) for a
        payment not captured, or whose course's certificate was issued. A remote
        enrollment's seat is given back on its course's shard in the same transaction
        (README, "Enrolling across regions"): both commit or neither."""
        if not by.is_admin:
            raise Forbidden("only an admin refunds a payment")
        found = await self._data.row_by_id(
            "SELECT e.enrollment_id, e.course_id, e.course_lesson_ids IS NOT NULL AS remote "
            "FROM payments p JOIN enrollments e ON e.enrollment_id = p.enrollment_id "
            "WHERE p.payment_id = $1", payment_id)
        if found is None:
            raise NotFound("no such payment")
        if found["remote"]:
            async with self._data.transaction() as tx:
                await release_remote_seat(tx, found["course_id"], found["enrollment_id"])
                await tx.value("SELECT refund_payment($1, $2, true)", payment_id, body.reason)
        else:
            await self._data.write("SELECT refund_payment($1, $2)", payment_id, body.reason)
        return await self._payment(payment_id)

    async def _payment(self, payment_id: uuid.UUID) -> Payment:
        found = await self._data.row_by_id(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments p "
            "LEFT JOIN invoices i ON i.payment_id = p.payment_id WHERE p.payment_id = $1",
            payment_id)
        if found is None:
            raise NotFound("no such payment")
        return Payment.model_validate(found)

    async def mine(self, *, by: Principal) -> PaymentList:
        rows = await self._data.rows(
            f"SELECT {_PAYMENT_COLUMNS} FROM enrollments e "
            "JOIN payments p ON p.enrollment_id = e.enrollment_id "
            "LEFT JOIN invoices i ON i.payment_id = p.payment_id "
            "WHERE e.user_id = $1 ORDER BY p.created_at DESC, p.payment_id", by.user_id)
        return PaymentList(items=[Payment.model_validate(r) for r in rows])

    async def invoice(self, payment_id: uuid.UUID, *, by: Principal) -> Invoice:
        found = await self._data.row_by_id(
            f"SELECT {_INVOICE_COLUMNS}, e.user_id FROM invoices i "
            "JOIN payments p ON p.payment_id = i.payment_id "
            "JOIN enrollments e ON e.enrollment_id = p.enrollment_id "
            "WHERE i.payment_id = $1", payment_id)
        if found is None or (found["user_id"] != by.user_id and not by.is_admin):
            raise NotFound("no invoice for this payment")
        return Invoice.model_validate(found)

    async def create_coupon(self, course_id: uuid.UUID, body: CouponCreate, *,
                            by: Principal) -> Coupon:
        if (body.percent_off is None) == (body.amount_off_cents is None):
            raise InvalidInput("give exactly one of percent_off and amount_off_cents")
        course = await self._data.row_by_id(
            "SELECT instructor_id FROM courses WHERE course_id = $1", course_id)
        if course is None:
            raise NotFound("no such course")
        if course["instructor_id"] != by.user_id and not by.is_admin:
            raise Forbidden("only the course's instructor or an admin makes its coupons")
        if body.valid_until is not None and body.valid_until <= dt.datetime.now(dt.UTC):
            raise InvalidInput("valid_until is in the past")
        rows = await self._data.write(
            "INSERT INTO coupons (course_id, code, percent_off, amount_off_cents, "
            "max_redemptions, valid_until) VALUES ($1, $2, $3, $4, $5, $6) "
            "RETURNING coupon_id, course_id, code, percent_off, amount_off_cents, "
            "max_redemptions, valid_until",
            course_id, body.code, body.percent_off, body.amount_off_cents,
            body.max_redemptions, body.valid_until)
        if not rows:
            raise Conflict("the coupon was not created")
        return Coupon.model_validate(rows[0])

    async def price(self, course_id: uuid.UUID, coupon_code: str | None) -> Price:
        course = await self._data.row_by_id(
            "SELECT price_cents, currency FROM courses WHERE course_id = $1 "
            "AND status = 'published'", course_id)
        if course is None:
            raise NotFound("no such course")
        quote: dict[str, Any] = {"discount_cents": 0, "final_price_cents": course["price_cents"]}
        if coupon_code is not None:
            found = await self._data.row(
                "SELECT discount_cents, final_price_cents FROM apply_coupon($1, $2)",
                course_id, coupon_code)
            assert found is not None
            quote = found
        return Price(course_id=course_id, price_cents=course["price_cents"],
                     currency=course["currency"], coupon_code=coupon_code, **quote)
