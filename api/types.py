"""Enums and the authenticated caller, shared by the domain and the HTTP layer."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

__all__ = ["REGIONS", "Principal", "Region", "UserRole"]


class UserRole(enum.StrEnum):
    STUDENT = "student"
    INSTRUCTOR = "instructor"
    ADMIN = "admin"


class Region(enum.StrEnum):
    NORTH_AMERICA = "north_america"
    EUROPE = "europe"
    ASIA = "asia"


REGIONS: tuple[str, ...] = tuple(r.value for r in Region)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: read from a verified access token (or built by Python callers)."""

    user_id: uuid.UUID
    role: UserRole
    region: Region

    @property
    def is_admin(self) -> bool:
        return self.role is UserRole.ADMIN
