"""ruff and mypy are part of the suite: a lint or type error fails `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = _run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_formatter_markers() -> None:
    """The code is not run through a formatter (ruff format would rewrap every file), so a
    formatter's skip marker promises what nothing checks: none may come back."""
    marker = "# fmt" + ": skip"
    files = _run("git", "ls-files", "*.py").stdout.split()
    found = [f"{name}:{n}" for name in files
             for n, line in enumerate((REPO / name).read_text().splitlines(), 1)
             if marker in line]
    assert found == [], found
