"""Routes: authentication, users, preferences, categories and health."""

from __future__ import annotations

from pydantic import BaseModel

from api.http.operations import Call, Operation
from api.models import (
    AccessGrant,
    Health,
    Login,
    Preferences,
    RefreshRequest,
    Register,
    User,
    UserList,
    UserListQuery,
    UserUpdate,
)
from api.types import UserRole

__all__ = ["OPERATIONS"]


class Category(BaseModel):
    category_id: str
    parent_id: str | None
    slug: str
    name: str


class CategoryList(BaseModel):
    items: list[Category]


async def register(call: Call) -> User:
    return await call.domain.auth.register(call.body)


async def login(call: Call) -> AccessGrant:
    return await call.domain.auth.login(call.body.email, call.body.password)


async def refresh(call: Call) -> AccessGrant:
    return await call.domain.auth.refresh(call.body.refresh_token)


async def logout(call: Call) -> None:
    await call.domain.auth.logout(call.body.refresh_token)


async def get_me(call: Call) -> User:
    return await call.domain.users.get(call.by.user_id, by=call.by)


async def update_me(call: Call) -> User:
    return await call.domain.users.update(call.body, by=call.by)


async def list_users(call: Call) -> UserList:
    return await call.domain.users.list_region(call.query, by=call.by)


async def get_user(call: Call) -> User:
    return await call.domain.users.get(call.path["user_id"], by=call.by)


async def get_preferences(call: Call) -> Preferences:
    return await call.domain.content.preferences(by=call.by)


async def put_preferences(call: Call) -> Preferences:
    return await call.domain.content.set_preferences(call.body, by=call.by)


async def list_categories(call: Call) -> CategoryList:
    rows = await call.domain.courses.categories()
    return CategoryList(items=[Category(
        category_id=str(r["category_id"]), slug=r["slug"], name=r["name"],
        parent_id=None if r["parent_id"] is None else str(r["parent_id"])) for r in rows])


async def health(call: Call) -> Health:
    return await call.domain.health.report()


OPERATIONS = [
    Operation("POST", "/auth/register", register, "Register a user in their home region",
              "auth", roles=None, body=Register, response=User, status=201, errors=(409,),
              description="Students and instructors register themselves; the user's data "
                          "lives on the shard of `region`."),
    Operation("POST", "/auth/login", login, "Log in: an access token and a refresh token",
              "auth", roles=None, body=Login, response=AccessGrant, errors=(401,),
              description="An unknown email and a wrong password get the same answer, in "
                          "the same time."),
    Operation("POST", "/auth/refresh", refresh, "Trade a refresh token for new tokens",
              "auth", roles=None, body=RefreshRequest, response=AccessGrant, errors=(401,),
              description="Refresh tokens rotate: each is good once. Presenting one again "
                          "revokes every token of its family."),
    Operation("POST", "/auth/logout", logout, "Log out: revoke the refresh token's family",
              "auth", roles=None, body=RefreshRequest, status=204, errors=(401,),
              description="A malformed refresh token is refused (401); an unknown or "
                          "revoked one revokes nothing (204)."),
    Operation("GET", "/users/me", get_me, "My profile", "users", response=User),
    Operation("PATCH", "/users/me", update_me, "Change my profile", "users", body=UserUpdate,
              response=User),
    Operation("GET", "/users", list_users, "List a region's users (admins)", "users",
              roles=frozenset({UserRole.ADMIN}), query=UserListQuery, response=UserList,
              errors=(403,)),
    Operation("GET", "/users/{user_id}", get_user, "A user's profile (admins, or oneself)",
              "users", response=User, errors=(403, 404)),
    Operation("GET", "/users/me/preferences", get_preferences, "My preferences",
              "preferences", response=Preferences),
    Operation("PUT", "/users/me/preferences", put_preferences, "Replace my preferences",
              "preferences", body=Preferences, response=Preferences),
    Operation("GET", "/categories", list_categories, "Course categories", "courses",
              roles=None, response=CategoryList),
    Operation("GET", "/health", health, "Every database node's state, and a link to metrics",
              "health", roles=None, response=Health),
]
