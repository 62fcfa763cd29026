"""router/core/ holds the router's pure decisions (classify, confinement, routing, merge,
membership, failover, document shapes...): they take what they decide on as arguments, so a
unit test can call them. Two checks, as tests/unit/test_protocol_purity.py makes for protocol/:
importing every core module in a fresh interpreter loads no event loop, driver, socket or TLS
(transitively: router.config and router.errors, which core may import, are checked too); and no
core module imports those, or `time`, itself. (`time` cannot be checked the first way: the
interpreter loads it at start-up, and uuid and datetime import it.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import router.core

CORE = Path(router.core.__file__).parent
LOADED = ("asyncio", "asyncpg", "socket", "selectors", "ssl", "pymongo", "uvloop",
          "prometheus_client", "threading")
IMPORTED = (*LOADED, "time")


def _core_modules() -> list[str]:
    return sorted(f"router.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")


def _loaded_by(modules: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(sorted(m for m in {LOADED!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out.split(",") if out else []


def _imports_of(source: str) -> set[str]:
    """The top-level names of every module `source` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_importing_core_loads_no_io_modules() -> None:
    modules = _core_modules()
    assert "router.core.routing" in modules and "router.core.documents" in modules
    assert _loaded_by(modules) == []


def test_no_core_module_imports_io_or_the_clock() -> None:
    found = {
        path.name: sorted(_imports_of(path.read_text()) & set(IMPORTED))
        for path in sorted(CORE.glob("*.py"))
    }
    assert {name: bad for name, bad in found.items() if bad} == {}


def test_the_checks_see_an_io_import() -> None:
    """Both checks do find what they look for (these tests can fail)."""
    assert "asyncio" in _loaded_by(["router.engine.classifier"])
    assert _imports_of("def f():\n    from time import monotonic\n") == {"time"}
    assert _imports_of("import asyncio.tasks") == {"asyncio"}
