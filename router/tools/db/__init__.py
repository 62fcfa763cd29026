"""The data layer's tooling: schema migrations, the document store, seeding and health.

Each module is a small async API plus its `georoute` subcommand (router.tools.db.cli)."""

from __future__ import annotations

__all__: list[str] = []
