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
cluster, and forgotten when the nodes that answer all say they belong to another. The node
that was the primary on it is kept too: a restarted router starts from it rather than from
router.toml's `primary` entry, so a promoted primary that is down is seen as the shard's
primary down (a standby may be promoted) rather than an old primary back.

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
from dataclasses import dataclass
from pathlib import Path

from router.config import Config

__all__ = ["FailoverMemory", "Kept", "Recalled", "memory_path"]

log = logging.getLogger("georoute.failover")

FORMAT_VERSION = 1


def memory_path(config: Config) -> Path:
    source = Path(config.source)
    base = source.parent if source.is_absolute() else Path.cwd()
    name = config.failover.state_file or str(
        Path(config.cluster.state_dir) / f"failover-{config.router.node_name}.json")
    return (base / name).resolve()


@dataclass(frozen=True, slots=True)
class Kept:
    """One shard's entry: the newest timeline seen writable, in which cluster, and the node
    that was the primary on it."""

    system_id: str
    timeline: int
    primary: str | None = None


@dataclass(frozen=True, slots=True)
class Recalled:
    timeline: int  # the floor
    primary: str | None  # where this router left the shard's writes; only the first time


class FailoverMemory:
    def __init__(self, path: Path) -> None:
        self.path = path
        # shard -> its entry; and the last start's heartbeat incarnation
        self._kept, self._incarnation = _read(path)
        self._recalled: set[str] = set()  # shards whose primary was given back once
        self.write_errors = 0

    def next_incarnation(self, wall_ns: int) -> int:
        """This start's heartbeat incarnation: its wall time in ns, or one more than the last
        start's when the clock stands behind that (stepped back while the router was down:
        its peers would drop every heartbeat as replayed). Kept at once."""
        self._incarnation = max(wall_ns, self._incarnation + 1)
        self._save("heartbeat incarnation")
        return self._incarnation

    def recall(self, shard: str, identities: Iterable[str | None]) -> Recalled | None:
        """What is remembered of `shard`, once one of `identities` (the system identifiers its
        nodes answered with this round) is the one it was seen in; None when nothing is
        remembered or no node answered. Forgotten when they all name another cluster. The
        primary is given the first time only: from then on the monitor's own choice leads."""
        kept = self._kept.get(shard)
        if kept is None:
            return None
        seen = {i for i in identities if i is not None}
        if kept.system_id in seen:
            first = shard not in self._recalled
            self._recalled.add(shard)
            return Recalled(kept.timeline, kept.primary if first else None)
        if seen:
            log.warning("shard %s's remembered timeline %d was seen in the cluster with system "
                        "identifier %s; its nodes now say %s: forgotten (a rebuilt cluster)",
                        shard, kept.timeline, kept.system_id, ", ".join(sorted(seen)))
            del self._kept[shard]
        return None

    def keep(self, shard: str, identity: str | None, timeline: int, primary: str) -> None:
        """Remember `timeline` as `shard`'s floor, `primary` writable on it (called each
        round; written when either changes), on disk before the writes go there."""
        entry = None if identity is None else Kept(identity, timeline, primary)
        if entry is None or self._kept.get(shard) == entry:
            return
        self._kept[shard] = entry
        self._recalled.add(shard)  # nothing older to give back
        self._save(f"shard {shard}'s timeline {timeline}")

    def _save(self, what: str) -> None:
        try:
            _write(self.path, self._kept, self._incarnation)
        except OSError as exc:
            self.write_errors += 1
            log.error("cannot keep the %s in %s: %s (a restart of this router will not know "
                      "it)", what, self.path, exc)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {shard: {"system_identifier": k.system_id, "timeline": k.timeline,
                        "primary": k.primary}
                for shard, k in sorted(self._kept.items())}


def _read(path: Path) -> tuple[dict[str, Kept], int]:
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
    floors: dict[str, Kept] = {}
    for shard, entry in shards.items():
        ident = entry.get("system_identifier") if isinstance(entry, dict) else None
        timeline = entry.get("timeline") if isinstance(entry, dict) else None
        primary = entry.get("primary") if isinstance(entry, dict) else None
        if (isinstance(ident, str) and isinstance(timeline, int)
                and not isinstance(timeline, bool) and timeline > 0
                and (primary is None or isinstance(primary, str))):
            floors[str(shard)] = Kept(ident, timeline, primary)
        else:
            log.error("the failover memory %s has a bad entry for shard %s: skipped", path,
                      shard)
    return floors, incarnation


def _write(path: Path, kept: dict[str, Kept], incarnation: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": FORMAT_VERSION, "incarnation": incarnation, "shards": {
        shard: {"system_identifier": k.system_id, "timeline": k.timeline, "primary": k.primary}
        for shard, k in sorted(kept.items())}}, indent=1)
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
