"""Pure routing decisions: which shard(s) a statement goes to.

Nothing here does I/O. `route` reads the statement's analysis and bound parameters and returns
a `Route`, whose kind is its type, matched where it is used: `OneShard` (the statement runs on
one shard, which it names) or `Scatter` (a read over several shards, each answering for its own
rows, merged by router/engine/scatter.py). Only `OneShard` has "the shard": a multi-shard route
has no attribute a caller could mistake for one, so mypy refuses the mistake and so would the
interpreter. (A third kind, a statement run on every shard's primary, comes with what needs it:
writes to reference tables and two-phase commit. Today such writes name a shard.)
Which node of the shard serves a read is router/core/reads.py's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.config import Config
from router.core.classify import Analysis
from router.core.confinement import Confinement, KeyKind, KeyRef, Pin
from router.core.errors import (
    CrossShardError,
    MissingShardKeyError,
    RoutingError,
    UnknownShardError,
)
from router.core.ids import shard_number_of
from router.core.reference import one_copy_refusal

__all__ = [
    "SCATTER_HINT",
    "SHARDS_HINT_ALONE",
    "CrossShardError",
    "EveryPrimary",
    "MissingShardKeyError",
    "OneShard",
    "Route",
    "RoutingError",
    "Scatter",
    "UnknownShardError",
    "check_assignments",
    "check_writes",
    "hinted_shards",
    "keyed_shard",
    "named_shards",
    "resolve_shards",
    "route",
    "shard_of_value",
    "statement_shard",
]




@dataclass(frozen=True, slots=True)
class OneShard:
    """The statement runs on `shard`: a write on its primary, a read where
    router/core/reads.py says."""

    shard: str
    write: bool


@dataclass(frozen=True, slots=True)
class Scatter:
    """A read over `shards` (two or more, or every shard for the hint "*"), each answering for
    its own rows, merged by the router; never a write. It has no one shard."""

    shards: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EveryPrimary:
    """A write to a reference table (a copy on every shard): it runs on every shard's primary,
    in one two-phase commit (router/engine/distributed.py), or nowhere."""

    shards: tuple[str, ...]
    tables: tuple[str, ...]  # the reference tables it writes


Route = OneShard | Scatter | EveryPrimary
SCATTER_HINT = "*"  # the shard hint that asks every shard
# The `shards` hint is for one Query outside a transaction (a read over those shards).
SHARDS_HINT_ALONE = ("the shards hint asks a read of those shards, outside a transaction; a "
                     "transaction, a batch or a document request names one shard (shard or "
                     "shard_key)")


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


def _key_value(key: KeyRef, params: Sequence[Any]) -> Any:
    return key.value if key.param is None else _param(params, key.param)


def _pin_shards(pin: Pin, params: Sequence[Any], config: Config) -> frozenset[str] | None:
    """The shards a pin allows, or None when it decides nothing (a value that names no shard:
    NULL, a uuid that is not a georoute id, a function argument that is neither)."""
    found: set[str] = set()
    for key in pin.values:
        raw = _key_value(key, params)
        if key.array:
            if not isinstance(raw, (list, tuple)) or not raw:
                return None
            items: Sequence[Any] = raw
        else:
            items = (raw,)
        for value in items:
            if pin.loose:  # a sharded function's argument: ids and region names count
                shard = shard_of_value(value, config)
                if shard is not None:
                    found.add(shard)
                continue
            shard = None if value is None else _shard_of_value(key.kind, value, config)
            if shard is None:
                return None
            found.add(shard)
    return frozenset(found) or None


def _describe(conf: Confinement, ref: int) -> str:
    return conf.refs[ref].table


def _confine(
    conf: Confinement, params: Sequence[Any], config: Config
) -> list[frozenset[str] | None]:
    """The shards each reference is confined to, None where nothing confines it."""
    found: list[frozenset[str] | None] = [None] * len(conf.refs)
    for pin in conf.pins:
        shards = _pin_shards(pin, params, config)
        if shards is None:
            continue
        before = found[pin.ref]
        found[pin.ref] = shards if before is None else before & shards
    changed = bool(conf.edges)
    while changed:  # sets only shrink, or go from None to a set: this ends
        changed = False
        for edge in conf.edges:
            source = found[edge.source]
            if source is None:
                continue
            before = found[edge.target]
            after = source if before is None else before & source
            if after != before:
                found[edge.target] = after
                changed = True
    for ref, shards in enumerate(found):
        if shards is not None and not shards:
            raise CrossShardError(
                f"the statement's keys name different shards for {_describe(conf, ref)}, so no "
                "row could match them all; send one statement per shard")
    return found


def _row_shards(
    conf: Confinement, found: list[frozenset[str] | None], params: Sequence[Any], config: Config
) -> set[str]:
    """The shards the rows written name by their own keys. A key set to an expression, or to a
    reference's key where that reference spans several shards, cannot be checked: refused."""
    if conf.unchecked is not None:
        raise CrossShardError(conf.unchecked)
    shards: set[str] = set()
    for row in conf.rows:
        named: set[str] = set()
        for key in row:
            where = f"{key.table}.{key.column}"
            if key.key is not None:
                value = _key_value(key.key, params)
                shard = None if value is None else _shard_of_value(key.kind, value, config)
                if shard is not None:
                    named.add(shard)
            elif key.ref is not None and found[key.ref] is not None:
                named |= found[key.ref] or set()
            elif key.ref is None:
                raise CrossShardError(
                    f"the statement writes {where} as an expression; write it as a parameter "
                    "or a constant, so the router can check the row's shard")
        if len(named) > 1:
            raise CrossShardError(
                f"a row written to {row[0].table} names several shards by its keys "
                f"({', '.join(sorted(named))}); a row lives on one shard")
        shards |= named
    return shards


