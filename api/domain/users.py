"""Users: one's own profile, and the admin listing of a region's users (one shard)."""

from __future__ import annotations

import uuid

from api.domain.auth import USER_COLUMNS
from api.domain.data import Data, decode_cursor, encode_cursor
from api.errors import Forbidden, NotFound
from api.models import User, UserList, UserListQuery, UserUpdate
from api.types import Principal

__all__ = ["Users"]


class Users:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def get(self, user_id: uuid.UUID, *, by: Principal) -> User:
        """A user by id, or by an id they had before they moved to another region (the
        profile then has their id now)."""
        if (user_id != by.user_id and not by.is_admin
                and await self._data.resolve(user_id) != await self._data.resolve(by.user_id)):
            raise Forbidden("only admins read other users' profiles")
        sql = f"SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"
        found = await self._data.row_by_id(sql, user_id)
        if found is None:
            current = await self._data.resolve(user_id)
            if current != user_id:
                found = await self._data.row_by_id(sql, current)
        if found is None:
            raise NotFound("no such user")
        return User.model_validate(found)

    async def update(self, changes: UserUpdate, *, by: Principal) -> User:
        rows = await self._data.write(
            "UPDATE users SET full_name = coalesce($2, full_name), "
            "country = coalesce(upper($3), country), city = coalesce($4, city) "
            f"WHERE user_id = $1 RETURNING {USER_COLUMNS}",
            by.user_id, changes.full_name, changes.country, changes.city)
        if not rows:
            raise NotFound("no such user")
        return User.model_validate(rows[0])

    async def list_region(self, query: UserListQuery, *, by: Principal) -> UserList:
        """A region's users, oldest first (ids sort by creation time), a page at a time."""
        if not by.is_admin:
            raise Forbidden("only admins list users")
        sql = f"SELECT {USER_COLUMNS} FROM users WHERE home_region = $1"
        args: list[object] = [query.region.value]
        if query.role is not None:
            args.append(query.role.value)
            sql += f" AND role = ${len(args)}::user_role"
        if query.cursor is not None:
            (after,) = decode_cursor(query.cursor, 1)
            args.append(uuid.UUID(str(after)))
            sql += f" AND user_id > ${len(args)}"
        args.append(query.limit + 1)
        sql += f" ORDER BY user_id LIMIT ${len(args)}"
        rows = await self._data.rows(sql, *args)
        more = len(rows) > query.limit
        items = [User.model_validate(r) for r in rows[: query.limit]]
        cursor = encode_cursor([str(items[-1].user_id)]) if more and items else None
        return UserList(items=items, next_cursor=cursor)
