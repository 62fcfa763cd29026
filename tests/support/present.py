"""`present(x)`: x, known not to be None (a row that must exist), for the type checker and
the reader alike: a test that finds None fails here, naming what it got."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["present"]

T = TypeVar("T")


def present(value: T | None) -> T:
    assert value is not None, "expected a row (or document), got None"
    return value
