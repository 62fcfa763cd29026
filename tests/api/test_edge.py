"""The edge of the API, in process on the real stack: rate limits per client IP and per user
(429 with Retry-After), the body limit (413, declared or streamed), request ids, CORS, and
unexpected failures (500 with no stack trace) and an unavailable data layer (503)."""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import client
from api import create_app
from api.domain import Domain
from api.settings import Settings
from router.config import parse_config
from tests.api.conftest import SETTINGS, api_client, signup
from tests.api.openapi_check import DocumentedResponses

REPO = Path(__file__).resolve().parents[2]


def _app(db: client.Client, domain: Domain, **changes: Any) -> Any:
    return create_app(db, dataclasses.replace(SETTINGS, **changes), domain=domain)


def _checked(app: Any, **kw: Any) -> httpx.AsyncClient:
    """A client of `app` whose every answer is checked against its OpenAPI document (status,
    body and documented headers such as Retry-After)."""
    return api_client(app, DocumentedResponses(app.state.openapi), **kw)


async def test_rate_limit_per_client_ip(api_db: client.Client, domain: Domain) -> None:
    app = _app(api_db, domain, rate_limit_per_minute=1, rate_limit_burst=3)
    async with _checked(app, ip="10.0.0.1") as http, _checked(app, ip="10.0.0.2") as other:
        assert [(await http.get("/categories")).status_code for _ in range(3)] == [200] * 3
        refused = await http.get("/categories")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert (await other.get("/categories")).status_code == 200  # its own bucket


async def test_rate_limit_per_user_across_ips(api_db: client.Client, domain: Domain,
                                              app: Any) -> None:
    async with api_client(app) as setup:
        person = await signup(setup)
    limited = _app(api_db, domain, rate_limit_per_minute=1, rate_limit_burst=2)
    answers = []
    for i in range(3):  # three addresses, so no IP bucket runs dry; the user's does
        async with _checked(limited, ip=f"10.1.0.{i}") as http:
            answers.append(await http.get("/users/me", headers=person.headers))
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert "user" in answers[2].json()["detail"] and answers[2].headers["retry-after"]


async def test_body_limit(api_db: client.Client, domain: Domain) -> None:
    app = _app(api_db, domain, max_body_bytes=512)
    async with _checked(app) as http:
        big = {"email": "a@example.com", "password": "p" * 2000}
        r = await http.post("/auth/login", json=big)
        assert r.status_code == 413 and r.json()["type"].endswith("payload-too-large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"email": "a@example.com", "password": "'
            for _ in range(10):
                yield b"p" * 100
            yield b'"}'

        r = await http.post("/auth/login", content=chunks(),
                            headers={"content-type": "application/json"})
        assert r.status_code == 413
        small = await http.post("/auth/login", json={"email": "a@example.com",
                                                      "password": "p"})
        assert small.status_code == 401


async def test_request_ids(http: httpx.AsyncClient) -> None:
    r = await http.get("/categories", headers={"X-Request-ID": "abc-123.def"})
    assert r.headers["x-request-id"] == "abc-123.def"
    r = await http.get("/courses/nope", headers={"X-Request-ID": "bad id with spaces"})
    generated = r.headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32
    assert r.json()["request_id"] == generated
    made = {(await http.get("/courses/nope")).headers["x-request-id"] for _ in range(20)}
    assert len(made) == 20 and generated not in made


async def test_access_log_one_line_per_request(http: httpx.AsyncClient,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="api.access"):
        await http.get("/categories", headers={"X-Request-ID": "log-me-1"})
    lines = [r for r in caplog.records if r.name == "api.access"
             and r.access["request_id"] == "log-me-1"]  # type: ignore[attr-defined]
    assert len(lines) == 1
    access = lines[0].access  # type: ignore[attr-defined]
    assert access["status"] == 200 and access["path"] == "/api/v1/categories"
    assert access["ms"] >= 0 and access["client"] == "127.0.0.9"


async def test_cors(api_db: client.Client, domain: Domain) -> None:
    app = _app(api_db, domain, cors_origins=("https://app.example",))
    async with api_client(app) as http:
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, idempotency-key"}
        r = await http.options("/payments", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await http.options("/payments", headers=preflight | {"Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = await http.get("/categories", headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-Request-ID" in r.headers["access-control-expose-headers"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_an_unexpected_failure_is_a_500_problem_without_a_trace(
        api_db: client.Client, domain: Domain, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, method: str) -> None:
    """GET is an operation the dispatch finds (api/http/dispatch.py); HEAD is not, and
    Starlette's own route answers it: both fail the same way."""
    async def boom() -> Any:
        raise RuntimeError("secret internals: SELECT * FROM users")

    app = _app(api_db, domain)
    monkeypatch.setattr(domain.courses, "categories", boom)
    async with api_client(app) as http:
        with caplog.at_level(logging.ERROR, logger="api"):
            r = await http.request(method, "/categories")
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["x-request-id"]
    assert any("secret internals" in (rec.exc_text or "") for rec in caplog.records)
    if method == "GET":
        assert "secret internals" not in r.text and "Traceback" not in r.text
        assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_an_unreachable_router_is_a_503_with_retry_after(
        api_router: Any, domain: Domain) -> None:
    lonely = await client.connect(api_router.dsn, token="test-token-0123456789",
                                  max_retries=0)
    app = create_app(lonely, SETTINGS, domain=Domain(lonely, SETTINGS))
    await lonely.close()  # every request now finds no connection to the router
    async with _checked(app) as http:
        r = await http.get("/courses", params={"limit": 1})
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["type"].endswith("unavailable")
    assert json.dumps(r.json()).count("georoute://") == 0


async def test_cors_origins_from_router_toml(api_db: client.Client, domain: Domain) -> None:
    """[api] cors_origins in the config file reaches the app through Settings.from_config."""
    raw = tomllib.loads((REPO / "router.toml").read_text())
    raw["api"]["cors_origins"] = ["https://from-config.example"]
    settings = Settings.from_config(parse_config(raw), env={"GEOROUTE_JWT_SECRET": "k" * 40})
    app = create_app(api_db, settings, domain=domain)
    preflight = {"Origin": "https://from-config.example", "Access-Control-Request-Method": "GET"}
    async with api_client(app) as http:
        r = await http.options("/categories", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://from-config.example"
        r = await http.options("/categories", headers=preflight | {
            "Origin": "https://elsewhere.example"})
        assert r.status_code == 400
