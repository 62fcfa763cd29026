"""Regions are the shards router.toml configures, not a list in the code: a cluster with a
fourth shard loads, and its statements route there by region, by id and by hint; reads that
no key confines ask all four; a document names any of them. (router.toml's three are the
default; tests/unit/test_config.py checks the loading itself.)"""

from __future__ import annotations

import ast
import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from router.config import Config, parse_config
from router.core.documents import USER_PREFERENCES, DocumentShapes, DocumentValidationError
from router.core.routing import OneShard, Scatter, UnknownShardError, resolve_shards, route
from router.engine.classifier import Classifier
from router.tools.db.seed_data import generate_shard, split_users
from tests.support.documents import preferences
from tests.support.ids import new_id

REPO = Path(__file__).resolve().parents[2]
AFRICA = 7


def _four_shards() -> Config:
    raw: dict[str, Any] = copy.deepcopy(tomllib.loads((REPO / "router.toml").read_text()))
    raw["shards"]["africa"] = {"number": AFRICA, "primary": {"port": 6507},
                               "replicas": [{"port": 6508}]}
    return parse_config(raw)


CONFIG = _four_shards()


@pytest.fixture
def classifier() -> Classifier:
    return Classifier(CONFIG.tables, CONFIG.router.read_only_functions, cache_size=8,
                      sharded_functions=CONFIG.router.sharded_functions)


def _shards(classifier: Classifier, sql: str, params: list[object],
            hint: str | None = None) -> tuple[str, ...]:
    match resolve_shards(classifier.analyze(sql), params, hint, CONFIG):
        case OneShard(shard=shard):
            return (shard,)
        case Scatter(shards=shards):
            return shards


def test_a_fourth_shard_routes_by_region_id_and_hint(classifier: Classifier) -> None:
    assert _shards(classifier, "SELECT * FROM courses WHERE region = $1", ["africa"]) == (
        "africa",)
    assert _shards(classifier, "SELECT * FROM courses WHERE region = 'africa'", []) == ("africa",)
    by_id = "UPDATE users SET city = $2 WHERE user_id = $1"
    assert _shards(classifier, by_id, [new_id(AFRICA), "Lagos"]) == ("africa",)
    assert _shards(classifier, by_id, [new_id(CONFIG.shards["europe"].number), "Lyon"]) == (
        "europe",)
    assert _shards(classifier, "SELECT * FROM categories WHERE name = $1", ["x"],
                   hint="africa") == ("africa",)
    with pytest.raises(UnknownShardError, match="africa"):  # the error lists the four
        _shards(classifier, "SELECT * FROM courses WHERE region = $1", ["oceania"])


def test_reads_no_key_confines_ask_every_configured_shard(classifier: Classifier) -> None:
    every = route(classifier.analyze("SELECT count(*) FROM users"), [], None, CONFIG)
    assert isinstance(every, Scatter)
    assert every.shards == ("north_america", "europe", "asia", "africa")
    both = route(classifier.analyze("SELECT * FROM users WHERE user_id IN ($1, $2)"),
                          [new_id(AFRICA), new_id(CONFIG.shards["asia"].number)], None,
                          CONFIG)
    assert isinstance(both, Scatter) and set(both.shards) == {"asia", "africa"}


def test_documents_and_seed_data_of_a_fourth_region() -> None:
    shapes = DocumentShapes(CONFIG.shards)
    shapes.validate(USER_PREFERENCES, preferences(region="africa"))
    with pytest.raises(DocumentValidationError):
        shapes.validate(USER_PREFERENCES, preferences(region="oceania"))
    regions = list(CONFIG.shards)
    counts = split_users(100, regions)
    assert sum(counts.values()) == 100 and min(counts.values()) > 0
    assert split_users(300, regions[:3]) == {"north_america": 120, "europe": 105, "asia": 75}
    data = generate_shard(1, "africa", AFRICA, counts["africa"])
    homes = {row[4] for row in data.rows["users"]}  # users.home_region
    assert homes == {"africa"}


def _string_literals(source: str) -> list[str]:
    """The string constants of a module's code (docstrings and comments are not code)."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_region_is_named_in_the_routers_code() -> None:
    """Only the seed data knows the shipped three by name; everything else reads the shards
    from the config. (sql/001 names them in CHECKs that 008 drops.)"""
    shipped = re.compile(r"\b(north_america|europe|asia)\b")
    found = {
        str(path.relative_to(REPO)): hits
        for path in sorted((REPO / "router").rglob("*.py"))
        if path.name != "seed_data.py"
        and (hits := [s for s in _string_literals(path.read_text()) if shipped.search(s)])
    }
    assert found == {}
    assert _string_literals('"""doc"""\nX = ("europe",)\n') == ["europe"]
