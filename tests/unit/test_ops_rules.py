"""ops/: the Prometheus alert rules pass `promtool check rules`, and their unit tests
(`promtool test rules`: alerts that fire when they should, and stay quiet when they should)
pass; the Grafana dashboard is well-formed. Which metrics they name exist is checked against
a real router's scrape in tests/integration/test_ops_metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from protocol.errors import ErrorCode
from protocol.heartbeat import RejectReason
from router.core.membership import PeerState
from tests.support.ci import missing

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops" / "prometheus" / "georoute-alerts.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "georoute-alerts.test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "georoute.json"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool not found (Debian: apt-get install prometheus)")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=RULES.parent, capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_checks_the_alert_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = _run(_promtool(), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_tests_cover_at_least_two_alerts() -> None:
    tested = {
        line.split(":", 1)[1].strip()
        for line in RULE_TESTS.read_text().splitlines()
        if line.strip().startswith("alertname:")
    }
    defined = {
        line.split(":", 1)[1].strip()
        for line in RULES.read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    assert tested <= defined and len(tested) >= 2, (tested, defined)


def test_the_dashboard_is_grafana_json_with_a_query_in_every_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]


def test_the_label_values_the_rules_match_are_the_routers_own() -> None:
    """A renamed error code, peer state or drop reason would silence an alert quietly."""
    text = RULES.read_text()
    found = re.search(r'outcome=~"([^"]+)"', text)
    assert found is not None
    assert set(found.group(1).split("|")) <= set(ErrorCode.__members__)
    assert set(re.findall(r'code="([A-Z_]+)"', text)) <= set(ErrorCode.__members__)
    assert set(re.findall(r'state="([a-z_]+)"', text)) <= {s.value for s in PeerState}
    assert set(re.findall(r'reason="([a-z_]+)"', text)) <= {r.value for r in RejectReason}
