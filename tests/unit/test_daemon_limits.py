"""The router process's own limits: file descriptors for every client and backend connection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_router_raises_its_open_file_limit_to_the_hard_one() -> None:
    """Run apart: the soft limit starts low, as distributions often start daemons."""
    code = (
        "import resource, sys\n"
        "from router.config import load_config\n"
        "from router.node import raise_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        f"now = raise_fd_limit(load_config({str(REPO / 'router.toml')!r}))\n"
        "assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "print(now, hard)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=REPO)
    now, hard = (int(x) for x in proc.stdout.split())
    assert now == (hard if hard != -1 else 1 << 20)  # RLIM_INFINITY is -1
