"""The benchmark harness works end to end: `python -m bench --smoke` starts its own cluster,
router and (if installed) peers, runs every workload for a moment and writes results JSON.
Figures are checked for being measured at all, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    workloads = results["workloads"]
    assert set(workloads) == {"point_read", "write", "mixed", "catalogue", "count_by_region"}
    for name in ("point_read", "write", "mixed"):
        for target in ("georoute", "direct"):
            figures = workloads[name]["targets"][target]
            assert figures["status"] == "ok", (name, target, figures)
            assert figures["ops_per_s"] > 0 and figures["p99_ms"] > 0, (name, target)
        assert workloads[name]["ratios"]["georoute/direct"]["throughput"] > 0
    assert workloads["point_read"]["targets"]["georoute"]["router_cpu_us_per_op"] is not None

    for name in ("catalogue", "count_by_region"):  # cross-shard reads: router vs by hand
        for target in ("georoute", "direct"):
            figures = workloads[name]["targets"][target]
            assert figures["status"] == "ok" and figures["errors"] == 0, (name, target, figures)
        assert workloads[name]["ratios"]["georoute/direct"]["throughput"] > 0

    steps = results["sweep"]["steps"]
    assert steps and all(s["targets"]["georoute"]["ops_per_s"] > 0 for s in steps)
    assert list(out.glob("*.png")) or "matplotlib" in " ".join(results["skipped"])
