"""`make demo` (`georoute demo`) itself, on ports of its own: it brings the whole stack up,
prints the REST API's URL and a curl line to try, the curl line's URL answers, and SIGTERM
(as Ctrl-C) stops it all, the cluster included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.config import Config
from router.tools.config_write import config_to_toml, with_port_offset
from router.tools.localcluster import LocalCluster

DEMO_OFFSET = 7100  # far from the session's cluster and the scratch ones
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_config(test_config: Config, tmp_path: Path) -> Iterator[tuple[Config, Path]]:
    config = with_port_offset(test_config, DEMO_OFFSET,
                              str(Path(test_config.cluster.state_dir) / "scratch-demo"))
    path = tmp_path / "demo.toml"
    path.write_text(config_to_toml(config))
    try:
        yield config, path
    finally:
        LocalCluster(config).down(purge=True)  # whatever the demo left, by pid


def test_the_demo_prints_its_api_and_a_curl_line_that_works(
    demo_config: tuple[Config, Path],
) -> None:
    config, path = demo_config
    env = {k: v for k, v in os.environ.items()
           if k not in (config.router.auth_token_env, config.api.jwt_secret_env,
                        config.heartbeat.secret_env)}  # a fresh machine's: all made up
    demo = subprocess.Popen(
        [sys.executable, "-m", "router.tools.cli", "--config", str(path), "demo",
         "--users", "20"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(180) and demo.poll() is None, "".join(lines[-40:])
        text = "".join(lines)
        api = f"http://{config.api.host}:{config.api.port}"
        assert f"REST API  {api}/api/v1   docs: {api}/docs" in text, text
        curl = re.search(r"curl -s '(http://[^']+/api/v1/courses[^']*)'", text)
        assert curl is not None, text
        r = httpx.get(curl.group(1), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["items"], r.text  # the seeded catalogue
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)  # as Ctrl-C
        code = demo.wait(timeout=90)
    assert code == 0, "".join(lines[-40:])
    assert "cluster stopped" in "".join(lines)
    # It stopped its nodes (by pid) before it exited.
    assert not any(s.running for s in LocalCluster(config).status())
