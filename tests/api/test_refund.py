"""An admin refunds a payment (POST /payments/{payment_id}/refund), on the real stack: the
payment is refunded, its enrollment cancelled, its invoice keeps its amounts and records the
refund; refunding again changes nothing; a student or instructor is refused (403), an unknown
payment is 404, and a payment whose certificate was issued is refused (409)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from api.domain import Domain
from tests.api.conftest import Person, build_course, make_admin, signup


async def paid_enrollment(http: httpx.AsyncClient, teacher: Person, category_id: str,
                          lessons: int = 1) -> tuple[Person, str, dict[str, Any], list[str]]:
    course = await build_course(http, teacher, category_id, title="Refundable course",
                                price_cents=2500, lessons=lessons)
    student = await signup(http)
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    assert r.status_code == 201, r.text
    eid = r.json()["enrollment_id"]
    r = await http.post("/payments", json={"enrollment_id": eid},
                        headers=student.headers | {"Idempotency-Key": f"refund-{uuid.uuid4()}"})
    assert r.status_code == 201, r.text
    return student, eid, r.json(), course.lessons


async def test_an_admin_refunds_once_and_the_invoice_says_so(
        http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    teacher = await signup(http, role="instructor")
    admin = await make_admin(http, domain)
    student, eid, payment, _ = await paid_enrollment(http, teacher, category_id)
    pid = payment["payment_id"]
    url = f"/payments/{pid}/refund"
    invoice_before = (await http.get(f"/payments/{pid}/invoice", headers=student.headers)).json()
    assert invoice_before["refunded_at"] is None and invoice_before["refunded_cents"] is None

    for who in (student, teacher):  # only admins
        r = await http.post(url, headers=who.headers, json={"reason": "asked nicely"})
        assert r.status_code == 403, r.text

    r = await http.post(url, headers=admin.headers, json={"reason": "bought twice"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "refunded"
    invoice = (await http.get(f"/payments/{pid}/invoice", headers=student.headers)).json()
    assert invoice["refunded_cents"] == payment["amount_cents"] == 2500
    assert invoice["refunded_at"] is not None
    assert {k: invoice[k] for k in ("invoice_number", "subtotal_cents", "tax_cents")} == {
        k: invoice_before[k] for k in ("invoice_number", "subtotal_cents", "tax_cents")}
    enrollment = (await http.get(f"/enrollments/{eid}", headers=student.headers)).json()
    assert enrollment["status"] == "cancelled"

    again = await http.post(url, headers=admin.headers, json={"reason": "another reason"})
    assert again.status_code == 200, again.text
    assert again.json() == r.json()  # the same refunded payment, nothing changed
    invoice_again = (await http.get(f"/payments/{pid}/invoice", headers=student.headers)).json()
    assert invoice_again == invoice
    reason = await domain.data.db.fetchval(
        "SELECT refund_reason FROM payments WHERE payment_id = $1", uuid.UUID(pid))
    assert reason == "bought twice"  # the first refund's


async def test_refusals_unknown_payment_and_a_certificate_issued(
        http: httpx.AsyncClient, domain: Domain, category_id: str) -> None:
    teacher = await signup(http, role="instructor")
    admin = await make_admin(http, domain)
    student, eid, payment, lessons = await paid_enrollment(http, teacher, category_id)
    # An id of the right shape and shard that names no payment.
    other = await domain.data.db.fetchval("SELECT georoute_id()", shard="europe")
    r = await http.post(f"/payments/{other}/refund", headers=admin.headers,
                        json={"reason": "no such payment"})
    assert r.status_code == 404, r.text
    r = await http.post(f"/payments/{payment['payment_id']}/refund", headers=admin.headers,
                        json={"reason": ""})
    assert r.status_code == 422, r.text  # a reason is required
    for lesson in lessons:
        r = await http.post(f"/enrollments/{eid}/lessons/{lesson}/complete",
                            headers=student.headers, json={})
        assert r.status_code == 200, r.text
    r = await http.post(f"/enrollments/{eid}/certificate", headers=student.headers)
    assert r.status_code == 201, r.text
    r = await http.post(f"/payments/{payment['payment_id']}/refund", headers=admin.headers,
                        json={"reason": "too late"})
    assert r.status_code == 409, r.text
    assert "certificate" in r.json()["detail"]
