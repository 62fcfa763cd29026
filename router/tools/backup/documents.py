"""Dumps of the document store and loading them back: every collection of the database as
concatenated BSON (mongodump's .bson layout) with its indexes, counts and a checksum per file.

A dump reads one collection after another, so it is a copy of each collection as it was when
it was read, not of the whole database at one instant; a restore loads a dump (the newest one
finished before the time asked for), never a point between two dumps.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from router.config import Config
from router.tools.backup.catalog import new_backup_id, tree_size
from router.tools.backup.errors import BackupError

__all__ = [
    "DocumentDump",
    "choose_dump",
    "dump_documents",
    "load_documents",
    "prune_dumps",
    "read_dumps",
    "verify_dump",
]

_RECORD = "dump.json"
_BATCH = 1000
# Documents are read and written as their BSON bytes, never decoded: a dump loads back
# byte for byte, whatever types (UUID subtypes, dates, decimals) its fields hold.
_RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)


def _raw_documents(path: Path) -> Iterator[bytes]:
    """The BSON documents of a .bson file, as bytes (each starts with its int32 length)."""
    with open(path, "rb") as fh:
        while header := fh.read(4):
            size = int.from_bytes(header, "little") if len(header) == 4 else 0
            rest = fh.read(size - 4) if size >= 5 else b""
            if size < 5 or len(rest) != size - 4:
                raise BackupError(f"{path}: truncated or corrupt BSON at byte {fh.tell()}")
            yield header + rest


@dataclass(frozen=True, slots=True)
class DocumentDump:
    id: str
    database: str
    started_at: datetime
    finished_at: datetime
    collections: dict[str, dict[str, Any]]  # name -> {"count", "sha256", "indexes"}
    size_bytes: int
    path: Path

    @property
    def documents(self) -> int:
        return sum(int(c["count"]) for c in self.collections.values())

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "database": self.database,
                "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat(), "collections": self.collections,
                "size_bytes": self.size_bytes, "path": str(self.path)}


@contextmanager
def _client(config: Config) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        config.document_store.uri, serverSelectionTimeoutMS=5000
    )
    try:
        yield client
    except PyMongoError as exc:
        raise BackupError(f"document store ({config.document_store.uri}): {exc}") from exc
    finally:
        client.close()


def _index_specs(indexes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The indexes to create again on load: key, name, unique (the _id index is implicit)."""
    out = []
    for index in indexes:
        if index.get("name") == "_id_":
            continue
        spec: dict[str, Any] = {"key": [[k, v] for k, v in dict(index["key"]).items()],
                                "name": index["name"]}
        if index.get("unique"):
            spec["unique"] = True
        out.append(spec)
    return out


def dump_documents(config: Config, root: Path) -> DocumentDump:
    """Every collection of document_store.database into root/<id>/, with dump.json last."""
    root.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    dump_id = new_backup_id(started, (p.name for p in root.iterdir()))
    path = root / dump_id
    path.mkdir()
    collections: dict[str, dict[str, Any]] = {}
    with _client(config) as client:
        db = client[config.document_store.database]
        for name in sorted(db.list_collection_names()):
            digest = hashlib.sha256()
            count = 0
            collection = db[name].with_options(codec_options=_RAW)
            with open(path / f"{name}.bson", "wb") as fh:
                for doc in collection.find({}, sort=[("_id", 1)], batch_size=_BATCH):
                    data = doc.raw
                    fh.write(data)
                    digest.update(data)
                    count += 1
            collections[name] = {
                "count": count,
                "sha256": digest.hexdigest(),
                "indexes": _index_specs(db[name].list_indexes()),
            }
    dump = DocumentDump(dump_id, config.document_store.database, started, datetime.now(UTC),
                        collections, tree_size(path), path)
    tmp = path / (_RECORD + ".tmp")
    tmp.write_text(json.dumps(dump.as_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path / _RECORD)
    return dump


def read_dumps(root: Path) -> list[DocumentDump]:
    """The complete dumps under root, oldest first."""
    out: list[DocumentDump] = []
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir()):
        record = entry / _RECORD
        if not record.is_file():
            continue
        try:
            raw = json.loads(record.read_text())
            out.append(DocumentDump(
                str(raw["id"]), str(raw["database"]), datetime.fromisoformat(raw["started_at"]),
                datetime.fromisoformat(raw["finished_at"]), dict(raw["collections"]),
                int(raw["size_bytes"]), entry,
            ))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"unreadable dump record {record}: {exc}") from exc
    out.sort(key=lambda d: (d.finished_at, d.id))
    return out


