"""One way to open an administrative asyncpg connection to a configured node."""

from __future__ import annotations

import asyncpg

from router.config import Config, NodeAddress
from router.tls import asyncpg_ssl

__all__ = ["connect_node"]


async def connect_node(config: Config, address: NodeAddress) -> asyncpg.Connection:
    """A plain connection (no pool, no statement cache games) for migrations, seeding, health."""
    host = config.database.host_for(address)
    return await asyncpg.connect(
        host=host,
        port=address.port,
        database=address.database,
        user=config.database.user,
        password=config.database.password(),
        timeout=config.database.connect_timeout_seconds,
        ssl=asyncpg_ssl(config.database, host),
        server_settings={"application_name": "georoute-db"},
    )
