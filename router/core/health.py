"""Node health as a state machine: every transition lives in the table below.

UP serves requests. One failed probe makes a node SUSPECT (still tried, so a blip costs
nothing); a second makes it DOWN (requests fail fast with a retryable error). A connection
that cannot be made or is lost under a request makes it DOWN at once; one the server turns
away (at its connection limit) changes nothing, as the server is up (executor.acquire). Any
successful probe brings it back UP. Failover (later) acts on DOWN primaries.
"""

from __future__ import annotations

import enum

__all__ = ["HealthEvent", "NodeHealth", "next_health"]


class NodeHealth(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


class HealthEvent(enum.Enum):
    PROBE_OK = "probe_ok"
    PROBE_FAILED = "probe_failed"
    CONNECT_FAILED = "connect_failed"


_TRANSITIONS: dict[tuple[NodeHealth, HealthEvent], NodeHealth] = {
    (NodeHealth.UP, HealthEvent.PROBE_OK): NodeHealth.UP,
    (NodeHealth.UP, HealthEvent.PROBE_FAILED): NodeHealth.SUSPECT,
    (NodeHealth.UP, HealthEvent.CONNECT_FAILED): NodeHealth.DOWN,
    (NodeHealth.SUSPECT, HealthEvent.PROBE_OK): NodeHealth.UP,
    (NodeHealth.SUSPECT, HealthEvent.PROBE_FAILED): NodeHealth.DOWN,
    (NodeHealth.SUSPECT, HealthEvent.CONNECT_FAILED): NodeHealth.DOWN,
    (NodeHealth.DOWN, HealthEvent.PROBE_OK): NodeHealth.UP,
    (NodeHealth.DOWN, HealthEvent.PROBE_FAILED): NodeHealth.DOWN,
    (NodeHealth.DOWN, HealthEvent.CONNECT_FAILED): NodeHealth.DOWN,
}


def next_health(state: NodeHealth, event: HealthEvent) -> NodeHealth:
    return _TRANSITIONS[(state, event)]
