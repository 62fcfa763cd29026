"""Users and the catalogue: register_user, create_session, deactivate_user, create_course,
add_module, add_lesson, publish_course, archive_course, search_catalogue, and the updated_at
and audit triggers."""

from __future__ import annotations

import uuid

from tests.integration.conftest import Catalogue, sql_error, unique


async def test_register_user_refuses_duplicates_and_other_regions(catalogue: Catalogue) -> None:
    email = f"{unique('dup')}@example.com"
    user = await catalogue.user(email=email, password_hash="x" * 40)
    assert await catalogue.conn.fetchval(
        "SELECT count(*) FROM user_credentials WHERE user_id = $1", user) == 1
    with sql_error("23505", "already registered"):
        await catalogue.user(email=email.upper())
    with sql_error("GR003", "does not belong on shard europe"):
        await catalogue.user(region="asia")


async def test_sessions_and_deactivation(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    user = await catalogue.user()
    for _ in range(2):
        await conn.fetchval("SELECT create_session($1, $2)", user, unique("token-"))
    assert await conn.fetchval("SELECT deactivate_user($1, 'fraud')", user) == 2
    row = await conn.fetchrow("SELECT is_active, deactivated_at FROM users WHERE user_id = $1",
                              user)
    assert row is not None
    assert row["is_active"] is False and row["deactivated_at"] is not None
    assert await conn.fetchval(
        "SELECT count(*) FROM user_sessions WHERE user_id = $1 AND revoked_at IS NULL", user) == 0
    audit = await conn.fetchrow(
        "SELECT details FROM audit_log WHERE action = 'user.deactivated' AND entity_id = $1",
        user)
    assert audit is not None
    assert '"reason": "fraud"' in audit["details"]
    assert await conn.fetchval("SELECT deactivate_user($1, 'again')", user) == 0  # no-op
    with sql_error("GR009", "deactivated"):
        await conn.fetchval("SELECT create_session($1, 'tok-after-deactivation')", user)
    with sql_error("P0002"):
        await conn.fetchval("SELECT deactivate_user($1, 'x')", uuid.uuid4())
    assert await conn.fetchval("SELECT purge_expired_sessions(now() + interval '1 hour')") >= 2


async def test_create_course_checks_instructor_and_price(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    student = await catalogue.user()
    category = await catalogue.category()
    with sql_error("GR010", "cannot create courses"):
        await conn.fetchval("SELECT create_course($1, $2, 'T', 100)", student, category)
    instructor = await catalogue.user("instructor")
    with sql_error("22023", "price must be >= 0"):
        await conn.fetchval("SELECT create_course($1, $2, 'T', -5)", instructor, category)
    with sql_error("P0002", "category"):
        await conn.fetchval("SELECT create_course($1, $2, 'T', 5)", instructor, uuid.uuid4())
    course = await conn.fetchval(
        "SELECT create_course($1, $2, 'Intro to Rust!', 1500)", instructor, category)
    row = await conn.fetchrow("SELECT slug, region, status FROM courses WHERE course_id = $1",
                              course)
    assert row is not None
    assert row["slug"].startswith("intro-to-rust-") and row["region"] == "europe"
    assert row["status"] == "draft"


async def test_modules_lessons_and_publishing(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course(lessons=0, publish=False)
    with sql_error("GR011", "has no lessons"):
        await conn.fetchval("SELECT publish_course($1)", course.course_id)
    m1 = await conn.fetchval("SELECT add_module($1, 'One')", course.course_id)
    m2 = await conn.fetchval("SELECT add_module($1, 'Two')", course.course_id)
    positions = await conn.fetch(
        "SELECT module_id, position FROM course_modules WHERE course_id = $1 ORDER BY position",
        course.course_id)
    assert [(r["module_id"], r["position"]) for r in positions] == [(m1, 1), (m2, 2)]
    lessons = [await conn.fetchval("SELECT add_lesson($1, $2, 60)", m2, f"L{i}") for i in range(3)]
    # add_lesson returns the id of the row it made, each one at the next position.
    assert [(r["lesson_id"], r["position"]) for r in await conn.fetch(
        "SELECT lesson_id, position FROM lessons WHERE module_id = $1 ORDER BY position", m2)
    ] == list(zip(lessons, [1, 2, 3], strict=True))
    with sql_error("22023"):
        await conn.fetchval("SELECT add_lesson($1, 'neg', -1)", m2)
    first = await conn.fetchval("SELECT publish_course($1)", course.course_id)
    assert await conn.fetchval("SELECT publish_course($1)", course.course_id) == first
    await conn.execute("SELECT archive_course($1)", course.course_id)
    with sql_error("GR011", "archived"):
        await conn.fetchval("SELECT publish_course($1)", course.course_id)
    with sql_error("GR011", "archived"):
        await conn.fetchval("SELECT add_module($1, 'Three')", course.course_id)


async def test_search_catalogue(catalogue: Catalogue) -> None:
    word = unique("quasar")
    cheap = await catalogue.course(title=f"Cheap {word} basics", price_cents=500)
    await catalogue.course(title=f"Premium {word} mastery", price_cents=50_000)
    await catalogue.course(title=f"Draft {word}", publish=False)
    rows = await catalogue.conn.fetch("SELECT * FROM search_catalogue($1)", word)
    assert len(rows) == 2  # drafts are not in the catalogue
    rows = await catalogue.conn.fetch("SELECT * FROM search_catalogue($1, NULL, 1000)", word)
    assert [r["course_id"] for r in rows] == [cheap.course_id]
    with sql_error("22023", "limit"):
        await catalogue.conn.fetch("SELECT * FROM search_catalogue($1, NULL, NULL, NULL, 0)", word)


async def test_updated_at_and_audit_triggers(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    course = await catalogue.course()
    # The trigger owns updated_at: an explicit value is overwritten with now().
    await conn.execute(
        "UPDATE courses SET updated_at = now() - interval '1 day' WHERE course_id = $1",
        course.course_id)
    before = await conn.fetchval("SELECT updated_at FROM courses WHERE course_id = $1",
                                 course.course_id)
    assert await conn.fetchval("SELECT now() - $1 < interval '1 hour'", before)
    await conn.execute("UPDATE courses SET price_cents = 4242 WHERE course_id = $1",
                       course.course_id)
    after = await conn.fetchval("SELECT updated_at FROM courses WHERE course_id = $1",
                                course.course_id)
    assert after > before
    changes = await conn.fetchval(
        "SELECT details FROM audit_log WHERE action = 'courses.update' AND entity_id = $1 "
        "ORDER BY occurred_at DESC LIMIT 1", course.course_id)
    assert '"price_cents": [0, 4242]' in changes
    actions = {r["action"] for r in await conn.fetch(
        "SELECT action FROM audit_log WHERE entity_id = $1", course.course_id)}
    assert {"courses.insert", "courses.update"} <= actions


async def test_record_audit_takes_the_actor_from_the_session(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    actor = await catalogue.user("admin")
    entity = uuid.uuid4()
    async with conn.transaction():
        await conn.execute("SELECT set_config('georoute.actor_id', $1, true)", str(actor))
        audit = await conn.fetchval(
            "SELECT record_audit('course.featured', 'courses', $1, '{\"slot\": 1}')", entity)
    row = await conn.fetchrow("SELECT * FROM audit_log WHERE audit_id = $1", audit)
    assert row is not None
    assert (row["actor_id"], row["action"], row["entity_id"], row["region"]) == (
        actor, "course.featured", entity, "europe")
    with sql_error("22023", "must not be empty"):
        await conn.fetchval("SELECT record_audit('', 'courses', NULL)")


async def test_search_catalogue_by_category_includes_children(catalogue: Catalogue) -> None:
    conn = catalogue.conn
    parent = unique("parent-")
    parent_id = await conn.fetchval(
        "INSERT INTO categories (slug, name) VALUES ($1, 'P') RETURNING category_id", parent)
    child_id = await conn.fetchval(
        "INSERT INTO categories (slug, name, parent_id) VALUES ($1, 'C', $2) "
        "RETURNING category_id", unique("child-"), parent_id)
    course = await catalogue.course()
    await conn.execute("UPDATE courses SET category_id = $1 WHERE course_id = $2",
                       child_id, course.course_id)
    rows = await conn.fetch("SELECT course_id FROM search_catalogue(NULL, $1)", parent)
    assert [r["course_id"] for r in rows] == [course.course_id]
