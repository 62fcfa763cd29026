"""`georoute api` as a real process (uvicorn with httptools, on a free port) against the test
router: it refuses to start without a JWT secret, reads one from `.env`, serves the API and
/docs from packaged files, logs one JSON line per request, and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import uuid
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
