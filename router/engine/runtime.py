"""What requests read, swapped whole on SIGHUP: the config, the live view of the nodes, the
classifier and the executor built over them. A reload builds a new Runtime and the node swaps
it in one step; a request reads the one in force where it starts, so it never meets a new
config beside an old view (a fast-path request's Routed then carries its node and shard)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router.config import Config
from router.engine.classifier import Classifier
from router.engine.executor import Executor
from router.engine.scatter import ScatterStats
from router.ha.topology import Topology

__all__ = ["Runtime"]


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    config: Config
    topology: Topology
    classifier: Classifier
    executor: Executor

    @classmethod
    def build(cls, config: Config, topology: Topology, *,
              scatter_stats: ScatterStats | None = None,
              transaction_ended: Callable[[], None] | None = None,
              builtin_reads: frozenset[str] = frozenset()) -> Runtime:
        """`scatter_stats`: counters that outlive a reload (the metrics keep them);
        `transaction_ended`: called whenever a transaction is over (a drain waits on it);
        `builtin_reads`: the built-in functions the shards' catalogue says are reads (used
        when router.read_only_builtins is on)."""
        r = config.router
        classifier = Classifier(config.tables, r.read_only_functions, r.parse_cache_size,
                                r.max_sql_bytes, r.sharded_functions,
                                builtin_reads if r.read_only_builtins else frozenset())
        executor = Executor(config, topology, classifier, transaction_ended=transaction_ended)
        if scatter_stats is not None:
            executor.scatter.stats = scatter_stats
        return cls(config, topology, classifier, executor)
