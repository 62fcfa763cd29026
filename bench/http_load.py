"""The HTTP load generator of `python -m bench.api_load`: Debian's `wrk` (a C event loop,
installed on demand as pgbouncer and pgpool2 are) in a process of its own, so that the API
under test shares no interpreter with it, and spends about as little CPU per request as a
load generator can: on two shared cores every microsecond it takes is one the API, the
router and PostgreSQL do not get. One thread keeps `len(clients)` connections open, each
sending one request at a time; a Lua script hands out the clients' raw requests in turn and
prints wrk's figures as JSON: requests answered, failures, p50 and p99; its own CPU per
request is read from the child's resource usage.

The plan: {"host", "port", "duration", "clients": [[request, ...], ...], "think_ms"}, each
request a string of the raw bytes (latin-1) to send; `think_ms` (optional) is the mean of
each client's pause after an answer before its next request, as the direct path's clients
pause (exponentially distributed, so that the clients do not all wake at once; wrk counts
whole milliseconds). wrk runs whole seconds (at least one)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import ensure_installed, find_program

__all__ = ["lua_script", "parse_figures", "run"]

_MARK = "GEOROUTE-FIGURES "

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MARK{"requests": %d, "duration_us": %d, "p50_us": %.0f, ' ..
    '"p99_us": %.0f, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("MARK", _MARK)


def _lua_string(text: str) -> str:
    """`text` (latin-1) as a Lua string literal: printable ASCII as is, every other byte,
    quote and backslash as a decimal escape."""
    out = []
    for byte in text.encode("latin-1"):
        if 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_script(clients: list[list[str]], think_ms: int = 0) -> str:
    """A wrk script sending the clients' requests interleaved (one of each client's in turn,
    as they arrive when every client sends its next at once), round and round; with
    `think_ms`, each connection pauses after an answer (wrk's `delay`) for a time drawn from
    an exponential distribution of that mean."""
    longest = max(len(requests) for requests in clients)
    order = [requests[n % len(requests)] for n in range(longest) for requests in clients]
    delay = (f"math.randomseed(1)\ndelay = function()\n"
             f"  return math.floor(-math.log(1 - math.random()) * {float(think_ms)!r} + 0.5)\n"
             "end\n" if think_ms > 0 else "")
    return ("local requests = {\n" + ",\n".join(_lua_string(r) for r in order) + "\n}\n"
            "local count = #requests\nlocal n = 0\n"
            "request = function()\n  n = n + 1\n  return requests[(n - 1) % count + 1]\nend\n"
            + delay + _DONE)


def parse_figures(output: str, duration: float) -> dict[str, Any]:
    """The figures line the script's `done` printed, in the form bench/api_load.py reads."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            raw = json.loads(line[len(_MARK):])
            break
    else:
        raise RuntimeError(f"wrk printed no figures:\n{output[-2000:]}")
    count = int(raw["requests"])
    seconds = raw["duration_us"] / 1e6 or duration
    failures = [f"{raw[kind]} {kind} errors" for kind in
                ("status", "connect", "read", "write", "timeout") if raw[kind]]
    if failures:
        failures[0] = failures[0].replace("status errors", "answers of status 400 or over")
    return {"count": count, "ops": count / seconds, "p50": raw["p50_us"] / 1000,
            "p99": raw["p99_us"] / 1000, "failures": failures}


def run(plan: dict[str, Any]) -> dict[str, Any]:
    """Run wrk over `plan`; its figures, and its CPU per request."""
    wrk = find_program("wrk")
    if wrk is None:
        log: list[str] = []
        ensure_installed(log, {"wrk": "wrk"})
        wrk = find_program("wrk")
        if wrk is None:
            raise RuntimeError("the load generator, Debian's wrk, is not installed and could "
                               "not be: " + "; ".join(log))
    seconds = max(1, round(plan["duration"]))
    with tempfile.TemporaryDirectory(prefix="georoute-wrk-") as tmp:
        script = Path(tmp) / "plan.lua"
        script.write_text(lua_script(plan["clients"], plan.get("think_ms", 0)),
                          encoding="latin-1")
        argv = [wrk, "-t1", f"-c{len(plan['clients'])}", f"-d{seconds}s", "--timeout", "10s",
                "-s", str(script), f"http://{plan['host']}:{plan['port']}/"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        assert proc.stdout is not None
        output = proc.stdout.read()
        # wait4: this child's own CPU time (RUSAGE_CHILDREN would add any other child's).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{output[-2000:]}")
    figures = parse_figures(output, seconds)
    cpu = usage.ru_utime + usage.ru_stime
    figures["loadgen_cpu_us_per_request"] = cpu / max(1, figures["count"]) * 1e6
    return figures
