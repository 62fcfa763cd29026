"""Registration, login, refresh-token rotation and logout.

A user registers on their home region's shard (`register_user`, routed by the region). An
email is unique on each shard by a unique index; across shards the API looks it up on every
shard first (a cross-shard read), which a concurrent registration of the same email in two
regions can still slip past. Login finds the email on every shard, then checks the password;
an unknown email costs one decoy argon2id check, so both failures take the same time and get
the same answer."""

from __future__ import annotations

import datetime as dt
from typing import Any

from api.domain.data import Data
from api.domain.passwords import Passwords
from api.domain.regions import region_of_country
from api.domain.tokens import RefreshToken, TokenIssuer
from api.errors import Conflict, FieldError, InvalidInput, Unauthorized
from api.models import AccessGrant, Register, User
from api.types import Principal, Region, UserRole

__all__ = ["USER_COLUMNS", "Auth"]

USER_COLUMNS = ("user_id, email, full_name, role, home_region, country, city, is_active, "
                "created_at")
_BAD_LOGIN = "invalid email or password"


class Auth:
    def __init__(self, data: Data, passwords: Passwords, tokens: TokenIssuer,
                 refresh_ttl_seconds: int) -> None:
        self._data = data
        self._passwords = passwords
        self.tokens = tokens
        self._refresh_ttl = refresh_ttl_seconds

    async def register(self, body: Register, *, role: UserRole | None = None) -> User:
        """Create a user in `body.region` (by default, the region serving its country).
        `role` overrides the body's (Python callers use it to create admins; the HTTP layer
        never does)."""
        region = body.region or region_of_country(body.country)
        if region is None:
            raise InvalidInput("invalid request body", errors=[FieldError(
                "body", "region", f"required: no region serves country {body.country.upper()}")])
        taken = await self._data.row(
            "SELECT user_id FROM users WHERE lower(email) = lower($1) LIMIT 1", body.email)
        if taken is not None:
            raise Conflict("this email is already registered")
        password_hash = await self._passwords.hash(body.password)
        user_id = await self._data.write_value(
            "SELECT register_user($1, $2, $3, $4, $5, $6::user_role, $7)",
            body.email, body.full_name, region.value, body.country.upper(), body.city,
            (role or UserRole(body.role)).value, password_hash)
        found = await self._data.row(
            f"SELECT {USER_COLUMNS} FROM users WHERE user_id = $1", user_id)
        assert found is not None, "a user just registered is readable (read-your-writes)"
        return User.model_validate(found)

    async def login(self, email: str, password: str) -> AccessGrant:
        found = await self._data.row(
            "SELECT u.user_id, u.role, u.home_region, u.is_active, c.password_hash "
            "FROM users u JOIN user_credentials c ON c.user_id = u.user_id "
            "WHERE lower(u.email) = lower($1) LIMIT 1", email)
        if found is None:
            await self._passwords.verify_unknown(password)
            raise Unauthorized(_BAD_LOGIN)
        if not await self._passwords.verify(found["password_hash"], password):
            raise Unauthorized(_BAD_LOGIN)
        if not found["is_active"]:
            raise Unauthorized(_BAD_LOGIN)
        principal = Principal(found["user_id"], UserRole(found["role"]),
                              Region(found["home_region"]))
        return await self._grant(principal)

    async def _grant(self, principal: Principal) -> AccessGrant:
        secret = RefreshToken.new_secret()
        issued = await self._data.write(
            "SELECT * FROM issue_refresh_token($1, $2, $3)",
            principal.user_id, RefreshToken.hash_secret(secret), self._refresh_ttl)
        session = issued[0]
        return self._answer(principal, RefreshToken(session["session_id"], secret),
                            session["expires_at"])

    def _answer(self, principal: Principal, refresh: RefreshToken,
                refresh_expires_at: dt.datetime) -> AccessGrant:
        return AccessGrant(
            access_token=self.tokens.issue(principal), expires_in=self.tokens.ttl_seconds,
            refresh_token=str(refresh), refresh_expires_at=refresh_expires_at,
            user_id=principal.user_id, role=principal.role, region=principal.region)

    async def refresh(self, token: str) -> AccessGrant:
        """A new access token and a new refresh token for a live one. A refresh token that was
        already used revokes its whole family: whoever holds a copy is locked out too."""
        presented = RefreshToken.parse(token)
        secret = RefreshToken.new_secret()
        result = await self._rotate(presented.session_id, presented, secret)
        if result["outcome"] == "invalid":
            # Issued before its user moved to another region: the session moved with them.
            moved = await self._data.resolve(presented.session_id)
            if moved != presented.session_id:
                result = await self._rotate(moved, presented, secret)
        outcome = result["outcome"]
        if outcome == "reused":
            raise Unauthorized("this refresh token was already used; its sessions are revoked")
        if outcome != "rotated":
            raise Unauthorized(f"refresh token {outcome}")
        principal = Principal(result["user_id"], UserRole(result["role"]),
                              Region(result["home_region"]))
        return self._answer(principal, RefreshToken(result["new_session_id"], secret),
                            result["expires_at"])

    async def _rotate(self, session_id: Any, presented: RefreshToken, secret: str
                      ) -> dict[str, Any]:
        rows = await self._data.write_by_id(
            "SELECT * FROM rotate_refresh_token($1, $2, $3, $4)",
            session_id, presented.secret_hash, RefreshToken.hash_secret(secret),
            self._refresh_ttl)
        if rows is None:  # a session id of no shard: no such session
            return {"outcome": "invalid"}
        result: dict[str, Any] = rows[0]
        return result

    async def logout(self, token: str) -> int:
        """Revoke the refresh token's family; returns how many sessions that ended (0 for an
        unknown or already revoked token: logging out twice is not an error)."""
        presented = RefreshToken.parse(token)
        revoked = await self._data.write_by_id(
            "SELECT revoke_refresh_family($1, $2) AS revoked",
            await self._data.resolve(presented.session_id), presented.secret_hash)
        return int(revoked[0]["revoked"] or 0) if revoked else 0

    def authenticate(self, access_token: str) -> Principal:
        return self.tokens.verify(access_token)
