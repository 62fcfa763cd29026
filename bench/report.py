"""What a run leaves behind: the terminal table, results JSON, a PNG chart, and RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "profile_md", "render_table", "write_chart", "write_json",
           "write_results_md"]

TARGET_ORDER = ("direct", "georoute", "pgbouncer", "pgpool")


def machine_info() -> dict[str, Any]:
    mem_kib = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in fh
                              if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _ordered(targets: dict[str, Any]) -> list[str]:
    return sorted(targets, key=lambda n: TARGET_ORDER.index(n) if n in TARGET_ORDER else 99)


def _row(workload: str, c: Any, name: str, t: dict[str, Any], ratio: dict[str, Any] | None
         ) -> list[str]:
    if t.get("status") != "ok":
        return [workload, str(c), name, t.get("status", "?"), "", "", "", "", "", "", ""]
    r = ratio or {}
    return [
        workload, str(c), name, f"{t['ops_per_s']:,.0f}", f"{t['p50_ms']:.2f}",
        f"{t['p99_ms']:.2f}", str(t["errors"]),
        f"{r['throughput']:.2f}x" if r.get("throughput") is not None else "",
        f"{r['p99']:.2f}x" if r.get("p99") is not None else "",
        _us(t.get("client_cpu_us_per_op")), _us(t.get("router_cpu_us_per_op")),
    ]


def _us(value: Any) -> str:
    return "" if value is None else f"{value:.0f}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, w in results["workloads"].items():
        for target in _ordered(w["targets"]):
            rows.append(_row(name, w["concurrency"], target, w["targets"][target],
                             w["ratios"].get(f"{target}/direct")))
    for step in results.get("sweep", {}).get("steps", []):
        for target in _ordered(step["targets"]):
            rows.append(_row("sweep:read", step["concurrency"], target, step["targets"][target],
                             step["ratios"].get(f"{target}/direct")))
    for step in results.get("data_sweep", {}).get("steps", []):
        for target in _ordered(step["targets"]):
            rows.append(_row(f"data:read {step['users']} users", step["concurrency"], target,
                             step["targets"][target],
                             step["ratios"].get(f"{target}/direct")))
    return rows


HEADER = ["workload", "clients", "target", "ops/s", "p50 ms", "p99 ms", "errors",
          "ops/s vs direct", "p99 vs direct", "bench CPU us/op", "router CPU us/op"]


def render_table(results: dict[str, Any]) -> str:
    rows = [HEADER, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> str:
    rows = table_rows(results)
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_json(results: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"results-{stamp}.json"
    text = json.dumps(results, indent=2, default=str) + "\n"
    path.write_text(text)
    (out_dir / "results.json").write_text(text)
    return path


def write_chart(results: dict[str, Any], path: Path) -> Path | None:
    """Throughput and p99 per target and workload, and both against clients (the sweep)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    workloads = {n: w for n, w in results["workloads"].items()
                 if any(t.get("status") == "ok" for t in w["targets"].values())}
    names = list(workloads)
    targets = [t for t in TARGET_ORDER
               if any(t in w["targets"] for w in workloads.values())]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    width = 0.8 / max(len(targets), 1)
    for col, (key, label) in enumerate((("ops_per_s", "ops/s"), ("p99_ms", "p99 latency, ms"))):
        ax = axes[0][col]
        for i, t in enumerate(targets):
            values = [workloads[n]["targets"].get(t, {}).get(key, 0) or 0 for n in names]
            xs = [x + (i - (len(targets) - 1) / 2) * width for x in range(len(names))]
            ax.bar(xs, values, width, label=t)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
        ax.set_title(f"{label} by workload ({next(iter(workloads.values()))['concurrency']} "
                     "clients)" if workloads else label)
        ax.legend()
        ax = axes[1][col]
        steps = results.get("sweep", {}).get("steps", [])
        for t in targets:
            pts = [(s["concurrency"], s["targets"][t][key]) for s in steps
                   if s["targets"].get(t, {}).get("status") == "ok"]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t)
        ax.set_xscale("log", base=2)
        if key == "p99_ms":
            ax.set_yscale("log")
        ax.set_xlabel("clients")
        ax.set_ylabel(label)
        ax.set_title(f"point reads: {label} vs clients")
        ax.legend()
    fig.suptitle(f"georoute bench, {results['meta']['started']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# Frames under every sample (start-up), left out of the inclusive table.
_ENTRY_POINTS = ("router/tools/cli.py", "router/tools/daemon_cli.py", "router/node.py")
NOTES_START, NOTES_END = "<!-- notes: kept across runs -->", "<!-- /notes -->"


def _kept_notes(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return ""
    if NOTES_START in text and NOTES_END in text:
        return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    return ""


_REPO = Path(__file__).resolve().parent.parent


def _shown(path: Any) -> str:
    """A path as the report shows it: relative to the repository, never this machine's."""
    try:
        return str(Path(path).resolve().relative_to(_REPO))
    except ValueError:
        return Path(path).name


def profile_md(profile: dict[str, Any]) -> list[str]:
    if profile.get("status") != "ok":
        return [f"py-spy: {profile.get('status')}: {profile.get('detail', '')}", ""]
    frames = ("Python and native frames (`--native`, which pauses the process per sample)"
              if profile.get("native") else "Python frames only")
    lines = [f"py-spy on the router process, {profile['seconds']} s of "
             f"{profile.get('workload', 'point reads')} at "
             f"{profile['concurrency']} clients ({profile['load_ops_per_s']:,.0f} ops/s while "
             f"sampled): {profile['samples']} busy samples ({profile.get('idle_samples', 0)} "
             f"idle ones left out), {frames}; raw stacks in `{_shown(profile['raw'])}`. "
             "Percentages are of busy samples.", "",
             "| own samples: function | % |", "|---|---|"]
    lines += [f"| `{f['name']}` | {f['pct']} |" for f in profile["own"][:12]]
    if profile.get("native_callers"):
        lines += ["", "| native leaf <- nearest Python caller | % |", "|---|---|"]
        lines += [f"| `{f['name']}` | {f['pct']} |" for f in profile["native_callers"][:8]]
    lines += ["", "| by package (own samples) | % |", "|---|---|"]
    lines += [f"| {p['name']} | {p['pct']} |" for p in profile["packages"][:10]]
    own_code = [f for f in profile["inclusive"]
                if any(f"({p}/" in f["name"] for p in ("router", "protocol"))
                and not any(f"({e})" in f["name"] for e in _ENTRY_POINTS)]
    lines += ["", "| inclusive: georoute's own functions | % |", "|---|---|"]
    lines += [f"| `{f['name']}` | {f['pct']} |" for f in own_code[:10]]
    return [*lines, ""]


def write_results_md(results: dict[str, Any], path: Path, chart: Path | None) -> None:
    meta = results["meta"]
    m, v = meta["machine"], meta["versions"]
    notes = _kept_notes(path)
    lines = [
        "# Benchmark results",
        "",
        f"Figures from one run of `{meta['command']}` started {meta['started']} (UTC) and "
        f"finished {meta['finished']}, on the machine below. Every target ran on this same "
        "machine as the databases, the router and the load generator (one Python process on "
        "uvloop), so all "
        "compete for the same cores: read the ratios, not the absolute numbers. `bench CPU "
        "us/op` is the load generator's own CPU time per request (asyncpg or the georoute "
        "client library); `router CPU us/op` is the router process's (utime+stime from /proc).",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, {m['kernel']}; "
        f"load average (1/5/15 min) {meta['loadavg_start']} at start, {meta['loadavg_end']} "
        "at end (other work shared the machine)",
        f"- Versions: {v['postgresql']}; {v['pgbouncer']}; {v['pgpool']}; Python {m['python']}; "
        f"asyncpg {v['asyncpg']}; uvloop {v['uvloop']}",
        f"- Data: `--users {meta['options']['users']}` (seed 42); shard `{meta['shard']}`; "
        f"{meta['options']['rounds']} interleaved rounds of {meta['options']['duration']} s "
        f"per target (after {meta['options']['warmup']} s warm-up), median of rounds.",
        "",
        "Targets:",
        "",
    ]
    lines += [f"- **{name}**: {desc}" for name, desc in meta["targets"].items()]
    lines += ["", "## Figures", "", markdown_table(results), ""]
    if chart is not None:
        lines += [f"Chart: `{_shown(chart)}` (bench/out is not committed).", ""]
    lines += ["## georoute router process", ""]
    for name, w in results["workloads"].items():
        g = w["targets"].get("georoute", {})
        if g.get("status") == "ok":
            lines.append(f"- {name}: {g.get('router_cpu_us_per_op')} us of router CPU per "
                         f"request ({g.get('router_user_us_per_op')} user + "
                         f"{g.get('router_sys_us_per_op')} system); RSS "
                         f"{g.get('router_rss_kib', 0) / 1024:.1f} MiB")
    lines.append("")
    headline = results.get("headline", [])
    if headline:
        lines += ["## Headline", "", *[f"- {h}" for h in headline], ""]
    if results.get("placement"):
        lines += ["## Where point reads land", "",
                  "Each target ran its point reads over the same number of sessions, and "
                  "PostgreSQL said which node answered (`current_setting('port')`).", "",
                  "| target | on replica | on primary |", "|---|---|---|"]
        for name, where in results["placement"].items():
            total = sum(where.values()) or 1
            rep, pri = where.get("replica", 0), where.get("primary", 0)
            lines.append(f"| {name} | {rep} ({100 * rep / total:.0f}%) | "
                         f"{pri} ({100 * pri / total:.0f}%) |")
        lines.append("")
    if results.get("pgbench"):
        lines += ["## pgbench -S (reference)", "", "| target | tps | latency avg ms |",
                  "|---|---|---|"]
        for name, r in results["pgbench"].items():
            if "tps" in r:
                lines.append(f"| {name} | {r['tps']:,.0f} | {r['latency_ms']:.3f} |")
            else:
                lines.append(f"| {name} | {r.get('status', '')} | |")
        lines.append("")
    if results.get("profile"):
        lines += ["## Profile of the router", "", *profile_md(results["profile"])]
    if results.get("profile_native"):
        lines += ["### With native frames", "", *profile_md(results["profile_native"])]
    if results.get("skipped"):
        lines += ["## Skipped", "", *[f"- {s}" for s in results["skipped"]], ""]
    lines += ["## Notes", "", NOTES_START, notes, NOTES_END, ""]
    path.write_text("\n".join(lines))
