"""The figures of the reliability tests, for the report (`python -m tests.support.report`).

Each fault or bad-input test calls `record(...)` with what it did and what it measured. When
GEOROUTE_RELIABILITY_LOG names a file, a JSON line is appended there for the report to
print; otherwise the figures are only checked by the test's own asserts."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.support.checker import Report

__all__ = ["LOG_ENV", "record"]

LOG_ENV = "GEOROUTE_RELIABILITY_LOG"


def record(fault: str, how: str, report: Report | None = None, **measured: Any) -> None:
    """One row of the report: the fault (or bad input), how it was made, and the outcome:
    the checker's figures when there was a workload, plus anything else measured."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    row: dict[str, Any] = {"fault": fault, "how": how, "measured": measured}
    if report is not None:
        row["checker"] = {
            "writes": report.attempted, "acknowledged": report.acknowledged,
            "failed": report.not_applied, "unknown": report.unknown,
            "unknown_applied": report.unknown_applied, "lost": report.lost,
            "duplicated": report.duplicated, "ryw_violations": report.ryw_violations,
            "longest_unavailability_s": round(report.longest_unavailability, 2),
            "reads": report.reads, "read_failures": report.read_failures,
            "errors": report.errors, "problems": report.problems(),
        }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row, default=str) + "\n")
