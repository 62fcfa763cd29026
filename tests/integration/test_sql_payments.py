"""Money: process_payment's idempotency, apply_coupon, issue_invoice and its numbering
trigger, refund_payment, revenue_report."""

from __future__ import annotations

import asyncio
import re
import uuid

from router.config import Config
from router.tools.db.connect import connect_node
from tests.integration.conftest import Catalogue, sql_error, unique
from tests.support.present import present


async def test_replayed_key_returns_the_same_payment_and_never_charges_twice(
    catalogue: Catalogue,
) -> None:
    conn = catalogue.conn
    course = await catalogue.course(price_cents=2500)
    _, enrollment = await catalogue.enrolled(course)
    key = unique("idem-")
    first = await conn.fetchrow("SELECT * FROM process_payment($1, $2)", enrollment, key)
    assert first is not None
    assert (first["amount_cents"], first["status"], first["replayed"]) == (2500, "succeeded",
                                                                          False)
    again = await conn.fetchrow("SELECT * FROM process_payment($1, $2)", enrollment, key)
    assert again is not None
    assert again["payment_id"] == first["payment_id"] and again["replayed"] is True
    assert await conn.fetchval(
        "SELECT count(*) FROM payments WHERE enrollment_id = $1", enrollment) == 1
    assert await conn.fetchval(
        "SELECT status FROM enrollments WHERE enrollment_id = $1", enrollment) == "active"
    with sql_error("GR013", "already paid"):  # a new key cannot charge a paid enrollment
        await conn.fetchrow("SELECT * FROM process_payment($1, $2)", enrollment, unique("k2-"))
    _, other = await catalogue.enrolled(course)
    with sql_error("GR004", "already used for another enrollment"):
        await conn.fetchrow("SELECT * FROM process_payment($1, $2)", other, key)
    free = await catalogue.course()
    _, free_enrollment = await catalogue.enrolled(free)
    with sql_error("GR012", "does not await payment"):
        await conn.fetchrow("SELECT * FROM process_payment($1, $2)", free_enrollment,
                            unique("k3-"))


async def test_concurrent_replays_charge_once(catalogue: Catalogue, migrated: Config) -> None:
    course = await catalogue.course(price_cents=990)
    _, enrollment = await catalogue.enrolled(course)
    key = unique("race-")
    conns = [await connect_node(migrated, migrated.shards["europe"].primary) for _ in range(4)]
    try:
        rows = [present(r) for r in await asyncio.gather(*(
            c.fetchrow("SELECT * FROM process_payment($1, $2)", enrollment, key) for c in conns))]
    finally:
        for c in conns:
            await c.close()
    assert len({r["payment_id"] for r in rows}) == 1
    assert sorted(r["replayed"] for r in rows) == [False, True, True, True]
    assert await catalogue.conn.fetchval(
        "SELECT count(*) FROM payments WHERE enrollment_id = $1", enrollment) == 1


