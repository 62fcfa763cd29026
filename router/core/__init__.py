"""Pure decisions, no I/O (no asyncio, asyncpg, socket, ssl or clock of their own; a test
asserts it): what a statement is, where it goes, merges, ids, health, membership, failover."""
