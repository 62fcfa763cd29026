"""Health: every database node's state as the router sees it (its topology view, the same
facts as `georoute health`), and whether the document store answers."""

from __future__ import annotations

from typing import Any

import client
from api.domain.data import Data
from api.errors import Unavailable
from api.models import Health, NodeOverview

__all__ = ["HealthCheck"]


class HealthCheck:
    def __init__(self, data: Data, metrics_url: str) -> None:
        self._data = data
        self._metrics_url = metrics_url or None

    async def report(self) -> Health:
        try:
            view: dict[str, Any] = await self._data.db.topology(timeout=2.0)
        except client.GeorouteError as exc:
            raise Unavailable("the router does not answer") from exc
        nodes = [
            NodeOverview(name=n["name"], shard=shard, role=n["role"], state=n["health"],
                       lag_bytes=n.get("lag_bytes"))
            for shard, part in view.get("shards", {}).items() for n in part.get("nodes", [])
        ]
        healthy = all(n.state == "up" for n in nodes)
        return Health(status="ok" if healthy else "degraded", router=str(view.get("router")),
                      nodes=nodes, metrics_url=self._metrics_url)
