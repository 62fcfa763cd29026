"""Built-in functions the shards' catalogue says are not volatile count as reads
(router.read_only_builtins), matched as PostgreSQL resolves names; a few that cannot run on a
standby stay writes whatever the catalogue says. (Against a real standby:
tests/integration/test_builtin_reads.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from router.config import Config, load_config
from router.core.classify import BUILTIN_PRIMARY_ONLY, Analyzer, StatementKind
from router.engine.classifier import Classifier
from router.engine.runtime import Runtime
from router.ha.topology import Topology

CONFIG = load_config(Path(__file__).resolve().parents[2] / "router.toml")
LEARNED = frozenset({"md5", "format", "array_length", *BUILTIN_PRIMARY_ONLY})


def _kind(analyzer: Analyzer | Classifier, sql: str) -> StatementKind:
    return analyzer.analyze(sql).kind


@pytest.mark.parametrize(("sql", "kind"), [
    ("SELECT md5($1)", StatementKind.READ),
    ("SELECT pg_catalog.md5($1), format('%s', 1)", StatementKind.READ),
    ("SELECT array_length(ARRAY[1, 2], 1), count(*) FROM pg_class", StatementKind.READ),
    # Another schema's md5, or a quoted "MD5", is another function.
    ("SELECT public.md5($1)", StatementKind.WRITE),
    ('SELECT "MD5"($1)', StatementKind.WRITE),
    # Not learned: a write, as before.
    ("SELECT sha256($1)", StatementKind.WRITE),
    # Learned, yet they cannot run on a standby.
    ("SELECT txid_current()", StatementKind.WRITE),
    ("SELECT pg_current_xact_id()", StatementKind.WRITE),
    ("SELECT pg_walfile_name('0/1000000')", StatementKind.WRITE),
    # A read function does not make a locking or writing statement a read.
    ("SELECT md5($1) FOR UPDATE", StatementKind.WRITE),
])
def test_learned_builtins_are_reads_as_postgresql_resolves_them(
        sql: str, kind: StatementKind) -> None:
    config = CONFIG
    analyzer = Analyzer(config.tables, config.router.read_only_functions,
                        builtin_reads=LEARNED)
    assert _kind(analyzer, sql) is kind


def test_learning_later_forgets_what_was_classified_before() -> None:
    config = CONFIG
    classifier = Classifier(config.tables, config.router.read_only_functions)
    assert _kind(classifier, "SELECT md5($1)") is StatementKind.WRITE  # cached as a write
    classifier.learn_builtin_reads(LEARNED)
    assert _kind(classifier, "SELECT md5($1)") is StatementKind.READ
    assert _kind(classifier, "SELECT txid_current()") is StatementKind.WRITE


@pytest.mark.parametrize(("enabled", "kind"), [(True, StatementKind.READ),
                                               (False, StatementKind.WRITE)])
def test_the_setting_turns_the_learned_list_on_and_off(enabled: bool,
                                                      kind: StatementKind) -> None:
    base = CONFIG
    config: Config = replace(base, router=replace(base.router, read_only_builtins=enabled))
    runtime = Runtime.build(config, Topology.from_config(config), builtin_reads=LEARNED)
    assert _kind(runtime.classifier, "SELECT md5($1)") is kind


async def test_the_list_is_asked_of_each_node_in_turn_until_one_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No node answers in the first round (the router starts while its nodes are down): it
    asks again, and the first node that answers gives the list."""
    from router.backend import catalog
    from router.config import NodeAddress

    asked: list[str] = []

    async def listed(db: object, address: NodeAddress) -> frozenset[str]:
        asked.append(address.host)
        if len(asked) < 3 or address.host == "a":
            raise OSError("connection refused")
        return frozenset({"md5"})

    monkeypatch.setattr(catalog, "builtin_reads", listed)
    learned: list[frozenset[str]] = []
    nodes = [("a", NodeAddress("a", 1, "db")), ("b", NodeAddress("b", 2, "db"))]
    await catalog.learn_builtin_reads(CONFIG.database, lambda: nodes, learned.append,
                                      retry_seconds=0)
    assert asked == ["a", "b", "a", "b"]
    assert learned == [frozenset({"md5"})]
