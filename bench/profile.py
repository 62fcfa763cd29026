"""Sampling the router process with py-spy (if it is installed) while point reads run, and
summarising where its CPU goes: top functions by own samples, and by package."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.targets import Target
from bench.workloads import POINT_READ, Sample, Workload, measure

__all__ = ["find_py_spy", "profile_router", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _package(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1].lstrip("/")
            if marker == "/lib/python3":
                return "stdlib:" + rest.split("/", 2)[1] if rest.count("/") >= 1 else "stdlib"
            return rest.split("/", 1)[0].removesuffix(".py")
    parts = Path(path).parts
    for top in ("router", "protocol", "client", "api"):
        if top in parts:
            return top
    return path or "?"


# Leaf functions where a thread waits rather than works (the event loop, the metrics thread).
_IDLE_LEAVES = frozenset({"epoll_wait", "epoll_pwait", "poll", "select", "_PollLikeSelector.select",
                          "select_poll_poll_impl", "pthread_cond_timedwait", "sem_timedwait"})


def _label(frame: str) -> tuple[str, bool]:
    """"func (file)" for a collapsed frame, and whether it is Python code (a .py file)."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), False
    return f"{m['func']} ({m['file']})", m["file"].endswith(".py") or m["file"].startswith("<")


def summarise(raw: str, top: int = 40) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output, over the samples where the router was busy: own
    samples per function and package, inclusive samples, and for native leaves (system calls,
    C code) the nearest Python caller."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    callers: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        labels = [_label(f) for f in frames]
        leaf, leaf_is_python = labels[-1]
        if leaf.split(" (")[0] in _IDLE_LEAVES:
            idle += n
            continue
        total += n
        own[leaf] += n
        for name in {name for name, _ in labels}:
            inclusive[name] += n
        m = _FRAME.match(frames[-1].strip())
        packages[_package(m["file"]) if m else "?"] += n
        if not leaf_is_python:
            py = next((name for name, is_py in reversed(labels) if is_py), "?")
            callers[f"{leaf.split(' (')[0]} <- {py}"] += n

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "samples": v, "pct": round(100 * v / max(total, 1), 1)}
                for k, v in counter.most_common(top)]

    return {"samples": total, "idle_samples": idle, "own": pct(own),
            "inclusive": pct(inclusive), "packages": pct(packages),
            "native_callers": pct(callers)}


async def profile_router(py_spy: str, pid: int, target: Target, sample: Sample,
                         concurrency: int, seconds: int, out_dir: Path,
                         native: bool = False,
                         workload: Workload = POINT_READ) -> dict[str, Any]:
    """Run `workload` (point reads) through `target` while py-spy samples `pid` for
    `seconds`."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    suffix = "" if workload is POINT_READ else f"-{workload.name}"
    raw_path = out_dir / (f"router-profile{suffix}-native.txt" if native
                          else f"router-profile{suffix}.txt")
    # --native also samples C/Cython frames (asyncpg's protocol, uvloop, system calls); it
    # needs to pause the process per sample (no --nonblocking), which slows it somewhat.
    proc = await asyncio.create_subprocess_exec(
        py_spy, "record", "--format", "raw", "--rate", "250", "--duration", str(seconds),
        "--pid", str(pid), "--output", str(raw_path),
        *(["--native"] if native else ["--nonblocking"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    await target.open(concurrency)
    try:
        load = await measure(target, workload, sample, concurrency, seconds + 1.0, 10**8)
    finally:
        await target.close()
    async with asyncio.timeout(60):
        output, _ = await proc.communicate()
    try:
        raw = await asyncio.to_thread(raw_path.read_text, errors="replace")
    except OSError:
        raw = ""
    if proc.returncode != 0 or not raw:
        return {"status": "failed", "detail": output.decode(errors="replace")[-400:]}
    summary = summarise(raw)
    summary.update(status="ok", seconds=seconds, concurrency=concurrency, native=native,
                   workload="point reads" if workload is POINT_READ else workload.name,
                   load_ops_per_s=round(load.ops_per_s, 1), raw=str(raw_path))
    return summary