async def test_coupons(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course(price_cents=2000)
    code = unique("SAVE").upper()
    await conn.execute(
        "INSERT INTO coupons (course_id, code, percent_off, max_redemptions) "
        "VALUES ($1, $2, 25, 1)", course.course_id, code)
    priced = await conn.fetchrow("SELECT * FROM apply_coupon($1, $2)", course.course_id,
                                 code.lower())
    assert priced is not None
    assert (priced["discount_cents"], priced["final_price_cents"]) == (500, 1500)
    _, enrollment = await catalogue.enrolled(course)
    paid = await conn.fetchrow("SELECT * FROM process_payment($1, $2, $3)", enrollment,
                               unique("cpn-"), code)
    assert paid is not None
    assert paid["amount_cents"] == 1500
    with sql_error("GR005", "fully redeemed (1 of 1)"):
        await conn.fetchrow("SELECT * FROM apply_coupon($1, $2)", course.course_id, code)
    other = await catalogue.course(price_cents=100)
    with sql_error("GR005", "not valid for course"):
        await conn.fetchrow("SELECT * FROM apply_coupon($1, $2)", other.course_id, code)
    with sql_error("GR005", "does not exist"):
        await conn.fetchrow("SELECT * FROM apply_coupon($1, 'NOPE-NOPE')", course.course_id)
    expired = unique("OLD")
    await conn.execute(
        "INSERT INTO coupons (code, amount_off_cents, valid_from, valid_until) "
        "VALUES ($1, 100, now() - interval '2 days', now() - interval '1 day')", expired)
    with sql_error("GR005", "not valid at this time"):
        await conn.fetchrow("SELECT * FROM apply_coupon($1, $2)", course.course_id, expired)


async def paid_enrollment(catalogue: Catalogue, price: int = 1200
                          ) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    course = await catalogue.course(price_cents=price, lessons=1)
    _, enrollment = await catalogue.enrolled(course)
    payment = await catalogue.conn.fetchval(
        "SELECT payment_id FROM process_payment($1, $2)", enrollment, unique("pay-"))
    return enrollment, payment, course.lessons


async def test_invoices_are_numbered_and_immutable(catalogue: Catalogue,
                                                    migrated: Config) -> None:
    conn = catalogue.conn
    _, p1, _ = await paid_enrollment(catalogue, 1200)
    _, p2, _ = await paid_enrollment(catalogue, 1200)
    i1 = await conn.fetchval("SELECT issue_invoice($1, 0.2)", p1)
    assert await conn.fetchval("SELECT issue_invoice($1, 0.2)", p1) == i1  # idempotent
    i2 = await conn.fetchval("SELECT issue_invoice($1, 0.2)", p2)
    rows = {r["invoice_id"]: r for r in await conn.fetch(
        "SELECT * FROM invoices WHERE invoice_id = ANY($1)", [i1, i2])}
    number = migrated.shards["europe"].number
    pattern = re.compile(rf"^INV-{number}-\d{{4}}-(\d{{8}})$")
    seq = [int(pattern.match(rows[i]["invoice_number"]).group(1)) for i in (i1, i2)]  # type: ignore[union-attr]
    assert seq[1] > seq[0]
    assert (rows[i1]["subtotal_cents"], rows[i1]["tax_cents"]) == (1000, 200)
    with sql_error("GR011", "cannot be updated"):
        await conn.execute("UPDATE invoices SET tax_cents = 0 WHERE invoice_id = $1", i1)
    with sql_error("GR011", "cannot be deleted"):
        await conn.execute("DELETE FROM invoices WHERE invoice_id = $1", i1)
    with sql_error("22023", "tax rate"):
        await conn.fetchval("SELECT issue_invoice($1, 1.5)", p2)


async def test_refunds(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    enrollment, payment, _ = await paid_enrollment(catalogue)
    course_id = await conn.fetchval(
        "SELECT course_id FROM enrollments WHERE enrollment_id = $1", enrollment)
    count = "SELECT enrollment_count FROM courses WHERE course_id = $1"
    assert await conn.fetchval(count, course_id) == 1
    # A paid enrollment is refunded, not cancelled (sql/026): the money would be kept.
    with sql_error("GR017", "refund the payment"):
        await conn.execute("SELECT cancel_enrollment($1)", enrollment)
    assert await conn.fetchval(
        "SELECT status FROM enrollments WHERE enrollment_id = $1", enrollment) == "active"
    assert await conn.fetchval("SELECT refund_payment($1, 'changed my mind')", payment) == (
        "refunded")
    assert await conn.fetchval("SELECT refund_payment($1, 'again')", payment) == "refunded"
    assert await conn.fetchval(
        "SELECT status FROM enrollments WHERE enrollment_id = $1", enrollment) == "cancelled"
    assert await conn.fetchval(count, course_id) == 0
    await conn.execute("SELECT cancel_enrollment($1)", enrollment)  # cancelled: unchanged
    with sql_error("GR011", "only captured payments"):
        await conn.fetchval("SELECT issue_invoice($1)", payment)
    # A finished course with a certificate cannot be refunded.
    done, paid, lessons = await paid_enrollment(catalogue)
    await conn.fetchval("SELECT complete_lesson($1, $2)", done, lessons[0])
    await conn.fetchval("SELECT issue_certificate($1)", done)
    with sql_error("GR008", "a certificate was issued"):
        await conn.fetchval("SELECT refund_payment($1, 'too late')", paid)
    report = await conn.fetch(
        "SELECT * FROM revenue_report(now() - interval '1 hour', now() + interval '1 hour') "
        "WHERE course_id = $1", course_id)
    assert [(r["payments"], r["gross_cents"], r["refunded_cents"], r["net_cents"])
            for r in report] == [(1, 1200, 1200, 0)]
    stats = await conn.fetchrow("SELECT * FROM course_statistics($1)", course_id)
    assert stats is not None
    assert (stats["gross_cents"], stats["refunded_cents"]) == (1200, 1200)
    audit = [r["action"] for r in await conn.fetch(
        "SELECT action FROM audit_log WHERE entity_id = $1 ORDER BY occurred_at", payment)]
    assert audit == ["payments.insert", "payments.update"]
