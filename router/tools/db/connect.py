"""One way to open an administrative asyncpg connection to a configured node."""

from __future__ import annotations

import asyncpg

from router.backend.tls import connect_asyncpg
from router.config import Config, NodeAddress

__all__ = ["connect_node"]


async def connect_node(config: Config, address: NodeAddress) -> asyncpg.Connection:
    """A plain connection (no pool, no statement cache games) for migrations, seeding, health."""
    return await connect_asyncpg(config.database, address, {"application_name": "georoute-db"})
