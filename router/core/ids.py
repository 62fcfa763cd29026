"""Ids that carry their home shard, so a request by id routes without a directory lookup.

Layout of a georoute id (a UUID, RFC 9562 version 8, "custom"):

    bytes 0-5   unix time in milliseconds, big-endian (ids sort roughly by creation time)
    byte  6     0x80 | 4 random bits            (version nibble = 8)
    byte  7     the shard number, 0..255         (router.toml [shards.X].number)
    byte  8     0x80 | 6 random bits            (RFC variant bits 10)
    bytes 9-15  random

`georoute_id()` in sql/ generates them on each shard; `georoute_shard_of(uuid)` decodes them in
SQL; `shard_number_of` below is the router's twin.
"""

from __future__ import annotations

import os
import uuid

__all__ = ["new_id", "shard_number_of"]


def shard_number_of(value: object) -> int | None:
    """The shard number inside a georoute id, or None if `value` is not one."""
    if isinstance(value, uuid.UUID):
        raw = value.bytes
    elif isinstance(value, str) and len(value) in (32, 36, 38):
        try:
            raw = uuid.UUID(value).bytes
        except ValueError:
            return None
    elif isinstance(value, (bytes, bytearray)) and len(value) == 16:
        raw = bytes(value)
    else:
        return None
    if raw[6] >> 4 != 8 or raw[8] >> 6 != 0b10:
        return None
    return raw[7]


def new_id(shard_number: int, *, now_ms: int, rand: bytes | None = None) -> uuid.UUID:
    """A new georoute id for `shard_number` (0..255) made at `now_ms` (unix milliseconds: the
    caller reads its clock). `rand` makes it deterministic."""
    if not 0 <= shard_number <= 255:
        raise ValueError(f"shard number {shard_number} is outside 0..255")
    ms = now_ms
    r = os.urandom(9) if rand is None else rand
    if len(r) != 9:
        raise ValueError("rand must be 9 bytes")
    raw = (
        ms.to_bytes(6, "big")
        + bytes([0x80 | (r[0] & 0x0F), shard_number, 0x80 | (r[1] & 0x3F)])
        + r[2:9]
    )
    return uuid.UUID(bytes=raw)
