"""The floors a managed-mode router keeps across restarts (router/ha/memory.py): read back
by a new instance, used only for the cluster they were seen in, and never a reason not to
start."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from router.config import Config
from router.ha.memory import FailoverMemory, Recalled, memory_path

CLUSTER = "7412345678901234567"
REBUILT = "7499999999999999999"


def test_a_kept_floor_is_read_back_by_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "state" / "failover-r1.json"
    first = FailoverMemory(path)
    first.keep("europe", CLUSTER, 1, "europe-1")
    first.keep("europe", CLUSTER, 2, "europe-2")
    first.keep("asia", CLUSTER, 1, "asia-1")
    again = FailoverMemory(path)
    assert again.recall("europe", [None, CLUSTER]) == Recalled(2, "europe-2")
    assert again.recall("europe", [CLUSTER]) == Recalled(2, None)  # the primary only once
    assert again.recall("asia", [CLUSTER]) == Recalled(1, "asia-1")
    assert again.recall("north_america", [CLUSTER]) is None  # never seen
    assert not list(path.parent.glob("*.tmp"))


def test_a_floor_waits_for_a_node_of_its_cluster_and_is_forgotten_for_another(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.json"
    FailoverMemory(path).keep("europe", CLUSTER, 3, "europe-2")
    memory = FailoverMemory(path)
    assert memory.recall("europe", []) is None  # no node answered: not known yet
    assert memory.recall("europe", [None]) is None
    assert memory.recall("europe", [CLUSTER]) == Recalled(3, "europe-2")  # nothing forgotten
    # initdb again (the cluster rebuilt, timelines from 1): the floor was another cluster's
    assert memory.recall("europe", [REBUILT]) is None
    assert memory.recall("europe", [CLUSTER]) is None  # forgotten, not just skipped
    memory.keep("europe", REBUILT, 1, "europe-1")
    assert FailoverMemory(path).recall("europe", [REBUILT]) == Recalled(1, "europe-1")


@pytest.mark.parametrize("content", [
    "{not json",
    "[]",
    json.dumps({"version": 99, "shards": {"europe": {"system_identifier": CLUSTER,
                                                     "timeline": 2}}}),
    json.dumps({"version": 1, "shards": []}),
])
def test_a_file_that_cannot_be_read_starts_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    memory = FailoverMemory(path)
    assert memory.recall("europe", [CLUSTER]) is None
    memory.keep("europe", CLUSTER, 2, "europe-2")  # and is replaced by a good one
    assert FailoverMemory(path).recall("europe", [CLUSTER]) == Recalled(2, "europe-2")


def test_bad_entries_are_skipped_and_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "shards": {
        "europe": {"system_identifier": CLUSTER, "timeline": 2},
        "africa": {"system_identifier": CLUSTER, "timeline": 2, "primary": 1},
        "asia": {"system_identifier": CLUSTER, "timeline": True},
        "north_america": {"system_identifier": 7, "timeline": 2},
        "oceania": "2",
    }}))
    memory = FailoverMemory(path)
    assert memory.snapshot() == {"europe": {"system_identifier": CLUSTER, "timeline": 2,
                                            "primary": None}}


def test_a_file_that_cannot_be_written_keeps_the_floor_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    memory = FailoverMemory(blocker / "m.json")  # its directory is a file: ENOTDIR
    memory.keep("europe", CLUSTER, 2, "europe-2")
    assert memory.write_errors == 1
    assert memory.recall("europe", [CLUSTER]) == Recalled(2, None)  # kept here, given already


def test_where_it_lives(test_config: Config, tmp_path: Path) -> None:
    toml = tmp_path / "etc" / "router.toml"
    config = replace(test_config, source=str(toml),
                     cluster=replace(test_config.cluster, state_dir=".georoute"),
                     router=replace(test_config.router, node_name="r1"))
    assert memory_path(config) == tmp_path / "etc" / ".georoute" / "failover-r1.json"
    chosen = replace(config, failover=replace(config.failover, state_file="/var/lib/g/m.json"))
    assert memory_path(chosen) == Path("/var/lib/g/m.json")
    relative = replace(config, failover=replace(config.failover, state_file="m.json"))
    assert memory_path(relative) == tmp_path / "etc" / "m.json"


def test_each_start_takes_an_incarnation_newer_than_the_last_whatever_the_clock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.json"
    assert FailoverMemory(path).next_incarnation(5_000) == 5_000
    assert FailoverMemory(path).next_incarnation(4_000) == 5_001  # the clock stepped back
    assert FailoverMemory(path).next_incarnation(9_000) == 9_000
    raw = json.loads(path.read_text())
    raw["incarnation"] = "soon"
    path.write_text(json.dumps(raw))
    assert FailoverMemory(path).next_incarnation(100) == 100  # a bad one is ignored
