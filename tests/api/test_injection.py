"""SQL injection through every string field of the REST API.

The fields come from the API's own OpenAPI document: every string parameter (path, query,
header) and every string in a request body, nested ones included (an array's items, an
object's properties). For each, a request that is otherwise valid (built from the schema,
with real ids of a course, a lesson, an enrollment...) carries each payload in that one
field. Payloads: quote-breaking, stacked statements, a UNION that would read password
hashes, time-based ones (`pg_sleep`), comment and NUL tricks. Each answer must be a
documented status below 500 (the `http` fixture checks it against the OpenAPI document),
leak no SQL, hash or trace, come back well before a `pg_sleep` would end, and afterwards
every shard still has its tables. `make test` tries four payloads; `pytest -m chaos` all."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import httpx
import pytest

from api.domain import Domain
from router.config import Config
from router.tools.db.connect import connect_node
from tests.api.openapi_requests import Context, calls, make_context
from tests.support.reliability import record

SLEEP = 4  # seconds a time-based payload would hold a request up if it ran
QUICK = ("' OR '1'='1", "'; DROP TABLE users; --", f"x' || pg_sleep({SLEEP}) || '", "a\x00b")
FULL = (
    *QUICK,
    "\\'; DELETE FROM users WHERE ''='",
    "') OR 1=1 --",
    "%' UNION SELECT email, password_hash, NULL FROM users --",
    f"1; SELECT pg_sleep({SLEEP}); --",
    f"$$; SELECT pg_sleep({SLEEP}); $$",
    f"x'::text; SELECT pg_sleep({SLEEP}); --",
    "/* */ OR /* */ 1=1",
    "\u02bc OR 1=1 --",  # a modifier letter apostrophe, which NFKC does not turn into '
    "' || (SELECT string_agg(password_hash, ',') FROM users) || '",
    "\\x27 OR 1=1",
    "x" * 5000,
)
LEAKS = ("Traceback", "syntax error", "SELECT ", "$argon2", "asyncpg", "psycopg")


@pytest.fixture
async def context(http: httpx.AsyncClient, domain: Domain, category_id: str) -> Context:
    return await make_context(http, domain, category_id)


async def _tables_intact(config: Config) -> dict[str, int]:
    counts = {}
    for name, shard in config.shards.items():
        conn: asyncpg.Connection = await connect_node(config, shard.primary)
        try:
            counts[name] = int(await conn.fetchval("SELECT count(*) FROM users"))
            assert await conn.fetchval("SELECT to_regclass('public.courses') IS NOT NULL")
        finally:
            await conn.close()
    return counts


async def test_sql_injection_through_every_string_field(
    http: httpx.AsyncClient, context: Context, migrated: Config, app: Any,
) -> None:
    await _inject(http, context, migrated, app, QUICK)


@pytest.mark.chaos
async def test_sql_injection_full_payload_list(
    http: httpx.AsyncClient, context: Context, migrated: Config, app: Any,
) -> None:
    """Every payload (`pytest -m chaos`)."""
    await _inject(http, context, migrated, app, FULL)


async def _inject(http: httpx.AsyncClient, context: Context, migrated: Config, app: Any,
                  payloads: tuple[str, ...]) -> None:
    doc = app.state.openapi
    requests = calls(doc, context)
    before = await _tables_intact(migrated)
    tried: set[tuple[str, str, str, tuple[Any, ...]]] = set()
    reached: set[tuple[str, str, str, tuple[Any, ...]]] = set()  # a payload was taken (2xx)
    statuses: dict[int, int] = {}
    slowest = 0.0
    problems = []
    for call in requests:
        if call.template.endswith("/auth/logout"):
            continue  # below, last: it would end the sessions the other calls use
        for where, leaf in call.fields():
            for payload in payloads:
                injected = call.with_payload(where, leaf, payload)
                started = time.monotonic()
                r = await injected.send(http)
                took = time.monotonic() - started
                slowest = max(slowest, took)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                tried.add((call.method, call.template, where, leaf))
                if 200 <= r.status_code < 300:
                    reached.add((call.method, call.template, where, leaf))
                what = f"{call.method} {call.template} {where}:{leaf} <- {payload[:40]!r}"
                if r.status_code >= 500:
                    problems.append(f"{what}: {r.status_code} {r.text[:200]}")
                # The payload stored and echoed back as data is no leak: look past it.
                echoed = r.text.replace(json.dumps(payload)[1:-1], "").replace(payload, "")
                if any(leak in echoed for leak in LEAKS):
                    problems.append(f"{what}: leaks {r.text[:200]}")
                if took >= SLEEP - 1:
                    problems.append(f"{what}: took {took:.1f}s (did pg_sleep run?)")
    after = await _tables_intact(migrated)
    fields = len({(m, t, w, leaf) for m, t, w, leaf in tried})
    record(f"SQL injection through every string field of the REST API ({len(payloads)} "
           "payloads)",
           f"{len(payloads)} payloads into each of {fields} string fields (path, query, header, "
           "body, nested) of every operation in the OpenAPI document", None,
           requests=sum(statuses.values()), statuses=statuses, server_errors=sum(
               n for s, n in statuses.items() if s >= 500),
           slowest_s=round(slowest, 2), fields_whose_payloads_were_stored=len(reached),
           tables_intact=True)
    assert not problems, "\n".join(problems)
    assert all(after[r] >= before[r] for r in before)  # nothing deleted
    assert fields >= 60  # every operation's strings were reached (the document has ~70)
    # Free text reached the database (the payloads were taken and bound as values); fields
    # with a format (ids, codes, dates, enums) were refused by validation first, 422.
    free_text = {("GET", "/api/v1/courses/search", "query", ("q",)),
                 ("POST", "/api/v1/courses", "body", ("title",)),
                 ("POST", "/api/v1/courses", "body", ("description",)),
                 ("PATCH", "/api/v1/users/me", "body", ("full_name",)),
                 ("PUT", "/api/v1/courses/{course_id}/review", "body", ("body",)),
                 ("PUT", "/api/v1/lessons/{lesson_id}/content", "body", ("title",))}
    assert free_text <= reached, free_text - reached
