"""`python -m client DSN SQL [PARAM ...]`: run one statement through georoute and print rows.

The token comes from $GEOROUTE_TOKEN. Parameters are passed as text; PostgreSQL casts them
(write `$1::int` where a cast is needed). `--shard` and `--consistency` set routing hints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from client import GeorouteError, connect


async def _main(args: argparse.Namespace) -> int:
    async with await connect(args.dsn, token=os.environ.get("GEOROUTE_TOKEN")) as db:
        rows = await db.fetch(args.sql, *args.params, shard=args.shard,
                              consistency=args.consistency)
    if rows:
        names = rows[0].keys()
        table = [names] + [[str(v) for v in r.values()] for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(names))]
        for row in table:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"({len(rows)} rows)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m client", description=__doc__)
    p.add_argument("dsn", help="georoute://host:port[,host2:port2]")
    p.add_argument("sql")
    p.add_argument("params", nargs="*")
    p.add_argument("--shard", default=None)
    p.add_argument("--consistency", default=None, choices=["session", "strong", "replica"])
    args = p.parse_args()
    try:
        return asyncio.run(_main(args))
    except GeorouteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
