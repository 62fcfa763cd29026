"""Deterministic generation of one shard's seed rows (pure: no I/O).

Everything derives from (seed, shard name): the same inputs give byte-identical rows, ids
included. Ids follow the georoute layout (router.core.ids.new_id) with their row's creation time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from faker import Faker

from router.core.ids import new_id

__all__ = ["BASE_TIME", "CATEGORIES", "TABLE_COLUMNS", "ShardData", "generate_shard", "split_users"]

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
# The seed's flavour of the three regions of router.toml as shipped. A shard of another name
# gets the average share of users and the _OTHER locales, currency, languages and tax.
_SHARE = {"north_america": 0.40, "europe": 0.35, "asia": 0.25}
_LOCALES = {
    "north_america": ["en_US", "en_US", "en_CA", "es_MX"],
    "europe": ["en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pl_PL"],
    "asia": ["ja_JP", "en_IN", "ko_KR", "zh_CN", "id_ID"],
}
_CURRENCY = {"north_america": "USD", "europe": "EUR", "asia": "USD"}
_LANGUAGES = {"north_america": ["en", "en", "en", "es", "fr"],
              "europe": ["en", "en", "de", "fr", "es", "it", "pl"],
              "asia": ["en", "en", "ja", "ko", "zh", "hi"]}
_TAX_RATE = {"north_america": 0.0, "europe": 0.2, "asia": 0.1}
_OTHER_LOCALES, _OTHER_CURRENCY, _OTHER_LANGUAGES, _OTHER_TAX_RATE = ["en_US"], "USD", ["en"], 0.0
# (slug, name, parent slug, topics used in course titles)
CATEGORIES: list[tuple[str, str, str | None, list[str]]] = [
    ("programming", "Programming", None, ["Software Craftsmanship", "Algorithms", "Git"]),
    ("python", "Python", "programming", ["Python", "asyncio", "Django", "Type Hints"]),
    ("web-development", "Web Development", "programming", ["CSS", "React", "HTTP APIs"]),
    ("databases", "Databases", "programming", ["PostgreSQL", "SQL", "Data Modelling"]),
    ("data-science", "Data Science", None, ["Statistics", "pandas", "Data Visualisation"]),
    ("machine-learning", "Machine Learning", "data-science", ["Neural Networks", "NLP"]),
    ("business", "Business", None, ["Accounting", "Marketing", "Negotiation"]),
    ("design", "Design", None, ["Typography", "UX Research", "Figma"]),
    ("languages", "Languages", None, ["Spanish", "Japanese", "German", "English Grammar"]),
    ("mathematics", "Mathematics", None, ["Linear Algebra", "Calculus", "Probability"]),
]
_TITLE_FORMS = ["{} for Beginners", "Practical {}", "Mastering {}", "{} in Depth",
                "{}: The Complete Guide", "Advanced {}", "{} Bootcamp", "Hands-on {}"]
_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "Mozilla/5.0 (Macintosh) Safari/18",
           "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0", "georoute-mobile/2.4 (Android 15)"]

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "categories": ("category_id", "parent_id", "slug", "name"),
    "users": ("user_id", "email", "full_name", "role", "home_region", "country", "city",
              "is_active", "deactivated_at", "created_at", "updated_at"),
    "user_credentials": ("user_id", "password_hash", "hash_algorithm", "failed_attempts",
                         "locked_until", "updated_at"),
    "user_sessions": ("session_id", "user_id", "token_hash", "ip_address", "user_agent",
                      "created_at", "expires_at", "revoked_at"),
    "courses": ("course_id", "instructor_id", "category_id", "region", "slug", "title",
                "description", "language", "level", "price_cents", "currency", "capacity",
                "status", "published_at", "enrollment_count", "rating_avg", "review_count",
                "created_at", "updated_at"),
    "course_modules": ("module_id", "course_id", "position", "title", "created_at", "updated_at"),
    "lessons": ("lesson_id", "module_id", "position", "title", "duration_seconds", "is_preview",
                "created_at", "updated_at"),
    "coupons": ("coupon_id", "course_id", "code", "percent_off", "amount_off_cents",
                "max_redemptions", "valid_from", "valid_until", "created_at"),
    "enrollments": ("enrollment_id", "user_id", "course_id", "status", "progress_pct",
                    "enrolled_at", "completed_at", "cancelled_at", "updated_at"),
    "lesson_progress": ("progress_id", "enrollment_id", "lesson_id", "status", "seconds_spent",
                        "started_at", "completed_at", "updated_at"),
    "payments": ("payment_id", "enrollment_id", "coupon_id", "idempotency_key", "amount_cents",
                 "currency", "status", "provider_ref", "refund_reason", "created_at",
                 "refunded_at"),
    "invoices": ("invoice_id", "payment_id", "invoice_number", "billing_name", "billing_country",
                 "subtotal_cents", "tax_cents", "currency", "issued_at"),
    "reviews": ("review_id", "user_id", "course_id", "rating", "body", "created_at",
                "updated_at"),
    "certificates": ("certificate_id", "enrollment_id", "serial_number", "issued_at"),
}


@dataclass(slots=True)
class ShardData:
    region: str
    number: int
    rows: dict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: {t: [] for t in TABLE_COLUMNS})
    course_content: list[dict[str, Any]] = field(default_factory=list)
    user_preferences: list[dict[str, Any]] = field(default_factory=list)
    invoice_sequence: int = 0


def split_users(total: int, regions: list[str]) -> dict[str, int]:
    """How many of `total` users live in each region (deterministic, remainder to the last):
    by _SHARE, scaled to the regions configured; a region without a share gets the average."""
    known = [_SHARE[r] for r in regions if r in _SHARE]
    average = math.fsum(known) / len(known) if known else 1.0
    shares = {r: _SHARE.get(r, average) for r in regions}
    scale = math.fsum(shares.values())  # 1.0 exactly for the three of router.toml
    counts = {r: int(total * shares[r] / scale) for r in regions}
    counts[regions[-1]] += total - sum(counts.values())
    return counts


def category_id(slug: str) -> UUID:
    """Reference rows get the same id on every shard (shard byte 0: not a shard's own id)."""
    return new_id(0, now_ms=_ms(BASE_TIME), rand=hashlib.sha256(slug.encode()).digest()[:9])


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


class _Gen:
    def __init__(self, seed: int, region: str, number: int) -> None:
        self.rng = random.Random(f"georoute-seed:{seed}:{region}")
        self.region = region
        self.number = number
        self.fakers = []
        for locale in _LOCALES.get(region, _OTHER_LOCALES):
            fake = Faker(locale)
            fake.seed_instance(self.rng.getrandbits(32))
            self.fakers.append((locale, fake))
        self.text = Faker("en_US")
        self.text.seed_instance(self.rng.getrandbits(32))

    def id(self, at: datetime) -> UUID:
        return new_id(self.number, now_ms=_ms(at), rand=self.rng.randbytes(9))

    def after(self, t: datetime, max_days: float, min_minutes: float = 1) -> datetime:
        seconds = self.rng.uniform(min_minutes * 60, max(max_days * 86400, min_minutes * 60))
        return (t + timedelta(seconds=seconds)).replace(microsecond=0)


def generate_shard(seed: int, region: str, number: int, n_users: int) -> ShardData:
    g = _Gen(seed, region, number)
    rng = g.rng
    data = ShardData(region, number)
    rows = data.rows
    for slug, name, parent, _ in CATEGORIES:
        rows["categories"].append(
            (category_id(slug), category_id(parent) if parent else None, slug, name))

    # ---- users, credentials, sessions, preferences
    n_instructors = max(2, n_users // 20)
    users: list[tuple[Any, ...]] = []
    for i in range(n_users):
        locale, fake = g.fakers[rng.randrange(len(g.fakers))]
        role = "admin" if i == 0 else "instructor" if i <= n_instructors else "student"
        created = g.after(BASE_TIME, 240)
        name = fake.name()
        local = _slug(name).replace("-", ".") or "learner"
        email = f"{local}.{i}.{number}@{rng.choice(['example.com', 'example.org', 'mail.test'])}"
        active = rng.random() > 0.02
        deactivated = None if active else g.after(created, 60)
        uid = g.id(created)
        row = (uid, email, name, role, region, locale[-2:], fake.city(), active, deactivated,
               created, deactivated or created)
        users.append(row)
        rows["users"].append(row)
        rows["user_credentials"].append(
            (uid, f"$argon2id$v=19$m=65536,t=3,p=4${rng.randbytes(16).hex()}$"
                  f"{rng.randbytes(32).hex()}", "argon2id", 0, None, created))
        if rng.random() < 0.5:
            started = g.after(created, 200)
            rows["user_sessions"].append(
                (g.id(started), uid, rng.randbytes(32).hex(),
                 ipaddress.ip_address(0x0A000000 | rng.getrandbits(24)),
                 rng.choice(_AGENTS), started, started + timedelta(days=7),
                 deactivated if deactivated and deactivated > started else None))
        data.user_preferences.append({
            "_id": str(uid), "user_id": str(uid), "region": region,
            "language": locale[:2], "timezone": fake.timezone(),
            "theme": rng.choice(["light", "dark", "system"]),
            "notifications": {"email": rng.random() < 0.8, "push": rng.random() < 0.5,
                              "weekly_digest": rng.random() < 0.3},
            "interests": rng.sample([c[0] for c in CATEGORIES], rng.randint(0, 3)),
            "updated_at": created,
        })

    # ---- courses, modules, lessons, coupons, content documents
    instructors = [u for u in users if u[3] == "instructor"]
    courses: list[tuple[Any, ...]] = []
    course: tuple[Any, ...]
    course_lessons: dict[UUID, list[UUID]] = {}
    for _ in range(max(3, n_users // 15)):
        instructor = rng.choice(instructors)
        slug_c, _, _, topics = rng.choice(CATEGORIES)
        title = rng.choice(_TITLE_FORMS).format(rng.choice(topics))
        created = g.after(instructor[9], 60)
        cid = g.id(created)
        status = rng.choices(["published", "draft", "archived"], [85, 10, 5])[0]
        published = None if status == "draft" else g.after(created, 14)
        price = 0 if rng.random() < 0.2 else rng.choice([1999, 2999, 4999, 9999, 14999])
        capacity = rng.choice([None, None, None, 50, 200])
        course = (cid, instructor[0], category_id(slug_c), region,
                  f"{_slug(title)}-{cid.hex[-8:]}", title, g.text.paragraph(nb_sentences=3),
                  rng.choice(_LANGUAGES.get(region, _OTHER_LANGUAGES)),
                  rng.choice(["beginner", "intermediate", "advanced"]), price,
                  _CURRENCY.get(region, _OTHER_CURRENCY), capacity, status, published, 0, None,
                  0, created, published or created)
        courses.append(course)
        rows["courses"].append(course)
        lesson_ids: list[UUID] = []
        for m in range(1, rng.randint(2, 5) + 1):
            mid = g.id(created)
            rows["course_modules"].append(
                (mid, cid, m, f"Part {m}: {g.text.catch_phrase()}", created, created))
            for n in range(1, rng.randint(2, 6) + 1):
                lid = g.id(created)
                duration = rng.randint(2, 30) * 60
                lesson_title = g.text.sentence(nb_words=5).rstrip(".")
                rows["lessons"].append(
                    (lid, mid, n, lesson_title, duration, m == 1 and n == 1, created, created))
                lesson_ids.append(lid)
                fmt = rng.choices(["video", "article", "quiz"], [60, 30, 10])[0]
                doc: dict[str, Any] = {
                    "_id": str(lid), "lesson_id": str(lid), "course_id": str(cid),
                    "region": region, "format": fmt, "title": lesson_title,
                    "body": "\n\n".join(g.text.paragraphs(nb=2)),
                    "video_url": f"https://cdn.example.com/{region}/{lid}.mp4"
                    if fmt == "video" else None,
                    "duration_seconds": duration,
                    "attachments": [{"name": "slides.pdf",
                                     "url": f"https://cdn.example.com/{region}/{lid}/slides.pdf"}]
                    if rng.random() < 0.3 else [],
                    "updated_at": created,
                }
                if fmt == "quiz":
                    doc["quiz"] = [{"question": g.text.sentence() + "?",
                                    "choices": [g.text.word() for _ in range(4)],
                                    "answer": rng.randrange(4)} for _ in range(3)]
                data.course_content.append(doc)
        course_lessons[cid] = lesson_ids
    published_courses = [c for c in courses if c[12] == "published"]
    welcome = g.id(BASE_TIME)
    rows["coupons"].append((welcome, None, "WELCOME10", 10, None, None, BASE_TIME,
                            BASE_TIME + timedelta(days=730), BASE_TIME))
    coupon_for: dict[UUID, tuple[UUID, int | None, int | None]] = {}
    for course in published_courses[: max(1, len(published_courses) // 10)]:
        if course[9] == 0:
            continue
        launched: datetime = course[13]
        kid = g.id(launched)
        code = f"LAUNCH-{course[0].hex[-6:].upper()}"
        rows["coupons"].append((kid, course[0], code, None, 500, None, launched,
                                launched + timedelta(days=365), launched))
        coupon_for[course[0]] = (kid, None, 500)

    # ---- enrollments, progress, payments, invoices, reviews, certificates
    _enroll_all(g, data, users, published_courses, course_lessons, coupon_for, welcome)
    return data


def _enroll_all(g: _Gen, data: ShardData, users: list[tuple[Any, ...]],
                courses: list[tuple[Any, ...]], course_lessons: dict[UUID, list[UUID]],
                coupon_for: dict[UUID, tuple[UUID, int | None, int | None]],
                welcome: UUID) -> None:
    rng, rows = g.rng, data.rows
    taken: dict[UUID, int] = {}
    payments: list[tuple[Any, ...]] = []
    billing: dict[UUID, tuple[str, str]] = {}
    for user in users:
        if user[3] != "student" or not courses:
            continue
        wanted = rng.choices([0, 1, 2, 3, 4], [15, 35, 25, 15, 10])[0]
        for course in rng.sample(courses, min(wanted, len(courses))):
            cid, capacity = course[0], course[11]
            if capacity is not None and taken.get(cid, 0) >= capacity:
                continue
            enrolled = g.after(max(user[9], course[13]), 90)
            eid = g.id(enrolled)
            paid = course[9] > 0
            fate = rng.random()
            status, completed, cancelled = "active", None, None
            if paid and fate < 0.08:
                status = "pending_payment"
            elif paid and fate < 0.13:
                status, cancelled = "cancelled", g.after(enrolled, 10)
            if status != "cancelled":
                taken[cid] = taken.get(cid, 0) + 1
            lessons = course_lessons[cid]
            done = 0
            if status == "active":
                done = len(lessons) if rng.random() < 0.3 else rng.randint(0, len(lessons))
            at = enrolled
            for lid in lessons[:done]:
                started = g.after(at, 3)
                at = g.after(started, 0.05)
                rows["lesson_progress"].append((g.id(started), eid, lid, "completed",
                                                rng.randint(60, 3600), started, at, at))
            if done and done == len(lessons):
                status, completed = "completed", at
            elif status == "active" and done < len(lessons) and rng.random() < 0.5:
                started = g.after(at, 3)
                rows["lesson_progress"].append((g.id(started), eid, lessons[done], "started",
                                                rng.randint(10, 600), started, None, started))
            rows["enrollments"].append((eid, user[0], cid, status, 0, enrolled, completed,
                                        cancelled, completed or cancelled or enrolled))
            if paid and status != "pending_payment":
                coupon, amount = None, course[9]
                if cid in coupon_for and rng.random() < 0.3:
                    coupon, amount = coupon_for[cid][0], max(0, amount - 500)
                elif rng.random() < 0.1:
                    coupon, amount = welcome, amount - round(amount * 0.1)
                paid_at = g.after(enrolled, 0.01, min_minutes=0.1)
                pid = g.id(paid_at)
                refunded = status == "cancelled"
                payments.append((pid, eid, coupon, f"seed-{eid}", amount, course[10],
                                 "refunded" if refunded else "succeeded",
                                 f"ch_{rng.randbytes(12).hex()}",
                                 "requested by learner" if refunded else None, paid_at,
                                 cancelled if refunded else None))
                billing[pid] = (user[2], user[5])
            if status in ("active", "completed") and done and rng.random() < 0.35:
                reviewed = g.after(at, 5)
                rows["reviews"].append((g.id(reviewed), user[0], cid,
                                        rng.choices([1, 2, 3, 4, 5], [3, 5, 12, 35, 45])[0],
                                        g.text.sentence(nb_words=12), reviewed, reviewed))
            if completed is not None:
                issued = completed + timedelta(hours=1)
                hexid = eid.hex.upper()
                rows["certificates"].append(
                    (g.id(issued), eid, f"CERT-{hexid[:8]}-{hexid[-12:]}", issued))
    payments.sort(key=lambda p: (p[9], p[0]))
    rows["payments"] = payments
    rate = _TAX_RATE.get(data.region, _OTHER_TAX_RATE)
    for p in payments:
        data.invoice_sequence += 1
        subtotal = round(p[4] / (1 + rate))
        name, country = billing[p[0]]
        number = f"INV-{data.number}-{p[9]:%Y}-{data.invoice_sequence:08d}"
        rows["invoices"].append((g.id(p[9]), p[0], number, name, country, subtotal,
                                 p[4] - subtotal, p[5], p[9]))