def _unconfined(conf: Confinement, found: list[frozenset[str] | None],
                config: Config) -> MissingShardKeyError:
    """The error for references nothing confines: it names each and what would."""
    wanted: list[str] = []
    first: tuple[str, str] | None = None
    for ref, shards in enumerate(found):
        if shards is not None:
            continue
        name = conf.refs[ref].table
        if conf.refs[ref].function:
            text = (f"{name} (a sharded function: an id or a region in an argument "
                    "router.sharded_functions names)")
        elif name not in config.tables:
            text = f"{name} (georoute's own table, one per shard: a shard hint)"
        else:
            cfg = config.tables[name]
            cols = ([cfg.region_column] if cfg.region_column else []) + list(cfg.id_columns)
            text = f"{name}.{' or '.join(cols)}"
            first = first or (name, cols[0])
        if text not in wanted:
            wanted.append(text)
    table, key = first or (None, None)
    return MissingShardKeyError(
        wanted, table, key,
        scope=" in the scope of every reference to a sharded table (each subquery, CTE and "
              "UNION branch is a scope of its own; an equality under OR or NOT confines "
              "nothing)")


def named_shards(analysis: Analysis, params: Sequence[Any], config: Config,
                 *, strict: bool) -> set[str]:
    """The shards the statement's own keys name (pins, joins, written rows). `strict`: every
    sharded reference must be confined (else MissingShardKeyError). Contradictory keys and
    rows that cannot be checked raise CrossShardError."""
    conf = analysis.confinement
    found = _confine(conf, params, config) if conf.refs else []
    if strict and any(shards is None for shards in found):
        raise _unconfined(conf, found, config)
    shards: set[str] = set()
    for ref_shards in found:
        if ref_shards is not None:
            shards |= ref_shards
    if conf.rows or conf.unchecked is not None:
        shards |= _row_shards(conf, found, params, config)
    return shards


