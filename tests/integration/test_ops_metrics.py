"""ops/ against a real router: every metric the Grafana dashboard and the alert rules name is in
a scrape of a real `georoute router` (with a heartbeat peer, after traffic that touches every
path), with samples, and every label they select or group by is on that metric."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import client
from router.config import Config
from router.ha.shard_checks import record_backup
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster
from tests.support.ids import new_id
from tests.support.router_proc import (
    REGIONS,
    SCRATCH_DDL,
    TOKEN,
    RouterProcess,
    number,
    router_config,
    running_router,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "grafana" / "georoute.json"
RULES = REPO / "ops" / "prometheus" / "georoute-alerts.yml"
PORT_SHIFT = 175
CHECK_INTERVAL = 0.3  # router.shard_check_interval_seconds of the test's router
SECRET = "ops-metrics-test-secret-0123456789"
# Labels Prometheus adds to every series it scrapes (the router does not export them), and
# metrics Prometheus makes itself.
TARGET_LABELS = {"instance", "job"}
PROMETHEUS_OWN = {"up"}

_METRIC = re.compile(r"\b(georoute_[a-z0-9_]+|up)\b(?!\s*\()")
_SELECTOR = re.compile(r"\b(georoute_[a-z0-9_]+|up)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def ops_router(cluster: LocalCluster, migrated: Config) -> Iterator[RouterProcess]:
    """A router with one heartbeat peer (that never answers), so the peer metrics exist."""
    base = router_config(migrated, port_shift=PORT_SHIFT,
                         shard_check_interval_seconds=CHECK_INTERVAL)
    ghost = f"ghost@127.0.0.1:{base.heartbeat.port + 1}"
    config = replace(base, heartbeat=replace(base.heartbeat, peers=(ghost,)))
    path = Path(migrated.cluster.state_dir) / "router-ops.toml"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(config.heartbeat.secret_env, SECRET)
        with running_router(config, path) as proc:
            yield proc


async def _traffic(proc: RouterProcess) -> None:
    """A write and a read on every shard, a cross-shard read, refusals and a session change."""
    async with await client.connect(proc.dsn, token=TOKEN) as db:
        for region in REGIONS:
            await db.execute(SCRATCH_DDL, shard=region)
            item = new_id(number(proc.config, region))
            await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, $2)", item,
                             region)
            await db.fetchrow("SELECT * FROM rt_items WHERE item_id = $1", item)
        await db.fetchval("SELECT count(*) FROM rt_items")  # every shard, merged
        with pytest.raises(client.CrossShardError):
            await db.fetch("SELECT DISTINCT payload FROM rt_items")
        with pytest.raises(client.GeorouteError):
            await db.fetch("SELEC nonsense")
        # A session change: the pooled connection is closed rather than reused.
        await db.execute("SET application_name = 'ops-test'", shard="europe")
        await db.docs("user_preferences").find_one({"user_id": str(uuid.uuid4())})


def _scrape(proc: RouterProcess) -> tuple[dict[str, set[str]], set[tuple[str, str, str]]]:
    """Sample name -> the label names its samples carry (names with no sample are absent), and
    every (sample name, label, value) seen."""
    url = f"http://127.0.0.1:{proc.config.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    names: dict[str, set[str]] = {}
    values: set[tuple[str, str, str]] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
            values.update((sample.name, k, v) for k, v in sample.labels.items())
    return names, values


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    queries.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard["panels"])
    walk(dashboard["templating"])
    return queries


def _rule_queries() -> list[str]:
    """Every `expr:` of the rules file (single-line or a `|` block)."""
    queries: list[str] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        key, _, rest = line.strip().partition(":")
        if key != "expr":
            continue
        rest = rest.strip()
        if rest == "|":
            indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
            block = []
            for follow in lines[i + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) < indent:
                    break
                block.append(follow.strip())
            rest = " ".join(block)
        queries.append(rest)
    return queries


def _problems(queries: list[str], scraped: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    for query in queries:
        metrics = set(_METRIC.findall(query))
        assert metrics, f"no metric in {query!r}"
        for metric in metrics - PROMETHEUS_OWN:
            if metric not in scraped:
                problems.append(f"{metric}: not in the scrape (in {query!r})")
        known = set(TARGET_LABELS)
        for metric in metrics - PROMETHEUS_OWN:
            known |= scraped.get(metric, set())
        for metric, matchers in _SELECTOR.findall(query):
            own = scraped.get(metric, set()) | TARGET_LABELS
            for label in _MATCHER.findall(matchers):
                if metric not in PROMETHEUS_OWN and label not in own:
                    problems.append(f"{metric}{{{label}=...}}: no such label (in {query!r})")
        for grouping in _GROUPING.findall(query):
            for label in filter(None, (g.strip() for g in grouping.split(","))):
                if label not in known:
                    problems.append(f"by ({label}): on none of {sorted(metrics)} ({query!r})")
    return problems


async def _scrape_when(proc: RouterProcess, holds: Callable[[set[tuple[str, str, str]]], bool],
                       what: str, within: float = 10.0) -> tuple[dict[str, set[str]],
                                                                   set[tuple[str, str, str]]]:
    """Scrape until `holds` is true of the samples' (name, label, value)s, within a deadline
    (the periodic shard check runs every CHECK_INTERVAL)."""
    deadline = time.monotonic() + within
    while True:
        scraped, values = await asyncio.to_thread(_scrape, proc)
        if holds(values):
            return scraped, values
        assert time.monotonic() < deadline, (f"timed out waiting for {what}; the router "
                                             "said:\n" + "".join(proc.output[-20:]))
        await asyncio.sleep(CHECK_INTERVAL / 3)


def _sample(proc: RouterProcess, name: str, label: str, value: str) -> float | None:
    url = f"http://127.0.0.1:{proc.config.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get(label) == value:
                return float(sample.value)
    return None


async def test_every_metric_the_dashboard_and_the_alerts_name_is_in_a_real_scrape(
    ops_router: RouterProcess,
) -> None:
    await _traffic(ops_router)
    # The shard check's series exist once it has read every shard (at start, then regularly).
    scraped, values = await _scrape_when(
        ops_router, lambda v: any(n == "georoute_reference_table_diverged" for n, _, _ in v),
        "the first shard check")
    dashboard, rules = _dashboard_queries(), _rule_queries()
    assert len(dashboard) >= 20 and len(rules) >= 8, (len(dashboard), len(rules))
    problems = _problems(dashboard, scraped) + _problems(rules, scraped)
    assert not problems, "\n".join(problems)
    # Labeled counters are in the scrape with every label value before it is first used
    # (the traffic above causes neither an INTERNAL error nor a too_large refusal).
    assert ("georoute_errors_total", "code", "INTERNAL") in values
    assert ("georoute_scatter_refusals_total", "reason", "too_large") in values
    # The role values the node alerts select on are the ones the router reports.
    for role in ("primary", "replica"):
        assert ("georoute_node_up", "role", role) in values, role


async def test_the_shard_check_reports_diverged_reference_tables_and_the_last_backup(
    ops_router: RouterProcess, migrated: Config
) -> None:
    """A reference table whose copy differs on one shard is 1 in
    georoute_reference_table_diverged{table} until the copies agree again; a backup recorded on
    a shard (as `georoute backup` records it) is its georoute_backup_last_success_timestamp."""
    table = f"ops_ref_{uuid.uuid4().hex[:8]}"
    conns = {r: await connect_node(migrated, migrated.shards[r].primary) for r in REGIONS}
    try:
        for conn in conns.values():
            await conn.execute(f"CREATE TABLE {table} (v int PRIMARY KEY)")
            await conn.execute(f"INSERT INTO {table} VALUES (1), (2)")
        await conns["asia"].execute(f"UPDATE {table} SET v = 3 WHERE v = 2")  # one copy only

        def diverged(v: str) -> Callable[[set[tuple[str, str, str]]], bool]:
            return lambda _: _sample(ops_router, "georoute_reference_table_diverged",
                                     "table", table) == float(v)

        await _scrape_when(ops_router, diverged("1"), f"{table} reported diverged")
        await conns["asia"].execute(f"UPDATE {table} SET v = 2 WHERE v = 3")
        await _scrape_when(ops_router, diverged("0"), f"{table} reported agreeing again")

        finished = datetime.now(UTC).replace(microsecond=0)
        await record_backup(conns["europe"], f"ops-test-{table}", finished, 1, "test")
        await _scrape_when(
            ops_router,
            lambda _: _sample(ops_router, "georoute_backup_last_success_timestamp_seconds",
                              "shard", "europe") == finished.timestamp(),
            "the recorded backup's time")
    finally:
        for conn in conns.values():
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conns["europe"].execute("DELETE FROM georoute_backups WHERE backup_id = $1",
                                      f"ops-test-{table}")
        for conn in conns.values():
            await conn.close()


def test_the_check_catches_a_metric_or_label_that_does_not_exist() -> None:
    scraped = {"georoute_node_up": {"node", "role"}}
    assert _problems(["max by (node) (georoute_node_up)"], scraped) == []
    assert _problems(['georoute_node_up{instance=~"$i"}'], scraped) == []
    assert len(_problems(["georoute_failovers_total"], scraped)) == 1
    assert len(_problems(['georoute_node_up{shard="eu"}'], scraped)) == 1
    assert len(_problems(["sum by (shard) (georoute_node_up)"], scraped)) == 1
