"""Names that mean one thing (ARCHITECTURE.md, "names that mean several things"), read from the
source: one Role and one Consistency enum (protocol/fields.py, named by router/types.py), one
NodeState, one health.py, and no role read off a node's name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("router", "protocol", "client", "api")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _classes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                found[node.name].append(str(path.relative_to(REPO)))
    return found


def test_one_role_one_consistency_one_node_state() -> None:
    classes = _classes()
    assert classes["Role"] == ["protocol/fields.py"]
    assert classes["Consistency"] == ["protocol/fields.py"]
    assert classes["NodeState"] == ["router/ha/topology.py"]
    assert classes["NodeHealth"] == ["router/core/health.py"]
    assert not classes["NodeRole"]


def test_module_names_are_not_shared() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in (REPO / "router").rglob("*.py"):
        if path.name != "__init__.py":
            by_name[path.name].append(str(path.relative_to(REPO)))
    assert by_name["health.py"] == ["router/core/health.py"]


def test_no_role_is_read_off_a_node_name() -> None:
    """A node's name is its shard and its place (Config.all_nodes): no code may look for
    "-primary" or "-replica" in one."""
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.endswith(("-primary", "-replica")), (
                    f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
