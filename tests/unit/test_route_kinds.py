"""A route's kind is its type: a read over several shards is a `Scatter`, which has no "shard",
so nothing can run it on the first of its shards by mistake (the old `Target.shard` returned
`shards[0]`). Proved at run time and by mypy on code that tries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from router.config import load_config
from router.core.routing import CrossShardError, EveryPrimary, OneShard, Route, Scatter, route
from router.engine.classifier import Classifier
from tests.support.ids import new_id

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "router.toml")
CLASSIFIER = Classifier(CONFIG.tables, CONFIG.router.read_only_functions, cache_size=8,
                        sharded_functions=CONFIG.router.sharded_functions)
EU, ASIA = (new_id(CONFIG.shards[n].number) for n in ("europe", "asia"))


def routed(sql: str, *params: object, hint: str | None = None) -> Route:
    return route(CLASSIFIER.analyze(sql), list(params), hint, CONFIG)


@pytest.mark.parametrize(("sql", "params", "hint"), [
    ("SELECT name FROM users WHERE user_id IN ($1, $2)", (EU, ASIA), None),
    ("SELECT count(*) FROM users", (), None),
    ("SELECT name FROM users WHERE user_id = $1", (EU,), "*"),
])
def test_a_read_over_several_shards_has_no_one_shard(
    sql: str, params: tuple[object, ...], hint: str | None,
) -> None:
    target = routed(sql, *params, hint=hint)
    assert isinstance(target, Scatter) and len(target.shards) >= 2
    with pytest.raises(AttributeError):
        target.shard  # type: ignore[attr-defined]  # noqa: B018  (what this test proves)


def test_a_one_shard_route_names_exactly_one_shard() -> None:
    target = routed("SELECT name FROM users WHERE user_id = $1", EU)
    assert target == OneShard("europe", write=False)
    assert not hasattr(target, "shards")


def test_a_reference_table_write_goes_to_every_primary_or_is_refused() -> None:
    target = routed("INSERT INTO categories (category_id, slug, name) VALUES ($1, $2, $3)",
                    EU, "s", "n")
    assert target == EveryPrimary(tuple(CONFIG.shards), ("categories",))
    assert not hasattr(target, "shard")
    with pytest.raises(CrossShardError, match="a shard hint"):  # one copy would drift
        routed("UPDATE categories SET name = $1", "n", hint="europe")
    with pytest.raises(CrossShardError, match="touches sharded tables"):
        routed("INSERT INTO categories (category_id, slug, name) "
               "SELECT user_id, email, full_name FROM users")
    assert isinstance(routed("SELECT name FROM categories", hint="asia"), OneShard)


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "snippet.py").write_text(textwrap.dedent(code))
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\npython_version = 3.11\nignore_missing_imports = True\nfollow_imports = silent\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
         "--cache-dir", str(tmp_path / "cache"), str(tmp_path / "snippet.py")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_mypy_refuses_reading_the_shard_of_any_route(tmp_path: Path) -> None:
    refused = _mypy(tmp_path, """
        from router.core.routing import OneShard, Route

        def the_shard(route: Route) -> str:
            return route.shard

        several = OneShard(("europe", "asia"), write=False)
    """)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert 'Item "Scatter" of "OneShard | Scatter | EveryPrimary" has no attribute "shard"' in (
        refused.stdout)
    assert 'Item "EveryPrimary" of "OneShard | Scatter | EveryPrimary" has no attribute "shard"' in (
        refused.stdout)
    # Nor can a one-shard route be made of several (the old Target held a tuple).
    assert 'Argument 1 to "OneShard" has incompatible type "tuple[str, str]"' in refused.stdout
    # Matched by kind, as the executor does, the same read type-checks; a kind left out
    # does not.
    matched = _mypy(tmp_path, """
        from typing import assert_never
        from router.core.routing import EveryPrimary, OneShard, Route, Scatter

        def the_shards(route: Route) -> tuple[str, ...]:
            match route:
                case OneShard():
                    return (route.shard,)
                case Scatter() | EveryPrimary():
                    return route.shards
                case _:
                    assert_never(route)

        def forgets_scatter(route: Route) -> str:
            match route:
                case OneShard():
                    return route.shard
                case _:
                    assert_never(route)
    """)
    assert matched.returncode == 1, matched.stdout + matched.stderr
    errors = [line for line in matched.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, matched.stdout  # the_shards is fine; forgets_scatter is not
    assert '"assert_never" has incompatible type "Scatter | EveryPrimary"' in errors[0], (
        matched.stdout)