def _one(shards: set[str], what: str) -> str:
    if len(shards) > 1:
        raise CrossShardError(
            f"{what} spans shards {', '.join(sorted(shards))}; cross-shard statements are not "
            "supported yet: send one per shard, or give a shard hint to ask one shard")
    return next(iter(shards))


def keyed_shard(analysis: Analysis, params: Sequence[Any], config: Config) -> str | None:
    """The one shard the statement's own keys name, ignoring references nothing confines
    (inside a transaction or under a hint, which say the shard themselves); None when they
    name none; CrossShardError when they name several."""
    shards = named_shards(analysis, params, config, strict=False)
    return _one(shards, "the statement") if shards else None


def statement_shard(analysis: Analysis, params: Sequence[Any], config: Config) -> str | None:
    """The one shard the statement is confined to, with every sharded table it touches
    confined there; None when it touches no sharded data (a reference table, no table)."""
    shards = named_shards(analysis, params, config, strict=True)
    if shards:
        return _one(shards, "the statement")
    if analysis.confinement.rows:  # rows whose keys are all made on the shard: which shard?
        table = analysis.confinement.rows[0][0].table if analysis.confinement.rows[0] else None
        raise MissingShardKeyError([f"{table or 'the written table'}'s shard key, "
                                    "or a shard hint"], table)
    return None


def check_writes(analysis: Analysis, params: Sequence[Any], shard: str,
                 config: Config) -> None:
    """Rows a statement running on `shard` writes stay on `shard`: the rows it inserts name it
    (or no shard) by their keys, and an UPDATE sets a shard key only to a value of it. A
    reference table is written on every shard or not at all (router/core/reference.py)."""
    if analysis.reference_writes:
        raise CrossShardError(one_copy_refusal(analysis.reference_writes, "a write run on "
                                               f"one shard ({shard})"))
    conf = analysis.confinement
    if conf.rows or conf.unchecked is not None:
        found = _confine(conf, params, config) if conf.refs else []
        for other in _row_shards(conf, found, params, config):
            if other != shard:
                raise CrossShardError(
                    f"the statement runs on shard {shard} but writes a row whose key names "
                    f"{other}; a row must be written on its own shard")
    check_assignments(analysis, params, shard, config)


def check_assignments(analysis: Analysis, params: Sequence[Any], shard: str,
                      config: Config) -> None:
    """A row stays on its shard: an UPDATE may set its shard key only to a value of `shard`
    (moving a row between shards would need a two-phase commit)."""
    for key in analysis.assigned_keys:
        where = f"{key.table}.{key.column}"
        if key.param is None and key.value is None:
            raise CrossShardError(f"the statement sets the shard key {where} to an expression; "
                                  "set it to a parameter or a constant, so the router can "
                                  "check that the row stays on its shard")
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
                "supported: insert it there and delete it here")


def resolve_shards(
    analysis: Analysis, params: Sequence[Any], hint: str | None, config: Config
) -> OneShard:
    """The shard a statement must run on. A hint wins (the rows it writes are still checked
    against it); else the one shard every sharded table it touches is confined to; else an
    error that says why (README, "How a request is routed")."""
    write = not analysis.read_only
    if write and analysis.reference_writes:  # without a hint the executor sends it everywhere
        raise CrossShardError(one_copy_refusal(analysis.reference_writes, "a shard hint"
                                               if hint is not None else "a route to one shard"))
    if hint is not None:
        if hint not in config.shards:
            known = ", ".join(config.shards)
            raise UnknownShardError(f"shard hint {hint!r} is not a shard ({known})", hint)
        if write:
            check_writes(analysis, params, hint, config)
        return OneShard(hint, write)
    conf = analysis.confinement
    if (len(conf.refs) == 1 and len(conf.pins) == 1 and not conf.rows and not conf.edges
            and conf.unchecked is None):
        shards = _pin_shards(conf.pins[0], params, config)  # the point read or write
        if shards is not None and len(shards) == 1:
            shard = next(iter(shards))
            if conf.assigned:
                check_assignments(analysis, params, shard, config)
            return OneShard(shard, write)
    confined = statement_shard(analysis, params, config)
    if confined is not None:
        if write:
            check_writes(analysis, params, confined, config)
        return OneShard(confined, write)
    if not write:
        # Only reference tables (identical everywhere) or no table at all: any shard will do.
        return OneShard(next(iter(config.shards)), write)
    others = [t for t in analysis.tables if t not in config.tables]
    wanted = [f"{t} (a reference table: writes need a shard hint)" for t in others[:1]]
    raise MissingShardKeyError(wanted or ["a shard hint (the statement names no sharded table)"])


