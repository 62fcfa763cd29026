"""The run plan: every workload against every target at one concurrency, interleaved round by
round (so drift hits all targets alike), the cross-shard reads, and the concurrency sweep."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stack import cpu_seconds, rss_kib, syscalls
from bench.targets import GeorouteTarget, Target
from bench.workloads import (
    POINT_READ,
    SCATTER_WORKLOADS,
    Measurement,
    Sample,
    Workload,
    measure,
    median,
)

__all__ = ["Plan", "aggregate", "run_main", "run_scatter", "run_sweep"]

@dataclass(frozen=True, slots=True)
class Plan:
    concurrency: int
    duration: float
    warmup: float
    rounds: int
    sweep: tuple[int, ...]
    sweep_duration: float
    max_ops: int = 2_000_000  # per measurement: a bound besides the duration


@dataclass
class Recorder:
    router_pid: int | None
    log: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.log.append(text)


async def _measure(rec: Recorder, target: Target, workload: Workload, sample: Sample,
                   concurrency: int, duration: float, plan: Plan, seed: int) -> dict[str, Any]:
    """One warmed-up measurement; for georoute also the router's CPU time per op and RSS."""
    if plan.warmup > 0:
        await measure(target, workload, sample, concurrency, plan.warmup, plan.max_ops, seed + 7)
    pid = rec.router_pid if isinstance(target, GeorouteTarget) else None
    cpu_before = cpu_seconds(pid) if pid else (0.0, 0.0)
    io_before = syscalls(pid) if pid else (0, 0)
    own_before = time.process_time()
    m: Measurement = await measure(target, workload, sample, concurrency, duration,
                                   plan.max_ops, seed)
    own = time.process_time() - own_before
    out = m.summary()
    # The load generator's own CPU per request: it differs by target (client library).
    out["client_cpu_us_per_op"] = round(own / m.ops * 1e6, 1) if m.ops else None
    if pid:
        user, system = (after - before for after, before in zip(cpu_seconds(pid), cpu_before,
                                                                strict=True))
        out["router_cpu_s"] = round(user + system, 3)
        per_op = 1e6 / m.ops if m.ops else 0.0
        out["router_cpu_us_per_op"] = round((user + system) * per_op, 1) if m.ops else None
        out["router_user_us_per_op"] = round(user * per_op, 1) if m.ops else None
        out["router_sys_us_per_op"] = round(system * per_op, 1) if m.ops else None
        out["router_rss_kib"] = rss_kib(pid)
        reads, writes = (after - before for after, before in zip(syscalls(pid), io_before,
                                                                 strict=True))
        out["router_reads_per_op"] = round(reads / m.ops, 2) if m.ops else None
        out["router_writes_per_op"] = round(writes / m.ops, 2) if m.ops else None
    extra = f" client {out['client_cpu_us_per_op']} us/op"
    if pid:
        extra += (f" router {out['router_cpu_us_per_op']} us/op (sys "
                  f"{out['router_sys_us_per_op']}; {out['router_reads_per_op']} reads "
                  f"{out['router_writes_per_op']} writes)")
    rec.say(f"  {workload.name:<10} c={concurrency:<4} {target.name:<10} "
            f"{out['ops_per_s']:>9.0f} ops/s  p99 {out['p99_ms']:>7.2f} ms  "
            f"errors {out['errors']}{extra}")
    return out


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of throughput and latency; errors summed; the rounds kept."""
    agg: dict[str, Any] = {"status": "ok", "rounds": rounds}
    for key in ("ops_per_s", "mean_ms", "p50_ms", "p99_ms"):
        agg[key] = round(median([r[key] for r in rounds]), 3)
    agg["errors"] = sum(r["errors"] for r in rounds)
    agg["first_error"] = next((r["first_error"] for r in rounds if r["first_error"]), None)
    client = [r["client_cpu_us_per_op"] for r in rounds if r.get("client_cpu_us_per_op")]
    agg["client_cpu_us_per_op"] = round(median(client), 1) if client else None
    if any("router_cpu_us_per_op" in r for r in rounds):
        for key in ("router_cpu_us_per_op", "router_user_us_per_op", "router_sys_us_per_op",
                    "router_reads_per_op", "router_writes_per_op"):
            values = [r[key] for r in rounds if r.get(key) is not None]
            agg[key] = round(median(values), 1) if values else None
        agg["router_rss_kib"] = max(r["router_rss_kib"] for r in rounds)
    if agg["ops_per_s"] <= 0:
        agg["status"] = "failed"
    return agg


def ratios(targets: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """target/direct for throughput and p99, for every target measured in the same run."""
    base = targets.get("direct")
    out: dict[str, dict[str, float | None]] = {}
    if not base or base.get("status") != "ok":
        return out
    for name, t in targets.items():
        if name == "direct" or t.get("status") != "ok":
            continue
        out[f"{name}/direct"] = {
            "throughput": round(t["ops_per_s"] / base["ops_per_s"], 3)
            if base["ops_per_s"] else None,
            "p99": round(t["p99_ms"] / base["p99_ms"], 3) if base["p99_ms"] else None,
        }
    return out


async def open_targets(rec: Recorder, targets: Sequence[Target], concurrency: int,
                       failed: dict[str, str]) -> list[Target]:
    opened = []
    for t in targets:
        if t.name in failed:
            continue
        try:
            await t.open(concurrency)
        except Exception as exc:
            failed[t.name] = f"could not connect: {type(exc).__name__}: {exc}"[:300]
            rec.say(f"  {t.name}: {failed[t.name]}")
            await t.close()
            continue
        opened.append(t)
    return opened


async def close_targets(targets: Sequence[Target]) -> None:
    for t in targets:
        await t.close()


async def run_main(rec: Recorder, targets: Sequence[Target], workloads: Sequence[Workload],
                   sample: Sample, plan: Plan, failed: dict[str, str]) -> dict[str, Any]:
    """Workload by workload, round by round, target by target (A B C D, A B C D, ...)."""
    c = plan.concurrency
    opened = await open_targets(rec, targets, c, failed)
    results: dict[str, Any] = {}
    try:
        for workload in workloads:
            rec.say(f"{workload.name}: {workload.title}, {c} clients, "
                    f"{plan.rounds} x {plan.duration:g} s per target")
            rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in opened}
            for r in range(plan.rounds):
                for t in opened:
                    rounds[t.name].append(
                        await _measure(rec, t, workload, sample, c, plan.duration, plan, r + 1))
            per_target: dict[str, dict[str, Any]] = {n: aggregate(v) for n, v in rounds.items()}
            for name, why in failed.items():
                per_target[name] = {"status": "skipped", "detail": why}
            results[workload.name] = {"title": workload.title, "concurrency": c,
                                      "status": "ok", "targets": per_target,
                                      "ratios": ratios(per_target)}
    finally:
        await close_targets(opened)
    return results


async def run_scatter(rec: Recorder, scatter: Target, georoute: GeorouteTarget,
                      others: Sequence[str], sample: Sample, plan: Plan) -> dict[str, Any]:
    """The cross-shard reads: georoute (the router reads every shard and merges) against
    asyncpg to every shard at once with the merge in the client, interleaved round by round."""
    c = plan.concurrency
    results: dict[str, Any] = {}
    for workload in SCATTER_WORKLOADS:
        rec.say(f"{workload.name}: {workload.title}, {c} clients")
        targets: dict[str, dict[str, Any]] = {}
        rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "georoute": []}
        try:
            await scatter.open(c)
            await georoute.open(c)
            for r in range(plan.rounds):
                for name, t in (("direct", scatter), ("georoute", georoute)):
                    rounds[name].append(
                        await _measure(rec, t, workload, sample, c, plan.duration, plan, r + 1))
            targets = {name: aggregate(v) for name, v in rounds.items()}
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"[:300]
            targets = {name: {"status": "failed", "detail": detail} for name in rounds}
        finally:
            await scatter.close()
            await georoute.close()
        for name in others:
            targets[name] = {"status": "not applicable", "detail": "fronts one shard only"}
        results[workload.name] = {"title": workload.title, "concurrency": c, "status": "ok",
                                  "targets": targets, "ratios": ratios(targets)}
    return results


async def run_sweep(rec: Recorder, targets: Sequence[Target], sample: Sample, plan: Plan,
                    failed: dict[str, str]) -> dict[str, Any]:
    """Point reads at each concurrency step, every target per step (short, one round)."""
    steps = []
    for c in plan.sweep:
        rec.say(f"sweep: point reads at {c} clients, {plan.sweep_duration:g} s per target")
        per_target: dict[str, dict[str, Any]] = {}
        for t in targets:
            if t.name in failed:
                continue
            opened = await open_targets(rec, [t], c, failed)
            if not opened:
                continue
            try:
                m = await _measure(rec, t, POINT_READ, sample, c, plan.sweep_duration, plan, c)
                per_target[t.name] = aggregate([m])
            finally:
                await close_targets(opened)
        steps.append({"concurrency": c, "targets": per_target, "ratios": ratios(per_target)})
    return {"workload": POINT_READ.name, "duration_s": plan.sweep_duration, "steps": steps}
