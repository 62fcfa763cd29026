"""Record: one result row, addressable by position or column name (like asyncpg's Record).
Rows of one result share a single column-name index."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

__all__ = ["Record", "records"]


class Record:
    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: list[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        position = self._index.get(key)
        return default if position is None else self._values[position]

    def keys(self) -> list[str]:
        return list(self._index)

    def values(self) -> list[Any]:
        return list(self._values)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self._values[i]) for k, i in self._index.items()]

    def as_dict(self) -> dict[str, Any]:
        return {k: self._values[i] for k, i in self._index.items()}

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            return self._values == other._values and self.keys() == other.keys()
        if isinstance(other, tuple | list):
            return self._values == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = " ".join(f"{k}={v!r}" for k, v in self.items())
        return f"<Record {fields}>"


def records(columns: list[str], rows: list[list[Any]]) -> list[Record]:
    index = _column_index(tuple(columns))
    return [Record(index, row) for row in rows]


# Replies to the same statement repeat the same columns; Records only read their index, so one
# dict per column list serves every reply.
@functools.lru_cache(maxsize=256)
def _column_index(columns: tuple[str, ...]) -> dict[str, int]:
    # Duplicate column names (e.g. two "id"s from a join) resolve to the first by name.
    index: dict[str, int] = {}
    for position, name in enumerate(columns):
        index.setdefault(name, position)
    return index
