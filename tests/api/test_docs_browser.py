"""/docs in a real browser: headless Chromium (Debian's `chromium`) loads the page from the API
served by uvicorn, with every host but 127.0.0.1 made unresolvable, and the page shows every
operation of the OpenAPI document. Marked `browser` (about 5 s): run it alone with
`pytest -m browser tests/api`; without chromium it is skipped (under CI it fails)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.api.conftest import free_port
from tests.support.ci import missing

pytestmark = pytest.mark.browser


async def test_docs_show_every_operation_with_no_network(app: Any, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")
        return
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.02)
        browser = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            # No network: any host but the API's own resolves to nothing.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}/docs",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        async with asyncio.timeout(90):
            dom_bytes, _ = await browser.communicate()
    finally:
        server.should_exit = True
        await serving
    assert browser.returncode == 0
    dom = dom_bytes.decode()
    shown = set(re.findall(r'id="operations-(?!tag-)[a-z]+-([A-Za-z_]+)"', dom))
    expected = {op["operationId"] for path in app.state.openapi["paths"].values()
                for op in path.values()}
    assert shown == expected, f"missing: {sorted(expected - shown)}"
    assert "Browse the catalogue of every region" in dom
    assert "georoute e-learning API" in dom
