"""Passwords hashed with argon2id (argon2-cffi). Hashing takes tens of milliseconds of CPU by
design, so it runs on a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["Passwords"]


class Passwords:
    """`hash` and `verify`. `verify_unknown` does the same work as a failing `verify`, so a
    login with an unknown email costs what a wrong password costs."""

    def __init__(self, *, time_cost: int = 2, memory_cost_kib: int = 19_456,
                 parallelism: int = 1) -> None:
        # OWASP's argon2id floor (19 MiB, t=2, p=1): about 30 ms here per hash.
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib,
                                      parallelism=parallelism, type=Type.ID)
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self._check, stored_hash, password)

    async def verify_unknown(self, password: str) -> bool:
        await asyncio.to_thread(self._check, self._decoy, password)
        return False

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
