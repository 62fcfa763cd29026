"""Reproducible benchmarks: georoute against direct asyncpg, pgbouncer and pgpool-II on a
cluster of its own. Run `python -m bench` (or `make bench`); see bench/RESULTS.md."""

from __future__ import annotations

__all__: list[str] = []