def prune_dumps(root: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` dumps, and directories that never got a record."""
    dumps = read_dumps(root)
    complete = {d.path for d in dumps}
    deleted: list[str] = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_dir() and entry not in complete:
            shutil.rmtree(entry)
            deleted.append(entry.name)
    for dump in dumps[: max(0, len(dumps) - keep)]:
        shutil.rmtree(dump.path)
        deleted.append(dump.id)
    return deleted


def verify_dump(dump: DocumentDump) -> None:
    """Each collection file decodes to its recorded count of documents and checksum."""
    for name, meta in dump.collections.items():
        digest = hashlib.sha256()
        count = 0
        try:
            for data in _raw_documents(dump.path / f"{name}.bson"):
                bson.decode(data)  # it must decode, not only add up
                digest.update(data)
                count += 1
        except (OSError, bson.errors.BSONError) as exc:
            raise BackupError(f"dump {dump.id}: {name}.bson: {exc}") from exc
        if count != meta["count"] or digest.hexdigest() != meta["sha256"]:
            raise BackupError(f"dump {dump.id}: {name}.bson holds {count} documents with "
                              f"checksum {digest.hexdigest()[:12]}..., the record says "
                              f"{meta['count']} and {str(meta['sha256'])[:12]}...")


def choose_dump(dumps: Sequence[DocumentDump], target: datetime | None) -> DocumentDump:
    """The newest dump finished before `target` (None: the newest of all)."""
    if not dumps:
        raise BackupError("no document dump: take one with `georoute backup`")
    fitting = [d for d in dumps if target is None or d.finished_at < target]
    if not fitting:
        raise BackupError(f"no document dump finished before {target}: the earliest "
                          f"finished at {dumps[0].finished_at.isoformat()}")
    return fitting[-1]


def load_documents(config: Config, dump: DocumentDump, database: str) -> dict[str, int]:
    """Load `dump` into `database` (which must not hold any collection yet); returns the
    count per collection. The configured database is refused: that would replace live data."""
    verify_dump(dump)
    if database == config.document_store.database:
        raise BackupError(
            f"refusing to load into {database!r}, the live database (document_store.database): "
            "load into another one and copy what you need from it"
        )
    loaded: dict[str, int] = {}
    with _client(config) as client:
        db = client[database]
        existing = db.list_collection_names()
        if existing:
            raise BackupError(f"database {database!r} already holds {', '.join(existing)}: "
                              "choose a new name (--as)")
        for name, meta in dump.collections.items():
            db.create_collection(name)
            target = db[name].with_options(codec_options=_RAW)
            batch: list[RawBSONDocument] = []
            for data in _raw_documents(dump.path / f"{name}.bson"):
                batch.append(RawBSONDocument(data))
                if len(batch) >= _BATCH:
                    target.insert_many(batch, ordered=True)
                    batch = []
            if batch:
                target.insert_many(batch, ordered=True)
            for index in meta.get("indexes", []):
                keys = [(k, v) for k, v in index["key"]]
                db[name].create_index(keys, name=index["name"], unique=bool(index.get("unique")))
            loaded[name] = db[name].count_documents({})
            if loaded[name] != meta["count"]:
                raise BackupError(f"{database}.{name}: {loaded[name]} documents after loading, "
                                  f"the dump holds {meta['count']}")
    return loaded
