"""The layer contract (import-linter, configured in pyproject.toml) is part of the suite: an
import that crosses a layer the wrong way, closes a cycle, or ties protocol/, client/ or api/
to the router's insides fails `make test`. The contract is also shown to fail: a copy of the
tree with one forbidden import added, under TYPE_CHECKING too, is refused by the contract
that forbids it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("router", "protocol", "client", "api", "bench")


def _lint(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the packages are looked up from `root`, not from the editable install.
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [f"--contract={c}" for c in contracts]
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_contract_is_kept() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", result.stdout)
    assert kept is not None and int(kept.group(1)) >= 7, result.stdout


def test_type_checking_imports_are_counted() -> None:
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert settings.get("exclude_type_checking_imports", False) is False


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and pyproject.toml, for breaking on purpose."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


TYPE_ONLY = "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {}\n"

# (file, import added, contract that must refuse it, what its report must say)
BROKEN = [
    ("router/core/routing.py", TYPE_ONLY.format("from router.engine.executor import Executor"),
     "router-layers", "router.core is not allowed to import router.engine"),
    ("router/ha/topology.py", "\nimport router.server.connection\n",
     "router-layers", "router.ha is not allowed to import router.server"),
    ("router/backend/pool.py", "\nimport router.core.routing\n",
     "router-layers", "router.backend is not allowed to import router.core"),
    ("router/engine/session.py", TYPE_ONLY.format("import router.tools.db.documents"),
     "router-layers", "router.engine is not allowed to import router.tools"),
    ("router/core/ids.py", "\nimport router.core.routing\n", "acyclic",
     "No cycles are allowed in router.core"),
    ("router/config.py", "\nfrom client.tls import ssl_context\n",
     "router-alone", "router.config -> client.tls"),
    ("protocol/codec.py", TYPE_ONLY.format("from router.errors import GeorouteError"),
     "protocol-alone", "protocol.codec -> router.errors"),
    ("client/dsn.py", "\nimport router.config\n", "client-alone", "client.dsn -> router.config"),
    ("api/__init__.py", "\nimport router.engine.executor\n",
     "api-through-client", "api -> router.engine.executor"),
    ("api/__init__.py", "\nimport protocol.codec\n", "api-not-protocol", "api -> protocol.codec"),
]


@pytest.mark.parametrize(("path", "line", "contract", "report"), BROKEN,
                         ids=[f"{c}:{p}" for p, _, c, _ in BROKEN])
def test_a_forbidden_import_breaks_the_contract(tree: Path, path: str, line: str, contract: str,
                                                report: str) -> None:
    assert _lint(tree, contract).returncode == 0  # the copy as it is keeps it
    with (tree / path).open("a") as source:
        source.write(line)
    result = _lint(tree, contract)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and report in result.stdout, result.stdout
