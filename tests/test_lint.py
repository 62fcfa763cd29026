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


def test_every_module_the_code_runs_with_python_m_exists() -> None:
    """A command line `[..., "-m", "some.module", ...]` in the code names a module that
    exists: `make demo` ran `python -m router.cli` long after that module had moved (its REST
    API never started), and nothing but running the demo would have said so."""
    import ast
    import importlib.util

    named: list[tuple[str, str]] = []
    for package in ("router", "api", "client", "protocol", "bench"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.List | ast.Tuple):
                    for flag, module in zip(node.elts, node.elts[1:], strict=False):
                        if (isinstance(flag, ast.Constant) and flag.value == "-m"
                                and isinstance(module, ast.Constant)
                                and isinstance(module.value, str)):
                            named.append((str(path.relative_to(REPO)), module.value))
    assert ("router/tools/demo_cli.py", "router.tools.cli") in named  # the scan sees them
    missing = [(where, module) for where, module in named
               if importlib.util.find_spec(module) is None]
    assert missing == [], missing