def hinted_shards(shards: Sequence[str], config: Config) -> tuple[str, ...]:
    """The shards a `shards` hint names, in the configuration's order; an unknown name is
    UnknownShardError."""
    for name in shards:
        if name not in config.shards:
            known = ", ".join(config.shards)
            raise UnknownShardError(f"shards hint: {name!r} is not a shard ({known})", name)
    wanted = set(shards)
    return tuple(name for name in config.shards if name in wanted)


def route(analysis: Analysis, params: Sequence[Any], hint: str | None,
          config: Config, shards: Sequence[str] | None = None) -> Route:
    """`resolve_shards`, except that a plain SELECT that is not confined to one shard (nothing
    confines a table it reads, or its keys name several shards), or that has the hint "*",
    becomes a Scatter over the shards it needs, and an unhinted write to a reference table
    goes to EveryPrimary. Other writes stay on one shard, or are refused.

    `shards` (the hint of that name) runs a read on just those shards, merged; one shard is
    as the hint `shard`; a write to several is refused."""
    if shards is not None:
        if hint is not None:
            raise RoutingError("give one of the hints shard, shard_key and shards, not several")
        hinted = hinted_shards(shards, config)
        if len(hinted) == 1:
            hint = hinted[0]
        elif not analysis.read_only or analysis.command != "SELECT":
            raise CrossShardError(f"the shards hint names {len(hinted)} shards "
                                  f"({', '.join(hinted)}), which only a read may ask; a write "
                                  "runs on one shard")
        elif not analysis.confinement.refs:
            return OneShard(hinted[0], False)  # one copy, as for "*" below
        else:
            return Scatter(hinted)
    if analysis.reference_writes and not analysis.read_only and hint is None:
        if analysis.confinement.refs:  # it reads sharded rows: each copy would differ
            raise CrossShardError(
                f"the write to {', '.join(analysis.reference_writes)} (a reference table) also "
                "touches sharded tables: each shard would write its own rows into its copy. "
                "Write the reference table with values of its own")
        return EveryPrimary(tuple(config.shards), analysis.reference_writes)
    if hint == SCATTER_HINT:
        if not analysis.read_only or analysis.command != "SELECT":
            raise CrossShardError('shard "*" asks every shard, which only a read may do; '
                                  "a write runs on one shard")
        if not analysis.confinement.refs:
            # Reference tables only, or no table: every shard holds the same copy, and their
            # answers put together would repeat it. One database's answer is one copy's.
            return OneShard(next(iter(config.shards)), False)
        return Scatter(tuple(config.shards))
    try:
        return resolve_shards(analysis, params, hint, config)
    except (MissingShardKeyError, CrossShardError):
        if hint is not None or not analysis.read_only or analysis.command != "SELECT":
            raise
        conf = analysis.confinement
        found = _confine(conf, params, config)  # keys that contradict each other: refused
        if any(shards is None and conf.refs[i].function for i, shards in enumerate(found)):
            raise  # a sharded function's own rows are its business: it needs its shard named
        if any(shards is None for shards in found):
            return Scatter(tuple(config.shards))
        named = set().union(*(s for s in found if s is not None))
        return Scatter(tuple(s for s in config.shards if s in named))
