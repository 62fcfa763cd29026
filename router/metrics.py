"""Prometheus metrics of one router node, in a registry of its own (no module globals).

Counters and histograms are updated on the request path; pool sizes, replica lag and the
parse cache are read from the live topology when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router.classify import Classifier
from router.topology import Topology

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
            "georoute_node_up", "1 if the node is usable (up or suspect)", labels=["node", "role"]
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
        if topology is not None:
            for node in topology.nodes():
                pipeline = node.pool.pipeline
                piped.add_metric([node.name, "pipeline"], pipeline.statements)
                piped.add_metric([node.name, "pooled"], pipeline.fallbacks)
                in_flight.add_metric([node.name], pipeline.in_flight)
                size.add_metric([node.name, "in_use"], node.pool.in_use)
                size.add_metric([node.name, "idle"], node.pool.size - node.pool.in_use)
                waits.add_metric([node.name], node.pool.waits_total)
                up.add_metric([node.name, node.role.value], 1.0 if node.available else 0.0)
                if node.lag_bytes is not None and node.role.value == "replica":
                    lag.add_metric([node.name], node.lag_bytes)
        yield from (size, waits, lag, up, piped, in_flight)
        classifier = self._metrics.classifier
        if classifier is not None:
            cache = CounterMetricFamily(
                "georoute_parse_cache", "SQL parse cache lookups", labels=["result"]
            )
            cache.add_metric(["hit"], classifier.hits)
            cache.add_metric(["miss"], classifier.misses)
            yield cache


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.topology: Topology | None = None
        self.classifier: Classifier | None = None
        self.requests = Counter(
            "georoute_requests",
            "Requests by kind, shard, role and outcome",
            ["kind", "shard", "role", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "georoute_request_duration_seconds",
            "Time from a request's arrival to its reply",
            ["kind"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "georoute_errors", "Error replies by code name", ["code"], registry=self.registry
        )
        self.connections = Counter(
            "georoute_client_connections", "Client connections accepted", registry=self.registry
        )
        self.registry.register(_LiveCollector(self))
        self._server: Any = None
        # labels() costs a locked dict lookup; the request path reuses the children.
        self._request_children: dict[tuple[str, str, str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def record(self, kind: str, shard: str, role: str, outcome: str, seconds: float) -> None:
        key = (kind, shard, role, outcome)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        histogram = self._latency_children.get(kind)
        if histogram is None:
            histogram = self._latency_children[kind] = self.latency.labels(kind)
        histogram.observe(seconds)

    def bind(self, topology: Topology, classifier: Classifier) -> None:
        self.topology = topology
        self.classifier = classifier

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
