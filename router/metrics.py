"""Prometheus metrics of one router node, in a registry of its own (no module globals).

Request counts and latencies are plain integers and lists updated on the request path (a
prometheus_client Counter and Histogram took a lock and a label lookup each, about 3 us per
request) and turned into metric families when Prometheus scrapes, as are pool sizes, replica
lag and the parse cache, read from the live topology.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from protocol.errors import ErrorCode
from router.core.errors import Refusal
from router.core.membership import PeerState
from router.engine.classifier import Classifier
from router.engine.scatter import ScatterStats
from router.ha.heartbeat import HeartbeatService
from router.ha.shard_checks import ShardChecks
from router.ha.topology import Topology
from router.types import Role

__all__ = ["Metrics"]

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        topology = self._metrics.topology
        size = GaugeMetricFamily(
            "georoute_pool_connections", "Backend connections per node", labels=["node", "state"]
        )
        waits = CounterMetricFamily(
            "georoute_pool_waits", "Requests that waited for a backend connection", labels=["node"]
        )
        lag = GaugeMetricFamily(
            "georoute_replica_lag_bytes", "Replica replay lag behind its primary", labels=["node"]
        )
        up = GaugeMetricFamily(
            "georoute_node_up", "1 if the node is usable (up or suspect); role: primary for its "
            "shard's primary now (live state: a failover moves it), else replica",
            labels=["node", "role"],
        )
        piped = CounterMetricFamily(
            "georoute_backend_statements",
            "Autocommit statements by path: on a pipelined connection, or handed to a pooled "
            "connection by the pipeline (unsupported types, busy or slow)",
            labels=["node", "path"],
        )
        in_flight = GaugeMetricFamily(
            "georoute_pipeline_in_flight", "Statements in flight on pipelined connections",
            labels=["node"],
        )
        closed = CounterMetricFamily(
            "georoute_pool_connections_closed",
            "Pooled backend connections closed: their session changed (they are never "
            "reused), or they broke",
            labels=["node", "reason"],
        )
        idle_tx = CounterMetricFamily(
            "georoute_transactions_idle_rolled_back",
            "Transactions the router rolled back because their client sent nothing for "
            "router.transaction_idle_timeout_seconds",
            labels=["node"],
        )
        fenced = GaugeMetricFamily(
            "georoute_node_fenced", "1 if the node is fenced: writable but not the shard's "
            "agreed primary (an old primary back), so it gets no writes and no reads",
            labels=["node"],
        )
        failovers = CounterMetricFamily(
            "georoute_failovers", "Changes of a shard's primary this router followed "
            "(managed or external failover)", labels=["shard"],
        )
        failover_seconds = GaugeMetricFamily(
            "georoute_failover_seconds", "The last failover's length as this router saw it: "
            "from its primary unusable to the new primary taking writes", labels=["shard"],
        )
        if topology is not None:
            for shard in topology.shards.values():
                failovers.add_metric([shard.name], shard.failovers_total)
                last = shard.failovers[-1]["seconds"] if shard.failovers else None
                if last is not None:
                    failover_seconds.add_metric([shard.name], last)
            for node in topology.nodes():
                fenced.add_metric([node.name], 1.0 if node.fenced else 0.0)
                pipeline = node.pool.pipeline
                piped.add_metric([node.name, "pipeline"], pipeline.statements)
                piped.add_metric([node.name, "pooled"], pipeline.fallbacks)
                in_flight.add_metric([node.name], pipeline.in_flight)
                size.add_metric([node.name, "in_use"], node.pool.in_use)
                size.add_metric([node.name, "idle"], node.pool.size - node.pool.in_use)
                waits.add_metric([node.name], node.pool.waits_total)
                for reason, count in node.pool.closed_total.items():
                    closed.add_metric([node.name, reason], count)
                idle_tx.add_metric([node.name], node.pool.idle_rollbacks)
                up.add_metric([node.name, node.role.value], 1.0 if node.available else 0.0)
                if node.lag_bytes is not None and node.role is Role.REPLICA:
                    lag.add_metric([node.name], node.lag_bytes)
        yield from (size, waits, lag, up, piped, in_flight, closed, idle_tx, fenced, failovers,
                    failover_seconds)
        if self._metrics.open_connections is not None:
            clients = GaugeMetricFamily("georoute_client_connections_open",
                                        "Client connections open now")
            clients.add_metric([], self._metrics.open_connections())
            yield clients
        yield from self._metrics.request_families()
        yield from self._metrics.scatter_families()
        classifier = self._metrics.classifier
        if classifier is not None:
            cache = CounterMetricFamily(
                "georoute_parse_cache", "SQL parse cache lookups", labels=["result"]
            )
            cache.add_metric(["hit"], classifier.hits)
            cache.add_metric(["miss"], classifier.misses)
            yield cache
        if self._metrics.heartbeat is not None:
            yield from _heartbeat_families(self._metrics.heartbeat)
        if self._metrics.checks is not None:
            yield from _check_families(self._metrics.checks)


def _check_families(checks: ShardChecks) -> Iterator[Any]:
    """The periodic shard check's results (router/ha/shard_checks.py); the per-table and
    per-shard series exist from its first check on, at 0 when all is well."""
    failed = CounterMetricFamily(
        "georoute_shard_checks_failed", "Periodic shard checks that could not read the shard's "
        "primary", labels=["shard"])
    for shard, count in dict(checks.failures).items():
        failed.add_metric([shard], count)
    yield failed
    if not checks.checks:
        return
    diverged = GaugeMetricFamily(
        "georoute_reference_table_diverged", "1 if the reference table's copies differ "
        "between shards (row count or content hash), or one is missing, at the last check "
        "that read every shard", labels=["table"])
    for table, differs in dict(checks.diverged).items():
        diverged.add_metric([table], 1.0 if differs else 0.0)
    yield diverged
    backup = GaugeMetricFamily(
        "georoute_backup_last_success_timestamp_seconds", "When the shard's newest verified "
        "base backup finished, as `georoute backup` recorded it on the shard (0: none)",
        labels=["shard"])
    for shard, when in dict(checks.last_backup).items():
        backup.add_metric([shard], when)
    yield backup


def _heartbeat_families(service: HeartbeatService) -> Iterator[Any]:
    peers = GaugeMetricFamily("georoute_heartbeat_peers",
                              "Configured router peers by membership state", labels=["state"])
    counts = service.membership.counts()
    for state in PeerState:
        peers.add_metric([state.value], counts[state])
    yield peers
    dropped = CounterMetricFamily(
        "georoute_heartbeats_dropped", "Heartbeat datagrams dropped, by reason",
        labels=["reason"],
    )
    for reason, count in service.dropped.items():
        dropped.add_metric([reason.value], count)
    yield dropped
    traffic = CounterMetricFamily("georoute_heartbeats", "Heartbeat datagrams by direction",
                                  labels=["direction"])
    traffic.add_metric(["sent"], service.sent)
    traffic.add_metric(["received"], service.received)
    yield traffic
    if service.promoter is not None:
        promotions = CounterMetricFamily(
            "georoute_promotions", "Replicas this router node promoted (managed failover)",
            labels=["shard"],
        )
        done: dict[str, int] = {}
        for record in service.promoter.promotions:
            done[record.shard] = done.get(record.shard, 0) + 1
        for shard in service.plans:
            promotions.add_metric([shard], done.get(shard, 0))
        yield promotions


class Metrics:
    def __init__(self) -> None:
        self.open_connections: Callable[[], int] | None = None
        self.registry = CollectorRegistry()
        self.topology: Topology | None = None
        self.classifier: Classifier | None = None
        self.heartbeat: HeartbeatService | None = None
        self.checks: ShardChecks | None = None
        # (kind, shard, role, outcome) -> count; kind -> [count per bucket..., +Inf], sum
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        self.errors = Counter(
            "georoute_errors", "Error replies by code name", ["code"], registry=self.registry
        )
        for code in ErrorCode:  # every code in every scrape, at 0 until it is used
            self.errors.labels(code.name)
        self.connections = Counter(
            "georoute_client_connections", "Client connections accepted", registry=self.registry
        )
        # Cross-shard reads: kept here, so a reload's new executor counts on (daemon.py).
        self.scatter = ScatterStats()
        self.registry.register(_LiveCollector(self))
        self._server: Any = None

    def record(self, kind: str, shard: str, role: str, outcome: str, seconds: float) -> None:
        key = (kind, shard, role, outcome)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        latency = self._latency.get(kind)
        if latency is None:
            latency = self._latency[kind] = ([0] * (len(_BUCKETS) + 1), [0.0])
        latency[0][bisect.bisect_left(_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def request_families(self) -> Iterator[Any]:
        """The request counter and latency histogram, from a copy taken under the GIL."""
        requests = CounterMetricFamily(
            "georoute_requests", "Requests by kind, shard, role and outcome",
            labels=["kind", "shard", "role", "outcome"],
        )
        for key, count in dict(self._requests).items():
            requests.add_metric(list(key), count)
        yield requests
        latency = HistogramMetricFamily(
            "georoute_request_duration_seconds", "Time from a request's arrival to its reply",
            labels=["kind"],
        )
        for kind, (counts, total) in dict(self._latency).items():
            counts = list(counts)
            buckets, running = [], 0
            for bound, n in zip((*_BUCKETS, float("inf")), counts, strict=True):
                running += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
            latency.add_metric([kind], buckets, sum_value=total[0])
        yield latency

    def scatter_families(self) -> Iterator[Any]:
        stats = self.scatter
        requests = CounterMetricFamily("georoute_scatter_requests",
                                       "Reads answered by several shards, merged")
        requests.add_metric([], stats.requests)
        fanout = CounterMetricFamily("georoute_scatter_fanout",
                                     "Cross-shard reads by how many shards they asked",
                                     labels=["shards"])
        for width, count in dict(stats.fanout).items():
            fanout.add_metric([str(width)], count)
        merge = CounterMetricFamily("georoute_scatter_merge_seconds",
                                    "Time spent merging the shards' answers")
        merge.add_metric([], stats.merge_seconds)
        shard = CounterMetricFamily(
            "georoute_scatter_shard_seconds",
            "Time each shard took to answer its part of a cross-shard read (sum; the "
            "_count is in georoute_scatter_shard_reads)", labels=["shard"])
        reads = CounterMetricFamily("georoute_scatter_shard_reads",
                                    "Parts of cross-shard reads each shard answered",
                                    labels=["shard"])
        for name, (count, seconds) in dict(stats.shard_seconds).items():
            shard.add_metric([name], seconds)
            reads.add_metric([name], count)
        refused = CounterMetricFamily("georoute_scatter_refusals",
                                      "Cross-shard reads refused, by reason", labels=["reason"])
        counts = dict.fromkeys((r.value for r in Refusal), 0)  # every reason, 0 until used
        counts.update(stats.refusals)
        for reason, count in counts.items():
            refused.add_metric([reason], count)
        yield from (requests, fanout, merge, shard, reads, refused)

    def bind(self, topology: Topology, classifier: Classifier,
             open_connections: Callable[[], int] | None = None) -> None:
        self.topology = topology
        self.classifier = classifier
        if open_connections is not None:
            self.open_connections = open_connections

    def serve(self, host: str, port: int) -> None:
        if port:
            self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
