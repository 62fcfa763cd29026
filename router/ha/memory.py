"""What a router node in managed mode keeps on disk across restarts: the newest timeline it has
seen each shard's primary writable on (the shard's `timeline_floor`, router/core/primary.py),
with the PostgreSQL system identifier of the cluster it was seen in; and its last heartbeat
incarnation, so the next is newer even if the wall clock stepped back meanwhile.

Without it, a router restarted while a shard's promoted primary is unreachable knows no floor:
if the old primary is back and writable on its older timeline, it becomes the primary again
(router.toml's `primary` entry often names it), and the writes it takes are lost when the
promoted one answers. Remembered, the floor keeps it fenced from the first round.

The identifier tells a rebuilt cluster (initdb again: timelines start at 1) from the one the
floor was seen in: a floor is used once a node of the shard says it belongs to the same
cluster, and forgotten when the nodes that answer all say they belong to another.

The file is `[failover] state_file` (default `<cluster.state_dir>/failover-<node_name>.json`;
a relative path is under router.toml's directory). It is written, whole, through a temporary
file and a rename, before the router sends a shard's writes to a primary on a newer timeline.
A file that cannot be read is named in the log and treated as empty; one that cannot be
written is named in the log, and the floor is kept in memory."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from router.config import Config

__all__ = ["FailoverMemory", "memory_path"]

log = logging.getLogger("georoute.failover")

FORMAT_VERSION = 1


def memory_path(config: Config) -> Path:
    source = Path(config.source)
    base = source.parent if source.is_absolute() else Path.cwd()
    name = config.failover.state_file or str(
        Path(config.cluster.state_dir) / f"failover-{config.router.node_name}.json")
    return (base / name).resolve()


class FailoverMemory:
    def __init__(self, path: Path) -> None:
        self.path = path
        # shard -> (system id, timeline); and the last start's heartbeat incarnation
        self._floors, self._incarnation = _read(path)
        self.write_errors = 0

    def next_incarnation(self, wall_ns: int) -> int:
        """This start's heartbeat incarnation: its wall time in ns, or one more than the last
        start's when the clock stands behind that (stepped back while the router was down:
        its peers would drop every heartbeat as replayed). Kept at once."""
        self._incarnation = max(wall_ns, self._incarnation + 1)
        self._save("heartbeat incarnation")
        return self._incarnation

    def floor(self, shard: str, identities: Iterable[str | None]) -> int:
        """The timeline floor remembered for `shard`, once one of `identities` (the system
        identifiers its nodes answered with this round) is the one it was seen in; 0 when
        none is remembered or none answered. Forgotten when they all name another cluster."""
        kept = self._floors.get(shard)
        if kept is None:
            return 0
        seen = {i for i in identities if i is not None}
        if kept[0] in seen:
            return kept[1]
        if seen:
            log.warning("shard %s's remembered timeline %d was seen in the cluster with system "
                        "identifier %s; its nodes now say %s: forgotten (a rebuilt cluster)",
                        shard, kept[1], kept[0], ", ".join(sorted(seen)))
            del self._floors[shard]
        return 0

    def keep(self, shard: str, identity: str | None, timeline: int) -> None:
        """Remember `timeline` as `shard`'s floor (called when it rises), on disk first."""
        if identity is None or self._floors.get(shard) == (identity, timeline):
            return
        self._floors[shard] = (identity, timeline)
        self._save(f"shard {shard}'s timeline {timeline}")

    def _save(self, what: str) -> None:
        try:
            _write(self.path, self._floors, self._incarnation)
        except OSError as exc:
            self.write_errors += 1
            log.error("cannot keep the %s in %s: %s (a restart of this router will not know "
                      "it)", what, self.path, exc)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {shard: {"system_identifier": ident, "timeline": timeline}
                for shard, (ident, timeline) in sorted(self._floors.items())}


def _read(path: Path) -> tuple[dict[str, tuple[str, int]], int]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, 0
    except (OSError, ValueError) as exc:
        log.error("cannot read the failover memory %s: %s (started without it)", path, exc)
        return {}, 0
    shards = raw.get("shards") if isinstance(raw, dict) else None
    if not isinstance(shards, dict) or raw.get("version") != FORMAT_VERSION:
        log.error("the failover memory %s is not version %d's shape: started without it",
                  path, FORMAT_VERSION)
        return {}, 0
    incarnation = raw.get("incarnation", 0)
    if not isinstance(incarnation, int) or isinstance(incarnation, bool) or incarnation < 0:
        log.error("the failover memory %s has a bad incarnation: ignored", path)
        incarnation = 0
    floors: dict[str, tuple[str, int]] = {}
    for shard, entry in shards.items():
        ident = entry.get("system_identifier") if isinstance(entry, dict) else None
        timeline = entry.get("timeline") if isinstance(entry, dict) else None
        if (isinstance(ident, str) and isinstance(timeline, int)
                and not isinstance(timeline, bool) and timeline > 0):
            floors[str(shard)] = (ident, timeline)
        else:
            log.error("the failover memory %s has a bad entry for shard %s: skipped", path,
                      shard)
    return floors, incarnation


def _write(path: Path, floors: dict[str, tuple[str, int]], incarnation: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": FORMAT_VERSION, "incarnation": incarnation, "shards": {
        shard: {"system_identifier": ident, "timeline": timeline}
        for shard, (ident, timeline) in sorted(floors.items())}}, indent=1)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as f:
        f.write(body + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
