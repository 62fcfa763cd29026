"""`python -m bench.api_load`: the REST API's workload (GET one course, GET my enrollments,
POST complete-lesson, in turn) through `georoute api` (uvicorn, httptools) against the same
calls made through the client library directly (the API's own domain layer, in this
process), at 16 concurrent clients. Prints ops/s, p50 and p99 per target, the latency the API
adds, and CPU per request: the caller's (the API process, of it system time; or this process
for the direct calls), the router's and the whole machine's. Its own cluster (bench
ports + 300).

The HTTP load generator runs in a process of its own (bench/http_load.py: Debian's wrk, one
thread, one keep-alive connection per client), not in the API's or the router's;
the direct calls run in this process, with the API idle, in the same run, round after round.
All of it shares the machine's cores: the figures compare the two paths on one machine, they
are not a capacity."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import uvloop

import client
from api.domain import Domain
from api.domain.passwords import Passwords
from api.models import CourseCreate, LessonCreate, Register
from api.serve import tune_gc
from api.settings import Settings
from api.types import Principal, Region, UserRole
from bench.stack import (
    BENCH_PORT_OFFSET,
    REPO,
    TOKEN,
    RouterProcess,
    bench_config,
    cpu_seconds,
    machine_busy_seconds,
    start_cluster,
    syscalls,
)
from router.tools.config_write import config_to_toml
from router.tools.db.migrate import migrate

SECRET = "bench-api-secret-" + "s" * 48
OFFSET = BENCH_PORT_OFFSET + 300
STATE_DIR = REPO / ".georoute-bench-api"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def run_load(op: Callable[[int, int], Awaitable[None]], clients: int,
                   duration: float, think_ms: int = 0) -> tuple[int, list[float]]:
    """`clients` callers, each making its next call as soon as the last is answered, or after
    a pause of `think_ms` on average (exponentially distributed, as the API's clients pause
    in bench/http_load.py)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    pauses = random.Random(1)

    async def worker(index: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await op(index, n)
            latencies.append(time.perf_counter() - started)
            n += 1
            if think_ms:  # a client's pause between calls (the load's shape, not a wait)
                await asyncio.sleep(pauses.expovariate(1000 / think_ms))

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return len(latencies), latencies


async def prepare(domain: Domain, clients: int) -> tuple[str, list[str], list[Principal],
                                                        list[str]]:
    """One free course of 20 lessons in Europe, and `clients` students enrolled in it."""
    db = domain.data.db
    category = uuid.uuid4()
    # A reference table: one write with no shard hint goes to every shard (two-phase commit).
    await db.execute("INSERT INTO categories (category_id, slug, name) VALUES ($1, $2, $3)",
                     category, f"bench-{category.hex[:8]}", "Bench")
    teacher_user = await domain.auth.register(Register(
        email=f"t-{uuid.uuid4().hex[:8]}@bench.example", password="bench password 1",
        full_name="Teacher", role=UserRole.INSTRUCTOR, region=Region.EUROPE, country="DE"))
    teacher = Principal(teacher_user.user_id, UserRole.INSTRUCTOR, Region.EUROPE)
    course = await domain.courses.create(CourseCreate(
        title="Bench course", category_id=category, price_cents=0), by=teacher)
    module = await domain.courses.add_module(course.course_id, "Module", by=teacher)
    lessons = [str(await domain.courses.add_lesson(module, LessonCreate(title=f"L{i}"),
                                                   by=teacher)) for i in range(20)]
    await domain.courses.publish(course.course_id, by=teacher)
    students, enrollments = [], []
    for i in range(clients):
        user = await domain.auth.register(Register(
            email=f"s{i}-{uuid.uuid4().hex[:8]}@bench.example", password="bench password 1",
            full_name=f"Student {i}", region=Region.EUROPE, country="FR"))
        who = Principal(user.user_id, UserRole.STUDENT, Region.EUROPE)
        students.append(who)
        enrollments.append(str((await domain.enrollments.enroll(course.course_id,
                                                                by=who)).enrollment_id))
    return str(course.course_id), lessons, students, enrollments


def api_requests(host: str, course: str, lessons: list[str], enrollment: str,
                 token: str) -> list[str]:
    """One client's requests, in the order the direct path makes the same calls: GET the
    course, GET my enrollments, POST complete-lesson (each lesson in turn), as raw HTTP/1.1."""
    auth = f"Authorization: Bearer {token}\r\n"
    requests = []
    for n in range(3 * len(lessons)):
        kind = n % 3
        if kind == 0:
            requests.append(f"GET /api/v1/courses/{course} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        elif kind == 1:
            requests.append(f"GET /api/v1/enrollments HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n")
        else:
            body = json.dumps({"seconds_spent": 1})
            path = f"/api/v1/enrollments/{enrollment}/lessons/{lessons[n % len(lessons)]}/complete"
            requests.append(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                            f"\r\n\r\n{body}")
    return requests


def http_load(plan: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator (bench/http_load.py: wrk) over `plan`; its figures."""
    from bench import http_load as generator

    return generator.run(plan)


def start_api(config_path: Path, port: int, profile: Path | None = None,
              front: str = "api") -> tuple[subprocess.Popen[str], list[str]]:
    """`georoute api` (or, with front="floor", bench/api_floor.py) on `port`."""
    env = dict(os.environ)
    env["GEOROUTE_TOKEN"] = TOKEN
    env["GEOROUTE_JWT_SECRET"] = SECRET
    # With `profile`, the API runs under cProfile, which writes there when it exits (SIGTERM).
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    served = (["-m", "bench.api_floor", "--config", str(config_path), "--port", str(port)]
              if front == "floor" else
              ["-m", "router.tools.cli", "--config", str(config_path), "api", "--port", str(port),
               "--log-level", "warning"])
    proc = subprocess.Popen(
        [sys.executable, *profiler, *served],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "ready on" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(30) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("georoute api did not start:\n" + "".join(output[-20:]))
    return proc, output


def _canned(students: int) -> tuple[Any, list[Principal], str, list[str], list[str]]:
    """The domain's three answers of the workload, made up in the shapes it returns (a course
    of one module and 20 lessons, one enrollment, a lesson done), for --http-layer."""
    from api.models import CourseDetail, EnrollmentList, LessonDone

    now = dt.datetime.now(dt.UTC)
    course, module, enrollment = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    lessons = [uuid.uuid4() for _ in range(20)]
    detail = CourseDetail.model_validate({
        "course_id": course, "title": "Bench course", "slug": "bench-course", "region": "europe",
        "level": "beginner", "language": "en", "price_cents": 0, "currency": "USD",
        "rating_avg": None, "review_count": 0, "enrollment_count": 16, "published_at": now,
        "instructor_id": uuid.uuid4(), "category_id": uuid.uuid4(), "description": "",
        "status": "published", "capacity": None, "modules": [{
            "module_id": module, "position": 1, "title": "Module", "lessons": [
                {"lesson_id": lesson, "position": i + 1, "title": f"L{i}",
                 "duration_seconds": 0, "is_preview": False}
                for i, lesson in enumerate(lessons)]}]})
    mine = EnrollmentList.model_validate({"items": [{
        "enrollment_id": enrollment, "user_id": uuid.uuid4(), "course_id": course,
        "course_title": "Bench course", "course_region": "europe", "status": "active",
        "progress_pct": Decimal("5.00"), "enrolled_at": now, "completed_at": None}]})
    done = LessonDone(enrollment_id=enrollment, lesson_id=lessons[0],
                      progress_pct=Decimal("5.00"))
    who = [Principal(uuid.uuid4(), UserRole.STUDENT, Region.EUROPE) for _ in range(students)]
    return (detail, mine, done), who, str(course), [str(x) for x in lessons], \
        [str(uuid.uuid4()) for _ in range(students)]


async def http_layer(requests: int, rounds: int) -> list[float]:
    """The API's own HTTP layer alone, in this process: the ASGI app (edge, dispatch,
    authentication, validation, JSON) over the workload's requests, one at a time, with the
    domain's three calls answering canned results (no router, no uvicorn, no sockets). Its
    CPU per request, per round: a steadier figure than the whole stack's on a shared machine."""
    from api.http import create_app

    answers, students, course, lessons, enrollments = _canned(16)
    settings = dataclasses.replace(Settings(jwt_secret=SECRET).validate(),
                                   rate_limit_per_minute=100_000_000, rate_limit_burst=1_000_000)
    domain = Domain(cast(Any, None), settings)

    async def get(course_id: uuid.UUID, *, viewer: Any = None) -> Any:
        return answers[0]

    async def mine(*, by: Any) -> Any:
        return answers[1]

    async def complete_lesson(enrollment_id: Any, lesson_id: Any, seconds: int = 0, *,
                              by: Any) -> Any:
        return answers[2]

    vars(domain.courses)["get"] = get
    vars(domain.enrollments)["mine"] = mine
    vars(domain.enrollments)["complete_lesson"] = complete_lesson
    app = create_app(cast(Any, None), settings, domain=domain)
    plans = []
    for i, who in enumerate(students):
        for raw in api_requests("127.0.0.1:8000", course, lessons, enrollments[i],
                                domain.tokens.issue(who)):
            head, _, body = raw.partition("\r\n\r\n")
            request_line, *header_lines = head.split("\r\n")
            method, path, _ = request_line.split(" ")
            headers = [(name.lower().encode(), value.strip().encode()) for name, _, value in
                       (line.partition(":") for line in header_lines)]
            plans.append((method, path, headers, body.encode(), i))
    statuses: dict[int, int] = {}

    async def one(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                  i: int) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000 + i),
                 "scheme": "http", "method": method, "root_path": "", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "headers": headers}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    # The clients' requests interleaved, as they arrive under load.
    order = [plans[(n % 16) * 60 + (n // 16) % 60] for n in range(16 * 60)]
    for plan in order:
        await one(*plan)
    figures = []
    for _ in range(rounds):
        started = time.process_time()
        for n in range(requests):
            await one(*order[n % len(order)])
        figures.append((time.process_time() - started) / requests * 1e6)
    if set(statuses) != {200}:
        raise RuntimeError(f"the app answered {statuses}")
    return figures


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = bench_config(OFFSET, STATE_DIR)
    cluster = start_cluster(config)
    router = RouterProcess(config, STATE_DIR / "router-bench-api.toml")
    api_proc: subprocess.Popen[str] | None = None
    try:
        await migrate(config, documents=False)
        router.start()
        db = await client.connect(router.dsn, token=TOKEN, pool_size=4)
        settings = Settings(jwt_secret=SECRET).validate()
        domain = Domain(db, settings, passwords=Passwords(time_cost=1, memory_cost_kib=1024))
        course, lessons, students, enrollments = await prepare(domain, args.clients)
        # The direct calls' process collects garbage as `georoute api` does (start-up's
        # objects frozen, young collections rarer), or the two paths' stalls would differ.
        tune_gc()
        config_path = STATE_DIR / "api-bench.toml"
        # One client IP makes every request here: lift the limits (they are still checked).
        limits = dataclasses.replace(config.api, rate_limit_per_minute=100_000_000,
                                     rate_limit_burst=1_000_000)
        config_path.write_text(config_to_toml(dataclasses.replace(config, api=limits)))
        port = config.api.port
        api_proc, api_output = start_api(config_path, port, args.profile, args.front)
        tokens = [domain.tokens.issue(s) for s in students]
        plan = {"host": "127.0.0.1", "port": port, "duration": args.duration,
                "clients": [api_requests(f"127.0.0.1:{port}", course, lessons, enrollments[i],
                                         tokens[i]) for i in range(args.clients)]}

        async def direct(i: int, n: int) -> None:
            kind = n % 3
            if kind == 0:
                await domain.courses.get(uuid.UUID(course))
            elif kind == 1:
                await domain.enrollments.mine(by=students[i])
            else:
                await domain.enrollments.complete_lesson(
                    uuid.UUID(enrollments[i]), uuid.UUID(lessons[n % len(lessons)]), 1,
                    by=students[i])

        http_load({**plan, "duration": 1.0})  # warm both paths (and install wrk if need be)
        await run_load(direct, args.clients, 1.0)
        results: dict[str, Any] = {"api": [], "direct": []}
        for think_ms, _ in [(t, r) for t in args.think_ms for r in range(args.rounds)]:
            plan["think_ms"] = think_ms
            user_before, system_before = cpu_seconds(api_proc.pid)
            router_before, busy_before = sum(cpu_seconds(router.pid)), machine_busy_seconds()
            calls_before = sum(syscalls(router.pid)), sum(syscalls(api_proc.pid))
            figures = await asyncio.to_thread(http_load, plan)
            calls = sum(syscalls(router.pid)), sum(syscalls(api_proc.pid))
            user_after, system_after = cpu_seconds(api_proc.pid)
            router_cpu = sum(cpu_seconds(router.pid)) - router_before
            busy = machine_busy_seconds() - busy_before
            system = system_after - system_before
            cpu = user_after - user_before + system
            if figures["failures"]:
                raise RuntimeError(f"the API refused requests: {figures['failures'][:3]}; "
                                   "its last output:\n" + "".join(api_output[-20:]))
            results["api"].append({"think_ms": think_ms, "ops": figures["ops"],
                                   "p50": figures["p50"],
                                   "p99": figures["p99"],
                                   "cpu_us_per_request": cpu / figures["count"] * 1e6,
                                   "system_us_per_request": system / figures["count"] * 1e6,
                                   "router_us_per_request": router_cpu / figures["count"] * 1e6,
                                   "machine_us_per_request": busy / figures["count"] * 1e6,
                                   "router_syscalls_per_request":
                                       (calls[0] - calls_before[0]) / figures["count"],
                                   "caller_syscalls_per_request":
                                       (calls[1] - calls_before[1]) / figures["count"],
                                   "loadgen_cpu_us_per_request":
                                       figures["loadgen_cpu_us_per_request"]})
            # The direct path's calls run in this process: its CPU over the round is theirs.
            own_before, router_before = time.process_time(), sum(cpu_seconds(router.pid))
            busy_before = machine_busy_seconds()
            calls_before = sum(syscalls(router.pid)), sum(syscalls(os.getpid()))
            count, lat = await run_load(direct, args.clients, args.duration, think_ms)
            calls = sum(syscalls(router.pid)), sum(syscalls(os.getpid()))
            own = time.process_time() - own_before
            router_cpu = sum(cpu_seconds(router.pid)) - router_before
            busy = machine_busy_seconds() - busy_before
            results["direct"].append({"think_ms": think_ms, "ops": count / args.duration,
                                      "p50": percentile(lat, 0.5),
                                      "p99": percentile(lat, 0.99),
                                      "caller_us_per_request": own / count * 1e6,
                                      "router_us_per_request": router_cpu / count * 1e6,
                                      "machine_us_per_request": busy / count * 1e6,
                                      "router_syscalls_per_request":
                                          (calls[0] - calls_before[0]) / count,
                                      "caller_syscalls_per_request":
                                          (calls[1] - calls_before[1]) / count})
        await db.close()
        return results
    finally:
        if api_proc is not None and api_proc.poll() is None:
            api_proc.send_signal(signal.SIGTERM)
            api_proc.wait(timeout=20)
        router.stop()
        if not args.keep:
            cluster.down(purge=True)


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    front = ("" if args.front == "api" else
             "; 'api' is bench/api_floor.py, a bare front, not georoute api")
    lines = [f"REST API workload, {args.clients} clients, {args.rounds} rounds of "
             f"{args.duration:g} s (GET course, GET my enrollments, POST complete-lesson)"
             + front,
             "think: each client's mean pause after an answer before its next request "
             "(exponential; 0: as fast as answers come, the machine saturated)",
             "CPU us per request: caller = the API process (its system time in brackets) or, "
             "direct, the bench process making the calls; machine = every core's busy time",
             "syscalls: the router's and the caller's read and write system calls per request"]
    for think_ms in args.think_ms:
        lines.append(f"think {think_ms} ms:")
        lines.append("target      ops/s   p50 ms   p99 ms       caller   router  machine  "
                     "load generator  syscalls")
        rows = {name: [r for r in results[name] if r["think_ms"] == think_ms]
                for name in ("direct", "api")}
        for name, found in rows.items():
            for r in found:
                caller = (f"{r['cpu_us_per_request']:.0f} ({r['system_us_per_request']:.0f})"
                          if "cpu_us_per_request" in r else f"{r['caller_us_per_request']:.0f}")
                gen = (f"{r['loadgen_cpu_us_per_request']:.0f}"
                       if "loadgen_cpu_us_per_request" in r else "-")
                lines.append(f"{name:<8} {r['ops']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                             f"{caller:>12} {r['router_us_per_request']:>8.0f} "
                             f"{r['machine_us_per_request']:>8.0f} {gen:>15}"
                             f"  {r['router_syscalls_per_request']:.1f}, "
                             f"{r['caller_syscalls_per_request']:.1f}")
        added = [a["p99"] - d["p99"] for a, d in zip(rows["api"], rows["direct"], strict=True)]
        lines.append(f"p99 added by the API at think {think_ms} ms (ms), per round: "
                     + ", ".join(f"{x:.2f}" for x in added) + "  (target: at most 2 ms)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--think-ms", type=lambda text: [int(x) for x in text.split(",")],
                        default=[0, 10], metavar="MS[,MS...]",
                        help="the mean of each client's pause after an answer, in ms; rounds run "
                             "at each (default 0,10: saturated, then paced)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--front", choices=["api", "floor"], default="api",
                        help="what serves HTTP: georoute api (default), or bench/api_floor.py, "
                             "a bare front over the same domain calls (what the HTTP stack "
                             "costs is the difference)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the API under cProfile and write its profile here (its CPU "
                             "figures are then the profiler's, not the API's)")
    parser.add_argument("--http-layer", action="store_true",
                        help="measure only the API's HTTP layer, in process, with canned "
                             "domain answers (no cluster; see http_layer)")
    arguments = parser.parse_args()
    if arguments.http_layer:
        layer = uvloop.run(http_layer(20_000, 5))
        print("API HTTP layer in process, CPU us per request, per round of 20,000: "
              + ", ".join(f"{x:.1f}" for x in layer) + f" (least {min(layer):.1f})")
        sys.exit(0)
    figures = uvloop.run(main(arguments))
    print(report(figures, arguments))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(figures, indent=2))
