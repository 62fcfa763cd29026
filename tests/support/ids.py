"""A fresh georoute id for a shard number, made now (tests only; the router reads its Clock)."""

from __future__ import annotations

import time
import uuid

from router.core import ids

__all__ = ["new_id"]


def new_id(shard_number: int) -> uuid.UUID:
    return ids.new_id(shard_number, now_ms=int(time.time() * 1000))
