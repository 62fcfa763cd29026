"""`georoute backup [list | verify]` and `georoute restore`: the backup tools from the command
line (README, "Backups and point-in-time recovery")."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from router.config import Config
from router.tools.backup.basebackup import take_base_backup, verify_backup
from router.tools.backup.catalog import archive_span, format_lsn, read_backups
from router.tools.backup.documents import (
    choose_dump,
    dump_documents,
    load_documents,
    prune_dumps,
    read_dumps,
    verify_dump,
)
from router.tools.backup.errors import BackupError
from router.tools.backup.local import LocalTools, local_tools, locked
from router.tools.backup.replace import replace_shard
from router.tools.backup.restore import parse_target, restore_shard
from router.tools.localcluster.restores import (
    forget_restored,
    load_restored,
    restored_pid,
)

__all__ = ["register"]

def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _shards(args: argparse.Namespace, config: Config) -> list[str]:
    chosen = args.shard or []
    for shard in chosen:
        if shard not in config.shards:
            raise BackupError(f"--shard {shard}: no such shard (known: {', '.join(config.shards)})")
    return chosen


def _take(args: argparse.Namespace, config: Config) -> int:
    shards = _shards(args, config)
    documents = args.documents or not shards
    shards = shards or ([] if args.documents else list(config.shards))
    tools = local_tools(config)
    failed = 0
    report: dict[str, Any] = {"shards": {}, "documents": None}
    for shard in shards:
        try:
            taken = take_base_backup(tools, shard)
        except BackupError as exc:
            print(f"georoute: {shard}: backup failed: {exc}", file=sys.stderr)
            failed += 1
            continue
        b, p = taken.backup, taken.pruned
        report["shards"][shard] = {**b.as_dict(), "pruned": p.backups + p.incomplete,
                                   "pruned_wal_files": p.wal_files}
        for warning in taken.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if not args.json:
            wal = f"{format_lsn(b.start_lsn)}..{format_lsn(b.end_lsn)}"
            print(
                f"{shard}: backup {b.id} from {b.source}, {_size(b.size_bytes)}, WAL {wal} "
                f"(timeline {b.timeline}), verified; pruned {len(p.backups)} older "
                f"backup(s), {len(p.incomplete)} incomplete, {p.wal_files} WAL file(s)"
            )
    if documents:
        root = tools.paths.documents_dir
        try:
            with locked(root):
                dump = dump_documents(config, root)
                verify_dump(dump)
                pruned = prune_dumps(root, config.backup.keep_base_backups)
        except BackupError as exc:
            print(f"georoute: documents: dump failed: {exc}", file=sys.stderr)
            failed += 1
        else:
            report["documents"] = {**dump.as_dict(), "pruned": pruned}
            if not args.json:
                print(
                    f"documents: dump {dump.id} of {dump.database}, "
                    f"{len(dump.collections)} collection(s), {dump.documents} document(s), "
                    f"{_size(dump.size_bytes)}, verified; pruned {len(pruned)} older"
                )
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failed else 0


def _catalogue(tools: LocalTools, shards: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"shards": {}, "documents": []}
    for shard in shards:
        backups, incomplete = read_backups(tools.paths.base_dir(shard))
        span = archive_span(tools.paths.wal_dir(shard))
        out["shards"][shard] = {
            "backups": [b.as_dict() for b in backups],
            "incomplete": [p.name for p in incomplete],
            "archive": {"dir": str(tools.paths.wal_dir(shard)),
                        "first": span[0] if span else None, "last": span[1] if span else None},
            "restorable_from": backups[0].finished_at.isoformat() if backups else None,
        }
    out["documents"] = [d.as_dict() for d in read_dumps(tools.paths.documents_dir)]
    return out


def _list(args: argparse.Namespace, config: Config) -> int:
    shards = _shards(args, config) or list(config.shards)
    catalogue = _catalogue(local_tools(config), shards)
    if args.json:
        print(json.dumps(catalogue, indent=2))
        return 0
    rows = [("SHARD", "BACKUP", "FINISHED (UTC)", "SIZE", "WAL RANGE", "WAL FILES")]
    for shard, entry in catalogue["shards"].items():
        for b in entry["backups"]:
            rows.append((shard, b["id"], b["finished_at"][:19].replace("T", " "),
                         _size(b["size_bytes"]), f"{b['start_lsn']} - {b['end_lsn']}",
                         f"{b['start_wal']}..{b['end_wal'][-8:]}"))
        for name in entry["incomplete"]:
            rows.append((shard, name, "incomplete", "-", "-", "-"))
    for d in catalogue["documents"]:
        rows.append(("documents", d["id"], d["finished_at"][:19].replace("T", " "),
                     _size(d["size_bytes"]), "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for shard, entry in catalogue["shards"].items():
        archive = entry["archive"]
        span = f"{archive['first']} .. {archive['last']}" if archive["first"] else "empty"
        since = entry["restorable_from"] or "never (no base backup)"
        print(f"{shard}: WAL archive {span}; restorable from {since} to the latest archived")
    return 0


def _verify(args: argparse.Namespace, config: Config) -> int:
    shards = _shards(args, config) or list(config.shards)
    tools = local_tools(config)
    bad = 0
    for shard in shards:
        with locked(tools.paths.shard_dir(shard), shared=True):
            backups, _ = read_backups(tools.paths.base_dir(shard))
            for b in backups:
                try:
                    verify_backup(tools, b.data_dir)
                    print(f"{shard}: {b.id}: verified")
                except BackupError as exc:
                    print(f"{shard}: {b.id}: FAILED: {exc}")
                    bad += 1
    for dump in read_dumps(tools.paths.documents_dir):
        try:
            verify_dump(dump)
            print(f"documents: {dump.id}: verified")
        except BackupError as exc:
            print(f"documents: {dump.id}: FAILED: {exc}")
            bad += 1
    return 1 if bad else 0


def _restore(args: argparse.Namespace, config: Config) -> int:
    if args.list:
        return _restore_list(args, config)
    if args.drop:
        tools = local_tools(config)
        if args.drop not in load_restored(tools.layout):
            raise BackupError(f"no restored node {args.drop!r} (see georoute restore --list)")
        forget_restored(tools.layout, args.drop)
        print(f"restored node {args.drop} stopped and deleted")
        return 0
    if not args.to or bool(args.shard) == bool(args.documents):
        raise BackupError("restore needs --to TIME|latest and one of --shard S or --documents "
                          "(or --list, --drop NAME)")
    if args.replace and args.documents:
        raise BackupError("--replace is for a shard: a document dump is only ever loaded into "
                          "a new database, never over the live one")
    target = parse_target(args.to)
    tools = local_tools(config)
    if args.documents:
        dump = choose_dump(read_dumps(tools.paths.documents_dir), target)
        database = args.as_name or f"{config.document_store.database}_restore_{dump.id.lower()}"
        counts = load_documents(config, dump, database)
        print(f"loaded dump {dump.id} (finished {dump.finished_at.isoformat()}) into database "
              f"{database!r} of the document store: "
              + ", ".join(f"{n}: {c}" for n, c in counts.items()))
        print(f"  the live database {config.document_store.database!r} is unchanged; a dump "
              "is a copy of each collection when it was read, not of one instant")
        return 0
    if args.shard not in config.shards:
        raise BackupError(f"--shard {args.shard}: no such shard "
                          f"(known: {', '.join(config.shards)})")
    if args.replace:
        if args.as_name or args.port:
            raise BackupError("--replace restores into the shard's primary node: --as and "
                              "--port are for a separate node")
        replaced = replace_shard(tools, args.shard, target, timeout=args.timeout)
        for line in replaced.describe():
            print(line)
        return 0
    done = restore_shard(tools, args.shard, target, args.as_name or "", args.port,
                         timeout=args.timeout)
    n = done.node
    print(f"restored {n.shard} to {n.target} from backup {done.backup.id} into node {n.name}")
    print(f"  recovery: {n.recovery_stop or '(no recovery message in the log)'}")
    print(f"  WAL: {done.note}")
    print(f"  connect: psql '{done.dsn}'")
    print(f"  data: {done.data_dir}  log: {done.log}")
    print(f"  a separate node: shard {n.shard}'s primary, replicas and routers are unchanged; "
          f"`georoute restore --drop {n.name}` stops and deletes it")
    return 0


def _restore_list(args: argparse.Namespace, config: Config) -> int:
    tools = local_tools(config)
    nodes = load_restored(tools.layout)
    entries = [{**n.as_dict(), "running": restored_pid(tools.layout, n.name) is not None}
               for n in nodes.values()]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no restored nodes")
    for e in entries:
        state = "running" if e["running"] else "stopped"
        print(f"{e['name']}: shard {e['shard']} at {e['target']} (backup {e['backup_id']}), "
              f"port {e['port']}, {state}")
    return 0


def register(subparsers: Any) -> None:
    backup = subparsers.add_parser(
        "backup", help="base backups of each shard's primary, and a dump of the document store"
    )
    backup.add_argument(
        "--shard",
        action="append",
        metavar="S",
        help="only this shard (repeatable); alone, no document dump",
    )
    backup.add_argument(
        "--documents", action="store_true", help="dump the document store (with --shard: as well)"
    )
    backup.add_argument("--json", action="store_true", help="print the result as JSON")
    backup.set_defaults(func=_take)
    actions = backup.add_subparsers(dest="backup_command", metavar="ACTION", required=False)
    listing = actions.add_parser("list", help="the backups: time, size, WAL range, archive")
    listing.add_argument("--shard", action="append", metavar="S", help="only this shard")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    listing.set_defaults(func=_list)
    verify = actions.add_parser("verify", help="check every backup again (pg_verifybackup)")
    verify.add_argument("--shard", action="append", metavar="S", help="only this shard")
    verify.set_defaults(func=_verify)

    restore = subparsers.add_parser(
        "restore", help="restore a shard to a time into a separate node (or load a dump)"
    )
    restore.add_argument("--shard", metavar="S", help="the shard to restore")
    restore.add_argument(
        "--documents", action="store_true", help="load a document dump into a new database instead"
    )
    restore.add_argument(
        "--to", metavar="TIME|latest", help="ISO 8601 time (no zone: local time), or latest"
    )
    restore.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="the new node's name (documents: the new database's)",
    )
    restore.add_argument(
        "--port", type=int, default=0, help="the new node's port (default: a free one)"
    )
    restore.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for recovery (default 600)"
    )
    restore.add_argument(
        "--replace",
        action="store_true",
        help="make it the shard's new primary (its replicas are made again from it; what "
        "is lost and kept is printed)",
    )
    restore.add_argument("--list", action="store_true", help="the restored nodes")
    restore.add_argument("--drop", metavar="NAME", help="stop and delete a restored node")
    restore.add_argument("--json", action="store_true", help="--list as JSON")
    restore.set_defaults(func=_restore)
