"""`python -m tests.support.report LOG [DOC [SECTION]]`: the reliability report's table, from the
JSON lines the fault and bad-input tests wrote (tests/support/reliability.py; `make chaos` and
`make soak` run it). With DOC, the table replaces what stands between SECTION's markers
(`<!-- SECTION table: begin -->` ... `<!-- SECTION table: end -->`, SECTION `chaos` by default)
in that Markdown file; without, it is printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["markers", "render", "replace_table"]


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section} table: begin -->", f"<!-- {section} table: end -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _failed(checker: dict[str, Any] | None) -> str:
    if checker is None:
        return "-"
    writes = (f"{checker['failed'] + checker['unknown']} of {checker['writes']} writes "
              f"({checker['unknown']} unknown: {checker['unknown_applied']} applied)")
    return f"{writes}; {checker['read_failures']} of {checker['reads'] + checker['read_failures']}"\
           " reads"


def _measured(measured: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
        return str(v)

    return "; ".join(f"{k.replace('_', ' ')}: {value(v)}" for k, v in measured.items()) or "-"


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Fault or bad input | How it was made | Requests failed | Longest unavailability "
        "| Acknowledged writes lost | Applied twice | Also measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        checker = row.get("checker")
        gap = "-" if checker is None else f"{checker['longest_unavailability_s']:.2f} s"
        lost = "-" if checker is None else str(checker["lost"])
        dup = "-" if checker is None else str(checker["duplicated"])
        measured = dict(row.get("measured", {}))
        if checker is not None:
            measured["ryw violations"] = checker["ryw_violations"]
            if checker["errors"]:
                measured["errors"] = checker["errors"]
        lines.append("| " + " | ".join(_cell(c) for c in (
            row["fault"], row["how"], _failed(checker), gap, lost, dup, _measured(measured)))
            + " |")
    return "\n".join(lines)


def replace_table(doc: str, table: str, section: str = "chaos") -> str:
    begin, end = markers(section)
    head, sep, rest = doc.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not (sep and sep2):
        raise ValueError(f"the report markers are missing: {begin} ... {end}")
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 3:
        print(__doc__, file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    table = render(rows)
    if len(argv) == 1:
        print(table)
        return 0
    doc = Path(argv[1])
    doc.write_text(replace_table(doc.read_text(), table, *argv[2:]))
    print(f"{len(rows)} rows written to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
