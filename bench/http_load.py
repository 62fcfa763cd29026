"""`python -m bench.http_load < plan.json`: an HTTP/1.1 load generator in a process of its
own, so that the API under test shares no event loop and no interpreter with it. Each client
keeps one connection open and sends its requests in turn, one at a time; it prints a JSON
line: requests answered, errors, p50 and p99 in ms, and its own CPU per request.

The plan: {"host", "port", "duration", "clients": [[request, ...], ...]}, each request a
string of the raw bytes (latin-1) to send. The client is a few lines over asyncio streams
(uvloop): a response is its head, then Content-Length bytes (the API sends no chunked
bodies); httpx spends several times the CPU per request, which on two shared cores shows in
the figures of whatever it measures."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

import uvloop

__all__ = ["run"]


async def _client(host: str, port: int, requests: list[bytes], stop_at: float,
                  latencies: list[float], failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(requests[n % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            if status >= 300 and len(failures) < 20:
                failures.append(f"{status} {body[:200]!r}")
            n += 1
    finally:
        writer.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    clients = [[r.encode("latin-1") for r in requests] for requests in plan["clients"]]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    stop_at = time.perf_counter() + plan["duration"]
    await asyncio.gather(*(_client(plan["host"], plan["port"], requests, stop_at, latencies,
                                   failures) for requests in clients))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    count = len(latencies)
    return {"count": count, "ops": count / plan["duration"], "p50": _percentile(latencies, 0.5),
            "p99": _percentile(latencies, 0.99), "failures": failures,
            "loadgen_cpu_us_per_request": cpu / max(1, count) * 1e6}


if __name__ == "__main__":
    result = uvloop.run(run(json.loads(sys.stdin.read())))
    print(json.dumps(result))
