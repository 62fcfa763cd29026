"""Moving a user between regions on the real cluster, through the router's admin request
(`client.move_user`, what `georoute user move` sends): a student of Europe with a local
course (paid with a coupon, invoiced, completed, certified, reviewed), a course of Asia's
catalogue and one of North America's, sessions and a preferences document, moves to Asia.
Afterwards their rows exist only on Asia's shard, as many as before, nothing of theirs is
left in Europe, each course still counts its enrollment and rating, the old ids resolve to
the new ones, and a second run changes nothing. A router killed mid-move: the move is
settled by another router and a second run finishes it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from router.engine.twophase import FAULT_ENV, FAULT_EXIT_CODE
from router.tools.db.connect import connect_node
from tests.integration.conftest import Catalogue, Course, wait_until
from tests.support.present import present
from tests.support.router_proc import REGIONS, TOKEN, RouterProcess, running_router
from tests.support.twophase import none_prepared, tp_config

Primaries = dict[str, asyncpg.Connection]


@pytest.fixture
async def shards(migrated: Config) -> AsyncIterator[dict[str, Catalogue]]:
    conns = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    try:
        yield {r: Catalogue(c, r) for r, c in conns.items()}
    finally:
        for conn in conns.values():
            await conn.close()


@dataclass
class Student:
    user_id: uuid.UUID
    email: str
    session_id: uuid.UUID
    token_hash: str
    local: Course  # Europe's
    far: Course  # Asia's
    other: Course  # North America's
    enrollments: dict[str, uuid.UUID]  # by the region of their course


async def _enroll_remote(student: Catalogue, course_shard: Catalogue, course: Course,
                         user: uuid.UUID) -> uuid.UUID:
    terms = await course_shard.conn.fetchrow("SELECT * FROM remote_course_terms($1, $2)",
                                             course.course_id, user)
    assert terms is not None
    enrollment: uuid.UUID = await student.conn.fetchval(
        "SELECT enroll_remote($1, $2, $3, $4, $5)", user, course.course_id,
        terms["price_cents"], terms["currency"], terms["lesson_ids"])
    await course_shard.conn.fetchval("SELECT hold_remote_seat($1, $2)", course.course_id,
                                     enrollment)
    return enrollment


async def _student(shards: dict[str, Catalogue], db: client.Client) -> Student:
    eu, asia, na = shards["europe"], shards["asia"], shards["north_america"]
    local = await eu.course(price_cents=1000, lessons=2)
    far = await asia.course(lessons=1)
    other = await na.course(lessons=1)
    email = f"mover-{uuid.uuid4().hex[:10]}@example.com"
    user = await eu.user(email=email, name="Marie Curie", password_hash="h" * 40)
    token_hash = uuid.uuid4().hex * 2
    session = await eu.conn.fetchrow("SELECT * FROM issue_refresh_token($1, $2, 3600)", user,
                                     token_hash)
    assert session is not None
    # Local: paid with a coupon, invoiced, completed, certified, reviewed.
    code = f"M{uuid.uuid4().hex[:8]}"
    await eu.conn.execute("INSERT INTO coupons (course_id, code, percent_off, max_redemptions) "
                          "VALUES ($1, $2, 10, 5)", local.course_id, code)
    _, local_enrollment = await eu.enrolled(local, user)
    payment = await eu.conn.fetchrow("SELECT * FROM process_payment($1, $2, $3)",
                                     local_enrollment, f"key-{uuid.uuid4().hex}", code)
    assert payment is not None
    await eu.conn.fetchval("SELECT issue_invoice($1, 0.2)", payment["payment_id"])
    for lesson in local.lessons:
        await eu.conn.fetchval("SELECT complete_lesson($1, $2, 60)", local_enrollment, lesson)
    await eu.conn.fetchval("SELECT issue_certificate($1)", local_enrollment)
    await eu.conn.fetchval("SELECT upsert_review($1, $2, 4, 'good')", user, local.course_id)
    # Asia's course: remote now, local after the move; reviewed.
    far_enrollment = await _enroll_remote(eu, asia, far, user)
    await eu.conn.fetchval("SELECT complete_lesson($1, $2)", far_enrollment, far.lessons[0])
    await eu.conn.fetchval("SELECT upsert_review($1, $2, 5, 'far')", user, far.course_id)
    await asia.conn.execute("SELECT set_remote_rating($1, $2, 5)", far.course_id,
                            far_enrollment)
    # North America's: remote before and after.
    other_enrollment = await _enroll_remote(eu, na, other, user)
    await db.docs("user_preferences").replace_one({"_id": str(user)}, {
        "_id": str(user), "user_id": str(user), "region": "europe", "language": "fr",
        "timezone": "Europe/Paris", "theme": "dark",
        "notifications": {"email": True, "push": False, "weekly_digest": True},
        "interests": ["physics"], "updated_at": dt.datetime.now(dt.UTC)}, upsert=True)
    return Student(user, email, session["session_id"], token_hash, local, far, other,
                   {"europe": local_enrollment, "asia": far_enrollment,
                    "north_america": other_enrollment})


# The user's rows, found from their id on one shard: table -> rows (as JSON, ids included).
_THEIRS = {
    "users": "SELECT to_jsonb(t) FROM users t WHERE user_id = $1",
    "user_credentials": "SELECT to_jsonb(t) FROM user_credentials t WHERE user_id = $1",
    "user_sessions": "SELECT to_jsonb(t) FROM user_sessions t WHERE user_id = $1",
    "enrollments": "SELECT to_jsonb(t) FROM enrollments t WHERE user_id = $1",
    "lesson_progress": "SELECT to_jsonb(t) FROM lesson_progress t JOIN enrollments e "
                       "USING (enrollment_id) WHERE e.user_id = $1",
    "payments": "SELECT to_jsonb(t) FROM payments t JOIN enrollments e USING (enrollment_id) "
                "WHERE e.user_id = $1",
    "invoices": "SELECT to_jsonb(t) FROM invoices t JOIN payments p USING (payment_id) "
                "JOIN enrollments e USING (enrollment_id) WHERE e.user_id = $1",
    "reviews": "SELECT to_jsonb(t) FROM reviews t WHERE user_id = $1",
    "certificates": "SELECT to_jsonb(t) FROM certificates t JOIN enrollments e "
                    "USING (enrollment_id) WHERE e.user_id = $1",
}


async def _theirs(conn: asyncpg.Connection, user: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    return {table: sorted((json.loads(r[0]) for r in await conn.fetch(sql, user)),
                          key=json.dumps)
            for table, sql in _THEIRS.items()}


def _counts(rows: dict[str, list[Any]]) -> dict[str, int]:
    return {table: len(found) for table, found in rows.items()}


async def _aggregates(shards: dict[str, Catalogue], s: Student) -> dict[str, Any]:
    out = {}
    for region, course in (("europe", s.local), ("asia", s.far), ("north_america", s.other)):
        row = await shards[region].conn.fetchrow(
            "SELECT enrollment_count, review_count, rating_avg FROM courses "
            "WHERE course_id = $1", course.course_id)
        assert row is not None
        out[region] = tuple(row)
    return out


async def _old_ids_anywhere(shards: dict[str, Catalogue], ids: list[uuid.UUID],
                            email: str) -> dict[str, int]:
    """Per shard, rows that still name one of `ids` (in any id column of the user's tables,
    of the seats courses record and of the audit trail) or, but on Asia's shard where their
    trail moved, the email (in any text of the audit trail)."""
    found = {}
    for region, shard in shards.items():
        n = 0
        for table, columns in (("users", ["user_id"]), ("user_credentials", ["user_id"]),
                               ("user_sessions", ["session_id", "user_id"]),
                               ("enrollments", ["enrollment_id", "user_id"]),
                               ("lesson_progress", ["progress_id", "enrollment_id"]),
                               ("payments", ["payment_id", "enrollment_id"]),
                               ("invoices", ["invoice_id", "payment_id"]),
                               ("reviews", ["review_id", "user_id"]),
                               ("certificates", ["certificate_id", "enrollment_id"]),
                               ("remote_enrollments", ["enrollment_id"]),
                               ("audit_log", ["actor_id", "entity_id"])):
            where = " OR ".join(f"{c} = ANY($1)" for c in columns)
            n += await shard.conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", ids)
        if region != "asia":
            n += await shard.conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE details::text LIKE '%' || $1 || '%'",
                email)
        found[region] = n
    return found


async def test_a_user_moves_with_everything_theirs_and_a_second_run_changes_nothing(
    shards: dict[str, Catalogue], db: client.Client
) -> None:
    s = await _student(shards, db)
    eu, asia = shards["europe"], shards["asia"]
    before = await _theirs(eu.conn, s.user_id)
    assert _counts(before) == {"users": 1, "user_credentials": 1, "user_sessions": 1,
                               "enrollments": 3, "lesson_progress": 3, "payments": 1,
                               "invoices": 1, "reviews": 2, "certificates": 1}
    aggregates = await _aggregates(shards, s)
    old_ids = ([s.user_id, s.session_id, *s.enrollments.values()]
               + [uuid.UUID(r[key]) for table, key in (
                   ("lesson_progress", "progress_id"), ("payments", "payment_id"),
                   ("invoices", "invoice_id"), ("reviews", "review_id"),
                   ("certificates", "certificate_id")) for r in before[table]])

    report = await db.move_user(s.user_id, "asia")
    new_id = uuid.UUID(report["current_id"])
    assert report["moved"] and report["from_region"] == "europe" and report["documents"] == 1
    assert report["rows"] == {"users": 1, "user_sessions": 1, "enrollments": 3,
                              "lesson_progress": 3, "payments": 1, "invoices": 1, "reviews": 2,
                              "certificates": 1}

    # The user's rows only on Asia's shard, as many as before; nothing of theirs elsewhere.
    after = {r: await _theirs(shards[r].conn, new_id) for r in REGIONS}
    assert _counts(after["asia"]) == _counts(before)
    assert all(not any(after[r].values()) for r in ("europe", "north_america"))
    assert await _old_ids_anywhere(shards, old_ids, s.email) == {r: 0 for r in REGIONS}
    moved = after["asia"]
    assert moved["users"][0]["email"] == s.email and moved["users"][0]["home_region"] == "asia"
    assert moved["user_credentials"][0]["password_hash"] == "h" * 40
    # Legal documents keep their numbers; the completed enrollment keeps its completion.
    assert moved["invoices"][0]["invoice_number"] == before["invoices"][0]["invoice_number"]
    assert (moved["certificates"][0]["serial_number"]
            == before["certificates"][0]["serial_number"])
    by_course = {e["course_id"]: e for e in moved["enrollments"]}
    was = {e["course_id"]: e for e in before["enrollments"]}
    local = by_course[str(s.local.course_id)]
    assert (local["status"], local["completed_at"]) == ("completed",
                                                        was[str(s.local.course_id)]["completed_at"])
    # Europe's course is remote to the student now (its terms come along), Asia's is local.
    assert local["course_price_cents"] == 1000 and len(local["course_lesson_ids"]) == 2
    assert by_course[str(s.far.course_id)]["course_lesson_ids"] is None
    # Each course's shard records the enrollment under its new id, or no more (local now).
    seats = {r: await shards[r].conn.fetch(
        "SELECT enrollment_id, seat_held, rating, coupon_id IS NOT NULL AS coupon "
        "FROM remote_enrollments WHERE course_id = $1", c.course_id)
        for r, c in (("europe", s.local), ("asia", s.far), ("north_america", s.other))}
    assert [tuple(x) for x in seats["europe"]] == [
        (uuid.UUID(local["enrollment_id"]), True, 4, True)]
    assert seats["asia"] == []
    assert [x["enrollment_id"] for x in seats["north_america"]] == [
        uuid.UUID(by_course[str(s.other.course_id)]["enrollment_id"])]
    assert await _aggregates(shards, s) == aggregates
    # A refresh token still rotates: its session moved with its secret's hash.
    session = moved["user_sessions"][0]
    rotated = await asia.conn.fetchrow("SELECT * FROM rotate_refresh_token($1, $2, $3, 60)",
                                       uuid.UUID(session["session_id"]), s.token_hash,
                                       uuid.uuid4().hex * 2)
    assert rotated is not None
    assert (rotated["outcome"], rotated["user_id"]) == ("rotated", new_id)

    # The old ids resolve to the new ones, through the router, from any shard's copy.
    assert await db.fetchval("SELECT resolve_moved_id($1)", s.user_id) == new_id
    assert await db.fetchval("SELECT resolve_moved_id($1)", s.enrollments["asia"]) == uuid.UUID(
        by_course[str(s.far.course_id)]["enrollment_id"])
    copies = [await shards[r].conn.fetch("SELECT * FROM moved_ids WHERE new_id = $1", new_id)
              for r in REGIONS]
    assert len(copies[0]) == 1 and copies[0] == copies[1] == copies[2]
    # The preferences document moved with them.
    prefs = db.docs("user_preferences")
    assert await prefs.find_one({"_id": str(s.user_id)}) is None
    doc = await prefs.find_one({"_id": str(new_id)})
    assert doc is not None and (doc["user_id"], doc["region"], doc["language"]) == (
        str(new_id), "asia", "fr")

    # A second run (by the old id or the new) changes nothing.
    snapshot = {r: await _theirs(shards[r].conn, new_id) for r in REGIONS}
    for asked in (s.user_id, new_id):
        again = await db.move_user(asked, "asia")
        assert (again["moved"], again["current_id"], again["documents"]) == (
            False, str(new_id), 0)
    assert {r: await _theirs(shards[r].conn, new_id) for r in REGIONS} == snapshot
    assert await _aggregates(shards, s) == aggregates


async def test_moving_back_resolves_through_both_moves(
    shards: dict[str, Catalogue], db: client.Client
) -> None:
    user = await shards["europe"].user()
    first = await db.move_user(user, "north_america")
    second = await db.move_user(first["current_id"], "europe")
    home = uuid.UUID(second["current_id"])
    assert home not in (user, uuid.UUID(first["current_id"]))
    assert await db.fetchval("SELECT resolve_moved_id($1)", user) == home
    assert await shards["europe"].conn.fetchval(
        "SELECT count(*) FROM users WHERE user_id = $1", home) == 1


async def test_what_a_move_refuses_changes_nothing(
    shards: dict[str, Catalogue], db: client.Client
) -> None:
    teacher = (await shards["europe"].course()).instructor_id
    with pytest.raises(client.PostgresError) as info:
        await db.move_user(teacher, "asia")
    assert info.value.sqlstate == "GR016" and "teaches courses" in str(info.value)
    assert await shards["europe"].conn.fetchval(
        "SELECT count(*) FROM users WHERE user_id = $1", teacher) == 1
    assert await db.fetchval("SELECT resolve_moved_id($1)", teacher) == teacher
    with pytest.raises(client.UnknownShardError):
        await db.move_user(teacher, "atlantis")
    with pytest.raises(client.UnknownShardError):
        await db.move_user(uuid.uuid4(), "asia")
    with pytest.raises(client.PostgresError) as info:
        await db.move_user(await shards["europe"].conn.fetchval("SELECT georoute_id()"), "asia")
    assert info.value.sqlstate == "P0002"
    # An email the new region already has: the move is refused whole, nothing half-moved.
    email = f"twin-{uuid.uuid4().hex[:8]}@example.com"
    mover = await shards["europe"].user(email=email)
    await shards["asia"].user(email=email, region="asia")
    with pytest.raises(client.PostgresError) as info:
        await db.move_user(mover, "asia")
    assert info.value.sqlstate == "23505"
    assert await shards["europe"].conn.fetchval(
        "SELECT count(*) FROM users WHERE user_id = $1", mover) == 1
    assert await db.fetchval("SELECT resolve_moved_id($1)", mover) == mover


async def test_a_move_killed_after_its_decision_is_finished_by_a_second_run(
    migrated: Config, shards: dict[str, Catalogue], db: client.Client
) -> None:
    """The router dies right after the decision: another router commits the prepared
    branches, and a second run, finding the user moved, re-keys the document it left."""
    s = await _student(shards, db)
    before = _counts(await _theirs(shards["europe"].conn, s.user_id))
    state = Path(migrated.cluster.state_dir)
    faulty = tp_config(migrated, 131, "move-faulty")
    with running_router(faulty, state / "router-move-faulty.toml",
                        {FAULT_ENV: "after_decision"}) as proc:
        async with await client.connect(proc.dsn, token=TOKEN) as dying:
            with pytest.raises(client.ConnectionLostError):
                await dying.move_user(s.user_id, "asia")
        assert proc.proc.wait(timeout=20) == FAULT_EXIT_CODE
    primaries = {r: c.conn for r, c in shards.items()}
    # Every router node sweeps: the session's own router commits the prepared branches.
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="the move's prepared branches settled")
    assert await db.docs("user_preferences").find_one({"_id": str(s.user_id)}) is not None
    report = await db.move_user(s.user_id, "asia")
    assert (report["moved"], report["documents"]) == (False, 1)
    new_id = uuid.UUID(report["current_id"])
    assert _counts(await _theirs(shards["asia"].conn, new_id)) == before
    assert not any((await _theirs(shards["europe"].conn, s.user_id)).values())
    assert await db.docs("user_preferences").find_one({"_id": str(s.user_id)}) is None
    assert present(await db.docs("user_preferences").find_one({"_id": str(new_id)}))["region"] == "asia"


async def test_georoute_user_move_asks_the_router(
    router: RouterProcess, shards: dict[str, Catalogue], db: client.Client
) -> None:
    """The command sends the admin request to router.toml's router node and prints its
    report; a second run says there is nothing to move; a refusal exits 1, saying why."""
    user = await shards["asia"].user()
    env = {**os.environ, router.config.router.auth_token_env: TOKEN}

    async def georoute(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "router.tools.cli", "--config",
                             str(router.path), "user", "move", *args],
            env=env, capture_output=True, text=True, timeout=60)

    done = await georoute(str(user), "europe", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["moved"], report["from_region"], report["rows"]["users"]) == (
        True, "asia", 1)
    new_id = uuid.UUID(report["current_id"])
    assert await db.fetchval("SELECT resolve_moved_id($1)", user) == new_id
    again = await georoute(str(user), "europe")
    assert again.returncode == 0 and "nothing to move" in again.stdout, again.stdout
    refused = await georoute(str(new_id), "atlantis")
    assert refused.returncode == 1 and "UNKNOWN_SHARD" in refused.stderr, refused.stderr


async def test_two_moves_of_one_user_at_once_move_them_once(
    router: RouterProcess, shards: dict[str, Catalogue], db: client.Client
) -> None:
    """The second waits on the first's lock of the user's row, then finds the rows gone: it
    asks where the user lives now and finds nothing left to move."""
    s = await _student(shards, db)
    before = _counts(await _theirs(shards["europe"].conn, s.user_id))
    async with await client.connect(router.dsn, token=TOKEN) as other:
        reports = await asyncio.gather(db.move_user(s.user_id, "asia"),
                                       other.move_user(s.user_id, "asia"))
    assert sorted(r["moved"] for r in reports) == [False, True]
    assert reports[0]["current_id"] == reports[1]["current_id"]
    new_id = uuid.UUID(reports[0]["current_id"])
    assert _counts(await _theirs(shards["asia"].conn, new_id)) == before
    assert not any((await _theirs(shards["europe"].conn, s.user_id)).values())


async def test_a_move_meeting_an_enrollment_of_the_same_user_fails_fast_and_it_enrolls(
    router: RouterProcess, shards: dict[str, Catalogue], db: client.Client
) -> None:
    """A cross-shard wait PostgreSQL cannot see as a deadlock: an enrollment holds its course's
    row on Asia's shard (remote_course_terms) and waits on the student's rows on Europe's,
    which the move holds while it waits on that course's row to re-key the student's seat.
    Once both waited until router.statement_timeout_seconds (30 s); now the move gives up
    within its lock wait (2 s), rolled back everywhere and retryable, the enrollment goes on,
    and the move run again moves the student, new enrollment and all."""
    eu, asia = shards["europe"], shards["asia"]
    far = await asia.course(lessons=1)
    user = await eu.user()
    first = await _enroll_remote(eu, asia, far, user)
    await eu.conn.fetchval("SELECT cancel_enrollment($1, true)", first)
    await asia.conn.fetchval("SELECT release_remote_seat($1, $2)", far.course_id, first)

    async def move_waits_on_the_course() -> bool:
        return bool(await asia.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%rekey_remote_enrollments%'"))

    async def enrollment_waits_on_the_student() -> bool:
        return bool(await eu.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%enroll_remote%'"))

    on_asia = await connect_node(router.config, router.config.shards["asia"].primary)
    on_europe = await connect_node(router.config, router.config.shards["europe"].primary)
    try:
        # The enrollment, as the API runs it (here on two direct connections): the course's
        # row first.
        asia_tx, europe_tx = on_asia.transaction(), on_europe.transaction()
        await asia_tx.start()
        await europe_tx.start()
        terms = await on_asia.fetchrow("SELECT * FROM remote_course_terms($1, $2)",
                                       far.course_id, user)
        assert terms is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        move = asyncio.ensure_future(db.move_user(user, "north_america"))
        await wait_until(move_waits_on_the_course, within=10,
                         what="the move to wait on the course's row")
        enroll = asyncio.ensure_future(on_europe.fetchval(
            "SELECT enroll_remote($1, $2, $3, $4, $5)", user, far.course_id,
            terms["price_cents"], terms["currency"], terms["lesson_ids"]))
        await wait_until(lambda: enrollment_waits_on_the_student() if not enroll.done()
                         else _true(), within=10, what="the enrollment to wait on the student")
        with pytest.raises(client.GeorouteError) as err:
            async with asyncio.timeout(10):
                await move
        assert loop.time() - started < 10  # not router.statement_timeout_seconds (30 s)
        assert err.value.retryable, err.value
        assert "nothing was moved" in str(err.value) and "again" in str(err.value)
        async with asyncio.timeout(10):
            assert await enroll == first  # the cancelled enrollment, taken up again
        await on_asia.fetchval("SELECT hold_remote_seat($1, $2)", far.course_id, first)
        await europe_tx.commit()
        await asia_tx.commit()
    finally:
        await on_asia.close()
        await on_europe.close()
    assert await eu.conn.fetchval("SELECT status::text FROM enrollments "
                                  "WHERE enrollment_id = $1", first) == "active"
    report = await db.move_user(user, "north_america")  # run again: it moves
    assert report["moved"] and report["rows"]["enrollments"] == 1
    new_user = uuid.UUID(report["current_id"])
    na = shards["north_america"]
    assert await na.conn.fetchval("SELECT count(*) FROM enrollments WHERE user_id = $1 "
                                  "AND status = 'active'", new_user) == 1


async def _true() -> bool:
    return True
