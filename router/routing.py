"""Pure routing decisions: which shard(s) a statement goes to, and which node serves it.

Nothing here does I/O. `resolve_shards` reads the statement's analysis and bound parameters;
`choose_replica` picks a replica from a snapshot of node health and lag. The executor carries
the decisions out. A `Target` names a tuple of shards so scatter-gather reads and two-phase
writes can later return several.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from router.classify import Analysis, KeyKind
from router.config import Config
from router.ids import shard_number_of

__all__ = [
    "Consistency",
    "CrossShardError",
    "MissingShardKeyError",
    "NodeView",
    "Role",
    "RoutingError",
    "Target",
    "UnknownShardError",
    "choose_replica",
    "decide_role",
    "resolve_shards",
    "shard_of_value",
]


class RoutingError(Exception):
    """The request cannot be routed; the message says why. Nothing was sent to a node."""


class MissingShardKeyError(RoutingError):
    """`wanted` says in words what would have routed it; `table`/`key` name the first sharded
    table and its first shard-key column, when there is one (the protocol's error detail)."""

    def __init__(
        self, wanted: Sequence[str], table: str | None = None, key: str | None = None
    ) -> None:
        self.wanted = tuple(wanted)
        self.table = table
        self.key = key
        super().__init__(
            "no shard key in the statement: give a shard hint or an equality on "
            + "; ".join(self.wanted)
        )


class UnknownShardError(RoutingError):
    def __init__(self, message: str, shard: object = None) -> None:
        super().__init__(message)
        self.shard = shard


class CrossShardError(RoutingError):
    pass


class Role(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"


class Consistency(enum.Enum):
    SESSION = "session"  # read-your-writes (default): replica only once it replayed our writes
    STRONG = "strong"  # always the primary
    EVENTUAL = "replica"  # any fresh-enough replica, ignoring the session's writes


@dataclass(frozen=True, slots=True)
class Target:
    shards: tuple[str, ...]
    write: bool

    @property
    def shard(self) -> str:
        return self.shards[0]


def _shard_of_value(kind: KeyKind, value: Any, config: Config) -> str | None:
    if kind is KeyKind.REGION:
        if isinstance(value, str) and value in config.shards:
            return value
        known = ", ".join(config.shards)
        raise UnknownShardError(f"{value!r} is not a region (known: {known})", value)
    number = shard_number_of(value)
    if number is None:
        return None
    shard = config.shard_by_number(number)
    if shard is None:
        raise UnknownShardError(f"id {value} names shard number {number}, which is not configured")
    return shard.name


def shard_of_value(value: Any, config: Config, *, regions: bool = True) -> str | None:
    """The shard a value names: a region name (when `regions`) or a georoute id, else None."""
    if regions and isinstance(value, str) and value in config.shards:
        return value
    number = shard_number_of(value)
    shard = config.shard_by_number(number) if number is not None else None
    return shard.name if shard is not None else None


def _param(params: Sequence[Any], number: int) -> Any:
    if not 1 <= number <= len(params):
        raise RoutingError(f"statement uses ${number} but {len(params)} parameters were given")
    return params[number - 1]


def keyed_shard(analysis: Analysis, params: Sequence[Any], config: Config) -> str | None:
    """The shard the statement's own values name: a shard key, else an id or region among a
    function's arguments, else a georoute id compared with any column. None when there is
    none; CrossShardError when they name several."""
    found: dict[str, Any] = {}  # shard -> where it came from (a key, or a description)
    for key in analysis.keys:
        value = key.value if key.param is None else _param(params, key.param)
        if value is None:
            continue
        shard = _shard_of_value(key.kind, value, config)
        if shard is not None and shard not in found:
            found[shard] = key
    if not found:
        # A call like SELECT enroll($1, $2): an argument that is an id or a region name.
        candidates = [_param(params, p) for p in analysis.arg_params] + list(analysis.arg_values)
        for value in candidates:
            shard = shard_of_value(value, config)
            if shard is not None:
                found.setdefault(shard, "function argument")
    if not found:
        # "A row id": an equality on any column with a georoute id, even in an unlisted table.
        loose = [_param(params, p) for p in analysis.id_params] + list(analysis.id_values)
        for value in loose:
            shard = shard_of_value(value, config, regions=False)  # ids only: any column
            if shard is not None:
                found.setdefault(shard, "row id")
    if len(found) > 1:
        detail = ", ".join(
            f"{src if isinstance(src, str) else f'{src.table}.{src.column}'} -> {shard}"
            for shard, src in found.items()
        )
        raise CrossShardError(f"statement names several shards ({detail}); cross-shard "
                              "statements are not supported yet, send one per shard")
    return next(iter(found), None)


def _check_written_tables(analysis: Analysis, config: Config) -> None:
    """A sharded table updated or deleted from inside a CTE must be keyed in the statement:
    a key of another table (`WITH x AS (DELETE FROM payments ...) SELECT ... FROM users
    WHERE user_id = $1`) says nothing of which of its rows are meant, and the write would
    silently cover one shard of them. (A top-level UPDATE ... FROM or DELETE ... USING is
    keyed through its join, and an INSERT writes the rows it is given.)"""
    keyed = {key.table for key in analysis.keys}
    for table in analysis.written_tables:
        cfg = config.tables.get(table)
        if cfg is None or table in keyed:
            continue
        cols = ([cfg.region_column] if cfg.region_column else []) + list(cfg.id_columns)
        raise MissingShardKeyError([f"{table}.{' or '.join(cols)} (the table it writes)"],
                                   table, cols[0])  # fmt: skip


def check_assignments(analysis: Analysis, params: Sequence[Any], shard: str,
                      config: Config) -> None:  # fmt: skip
    """A row stays on its shard: an UPDATE may set its shard key only to a value of `shard`
    (moving a row between shards would need a two-phase commit)."""
    for key in analysis.assigned_keys:
        where = f"{key.table}.{key.column}"
        if key.param is None and key.value is None:
            raise CrossShardError(f"the statement sets the shard key {where} to an expression; "
                                  "set it to a parameter or a constant, so the router can "
                                  "check that the row stays on its shard")  # fmt: skip
        value = key.value if key.param is None else _param(params, key.param)
        if value is None:
            continue  # NULL: the column's own constraints decide
        other = _shard_of_value(key.kind, value, config)
        if other is None:
            continue  # not a georoute id: it names no shard (as when routing)
        if other != shard:
            raise CrossShardError(
                f"the statement would move a row of {key.table} from shard {shard} to "
                f"{other} ({where}); moving rows between shards is not "
                "supported: insert it there and delete it here")  # fmt: skip


def resolve_shards(
    analysis: Analysis, params: Sequence[Any], hint: str | None, config: Config
) -> Target:
    """The shard(s) a statement must run on. A hint wins; else its shard key; else an error."""
    write = not analysis.read_only
    if hint is not None:
        if hint not in config.shards:
            known = ", ".join(config.shards)
            raise UnknownShardError(f"shard hint {hint!r} is not a shard ({known})", hint)
        if analysis.assigned_keys:
            check_assignments(analysis, params, hint, config)
        return Target((hint,), write)
    shard = keyed_shard(analysis, params, config)
    if shard is not None:
        if analysis.written_tables or analysis.assigned_keys:  # not on a read's hot path
            _check_written_tables(analysis, config)
            check_assignments(analysis, params, shard, config)
        return Target((shard,), write)

    sharded = [t for t in analysis.tables if t in config.tables]
    if not sharded and not write:
        # Only reference tables (identical everywhere) or no table at all: any shard will do.
        return Target((next(iter(config.shards)),), write)
    wanted = []
    first: tuple[str, str] | None = None
    for table in sharded or analysis.tables:
        cfg = config.tables.get(table)
        if cfg is None:
            wanted.append(f"{table} (a reference table: writes need a shard hint)")
            continue
        cols = ([cfg.region_column] if cfg.region_column else []) + list(cfg.id_columns)
        wanted.append(f"{table}.{' or '.join(cols)}")
        first = first or (table, cols[0])
    if not wanted:
        wanted.append("a shard hint (the statement names no sharded table)")
    raise MissingShardKeyError(wanted, *(first or (None, None)))


class NodeView(Protocol):
    """What the replica choice needs to know of a node (a snapshot; see topology.py)."""

    @property
    def name(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def lag_bytes(self) -> int | None: ...
    @property
    def replay_lsn(self) -> int | None: ...
    @property
    def in_flight(self) -> int: ...


N = TypeVar("N", bound=NodeView)


def choose_replica(
    replicas: Sequence[N], max_lag_bytes: int, min_lsn: int | None = None, start: int = 0
) -> N | None:
    """The least-busy replica that is up, fresh enough, and (with a token) past `min_lsn`.
    Ties go to the first such one from `start` on: callers turn `start`, so equally idle
    replicas take turns rather than the first one taking every read."""
    best: N | None = None
    count = len(replicas)
    if count > 1 and start % count:
        first = start % count
        replicas = [*replicas[first:], *replicas[:first]]
    for node in replicas:
        if not node.available or node.lag_bytes is None or node.lag_bytes > max_lag_bytes:
            continue
        if min_lsn is not None and (node.replay_lsn is None or node.replay_lsn < min_lsn):
            continue
        if best is None or node.in_flight < best.in_flight:
            best = node
    return best


def decide_role(target: Target, consistency: Consistency, in_transaction: bool) -> Role:
    if target.write or in_transaction or consistency is Consistency.STRONG:
        return Role.PRIMARY
    return Role.REPLICA
