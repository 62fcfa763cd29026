"""`georoute api` as a real process (uvicorn with httptools, on a free port) against the test
router: it refuses to start without a JWT secret, reads one from `.env`, serves the API and
/docs from packaged files, logs one JSON line per request, and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.api.conftest import PASSWORD, start_api
from tests.support.router_proc import RouterProcess


def test_refuses_to_start_without_a_jwt_secret(api_router: RouterProcess,
                                               tmp_path: Path) -> None:
    api = start_api(api_router, cwd=tmp_path)
    try:
        assert api.proc.wait(timeout=30) == 2
    finally:
        api.stop()
    output = "".join(api.output)
    assert "GEOROUTE_JWT_SECRET" in output and "ready on" not in output


async def test_serves_with_a_secret_from_dotenv(api_router: RouterProcess,
                                                tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# test\nGEOROUTE_JWT_SECRET=" + "d" * 48 + "\n")
    (tmp_path / ".env").chmod(0o600)  # (one others may read is warned about)
    api = start_api(api_router, cwd=tmp_path, extra_args=("--log-json",))
    try:
        assert any("ready on" in line for line in api.output), "".join(api.output)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
            health = await http.get("/api/v1/health")
            assert health.status_code == 200, health.text
            nodes = health.json()["nodes"]
            assert {n["shard"] for n in nodes} == {"north_america", "europe", "asia"}
            assert len(nodes) == 6

            address = f"proc-{uuid.uuid4().hex[:10]}@example.com"
            r = await http.post("/api/v1/auth/register", json={
                "email": address, "password": PASSWORD, "full_name": "Over HTTP",
                "region": "north_america"})
            assert r.status_code == 201, r.text
            r = await http.post("/api/v1/auth/login",
                                json={"email": address, "password": PASSWORD},
                                headers={"X-Request-ID": "proc-login-1"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "proc-login-1"
            me = await http.get("/api/v1/users/me", headers={
                "Authorization": f"Bearer {r.json()['access_token']}"})
            assert me.json()["home_region"] == "north_america"

            page = await http.get("/docs")
            assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
            assert "'self'" in page.headers["content-security-policy"]
            script = await http.get("/docs/assets/swagger-ui-bundle.js")
            assert script.status_code == 200 and len(script.content) > 500_000
            init = await http.get("/docs/init.js")
            assert "/api/v1/openapi.json" in init.text and "validatorUrl: null" in init.text
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(timeout=20) == 0
    finally:
        api.stop()
    access = [json.loads(line) for line in api.output
              if line.startswith("{") and '"api.access"' in line]
    login = [a for a in access if a.get("request_id") == "proc-login-1"]
    assert len(login) == 1
    assert login[0]["status"] == 200 and login[0]["path"] == "/api/v1/auth/login"


async def test_refusals_through_the_served_process(api_router: RouterProcess,
                                                   tmp_path: Path) -> None:
    """The refusals the in-process tests check, through `georoute api` itself (uvicorn,
    httptools, its one-write transport, real client addresses): no token 401, a bad body
    422, an unknown id 404, a body over the limit 413 by its Content-Length and while it
    streams in chunks, and a client IP over its rate 429 with Retry-After; each a problem
    with its request id, and the process still running after them."""
    env = {"GEOROUTE_JWT_SECRET": "p" * 48}
    api = start_api(api_router, cwd=tmp_path, env=env, api_changes={
        "max_body_bytes": 4096, "rate_limit_per_minute": 1, "rate_limit_burst": 12})
    try:
        assert any("ready on" in line for line in api.output), "".join(api.output)
        async with httpx.AsyncClient(base_url=api.base_url + "/api/v1", timeout=10) as http:

            def problem(r: httpx.Response, status: int) -> None:
                assert r.status_code == status, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert r.headers["x-request-id"]

            problem(await http.get("/users/me"), 401)
            problem(await http.post("/auth/register", json={"email": "nope"}), 422)
            problem(await http.get(f"/courses/{uuid.uuid4()}"), 404)
            problem(await http.post("/auth/login", content=b"x" * 5000,
                                    headers={"content-type": "application/json"}), 413)

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read, then cut
                for _ in range(10):
                    yield b" " * 1000

            problem(await http.post("/auth/login", content=chunks(),
                                    headers={"content-type": "application/json"}), 413)
            statuses = [(await http.get("/categories")).status_code for _ in range(12)]
            assert 429 in statuses, statuses
            limited = await http.get("/categories")
            problem(limited, 429)
            assert int(limited.headers["retry-after"]) >= 1
        assert api.proc.poll() is None
    finally:
        api.stop()
