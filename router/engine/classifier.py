"""The router's classifier: `Analyzer` (router/core/classify.py) with an LRU of results keyed by
the SQL text, so parsing stays off the hot path, and long texts parsed on the parser thread."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping

from router.config import TableConfig
from router.core.classify import INLINE_PARSE_MAX, Analysis, Analyzer
from router.engine.parser_thread import on_parser_thread

__all__ = ["Classifier"]


class Classifier:
    """Analyzes SQL text against the configured sharded tables, with an LRU of results."""

    def __init__(
        self,
        tables: Mapping[str, TableConfig],
        read_only_functions: tuple[str, ...] | frozenset[str],
        cache_size: int = 4096,
        max_sql_bytes: int = 1024 * 1024,
        sharded_functions: tuple[str, ...] | frozenset[str] = (),
        builtin_reads: frozenset[str] = frozenset(),
    ) -> None:
        self._analyzer = Analyzer(tables, read_only_functions, max_sql_bytes, sharded_functions,
                                  builtin_reads)
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def analyze(self, sql: str) -> Analysis:
        cache = self._cache
        found = cache.get(sql)
        if found is not None:
            self.hits += 1
            cache.move_to_end(sql)
            return found
        self.misses += 1
        if len(sql) <= INLINE_PARSE_MAX:
            result = self._analyzer.analyze(sql)
        else:  # normally parsed ahead by analyze_async; this waits for the parser thread
            result = on_parser_thread(self._analyzer.analyze, sql).result()
        return self._remember(sql, result)

    async def analyze_async(self, sql: str) -> Analysis:
        """`analyze`, with a long text parsed on the parser thread while the loop runs on."""
        found = self.cached(sql)
        if found is not None or len(sql) <= INLINE_PARSE_MAX:
            return found or self.analyze(sql)
        self.misses += 1
        job = on_parser_thread(self._analyzer.analyze, sql)
        return self._remember(sql, await asyncio.wrap_future(job))

    def learn_builtin_reads(self, names: frozenset[str]) -> None:
        """Count these built-in functions as reads from now on (router/backend/catalog.py);
        what was classified before them is forgotten."""
        self._analyzer.learn_builtin_reads(names)
        self._cache.clear()

    def cached(self, sql: str) -> Analysis | None:
        """The analysis of `sql` if it is at hand (nothing is parsed)."""
        return self._cache.get(sql)

    def _remember(self, sql: str, result: Analysis) -> Analysis:
        cache = self._cache
        cache[sql] = result
        cache.move_to_end(sql)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return result
