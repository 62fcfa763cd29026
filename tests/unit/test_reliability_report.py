"""The reliability report's table (tests/support/report.py): rows from the JSON lines the
fault tests write, with the checker's figures where there was a workload."""

from __future__ import annotations

import pytest

from tests.support.report import markers, render, replace_table

CHECKER = {"writes": 100, "acknowledged": 97, "failed": 1, "unknown": 2, "unknown_applied": 1,
           "lost": 0, "duplicated": 0, "ryw_violations": 0, "longest_unavailability_s": 1.234,
           "reads": 95, "read_failures": 2, "errors": {"TIMEOUT!": 2}, "problems": []}


def test_rows_with_and_without_a_workload() -> None:
    table = render([
        {"fault": "kill -9 | of a node", "how": "SIGKILL", "measured": {"promoted_after_s": 0.8},
         "checker": CHECKER},
        {"fault": "fuzz", "how": "bytes", "measured": {"codes": {"MALFORMED_FRAME": 3}}},
    ]).splitlines()
    assert len(table) == 4
    assert table[2] == (
        "| kill -9 \\| of a node | SIGKILL | 3 of 100 writes (2 unknown: 1 applied); 2 of 97 "
        "reads | 1.23 s | 0 | 0 | promoted after s: 0.8; ryw violations: 0; "
        "errors: {TIMEOUT!: 2} |")
    assert table[3] == "| fuzz | bytes | - | - | - | - | codes: {MALFORMED_FRAME: 3} |"


def test_the_table_replaces_only_its_own_section() -> None:
    begin, end = markers("chaos")
    soak_begin, soak_end = markers("soak")
    doc = f"intro\n{begin}\nold\n{end}\nmiddle\n{soak_begin}\nkept\n{soak_end}\n"
    new = replace_table(doc, "| new |")
    assert new == f"intro\n{begin}\n| new |\n{end}\nmiddle\n{soak_begin}\nkept\n{soak_end}\n"
    assert "| soak |" in replace_table(new, "| soak |", "soak") and "kept" not in \
        replace_table(new, "| soak |", "soak")
    with pytest.raises(ValueError, match="markers are missing"):
        replace_table("no markers", "| x |")
