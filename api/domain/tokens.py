"""Access tokens (JWT, HS256 pinned, pyjwt) and refresh-token secrets. Pure: the clock is
passed in, so tests mint expired tokens without waiting."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from api.errors import Unauthorized
from api.types import Principal, Region, UserRole

__all__ = ["ALGORITHM", "RefreshToken", "TokenIssuer"]

# One algorithm, pinned: a token whose header names another (`none`, RS256 with our secret
# as a public key) is refused before its signature is looked at.
ALGORITHM = "HS256"
_REQUIRED = ("exp", "iat", "iss", "aud", "sub")
_LEEWAY_SECONDS = 5
# Tokens whose signature and claims were checked, remembered with their times: a client sends
# the same token with every request until it expires, and pyjwt's decode was the largest
# share of the API's own CPU per request (bench/RESULTS.md). Only the very same string hits;
# its times are checked again on every use, so an expired one is refused as before. The whole
# memory is dropped when full (a dropped token is just verified again).
_VERIFIED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """`<session_id>.<secret>`: the session id routes it to the user's shard; the database
    keeps only the secret's SHA-256."""

    session_id: uuid.UUID
    secret: str

    def __str__(self) -> str:
        return f"{self.session_id}.{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()

    @staticmethod
    def new_secret() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def parse(cls, text: str) -> RefreshToken:
        session, _, secret = text.partition(".")
        try:
            session_id = uuid.UUID(session)
        except ValueError:
            raise Unauthorized("malformed refresh token") from None
        if len(secret) < 20:
            raise Unauthorized("malformed refresh token")
        return cls(session_id, secret)


class TokenIssuer:
    def __init__(self, secret: str, *, issuer: str, audience: str, ttl_seconds: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # token -> (principal, exp, iat), for tokens already verified (_VERIFIED_MAX above)
        self._verified: dict[str, tuple[Principal, float, float]] = {}

    def issue(self, principal: Principal) -> str:
        now = int(self._clock())
        claims = {
            "sub": str(principal.user_id),
            "role": principal.role.value,
            "region": principal.region.value,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The caller a token names, or Unauthorized saying why (expired, wrong audience...)."""
        known = self._verified.get(token)
        if known is not None:  # the very same bytes were verified: only the times can change
            principal, exp, iat = known
            self._check_times(exp, iat)
            return principal
        principal, exp, iat = self._decode(token)
        self._check_times(exp, iat)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (principal, exp, iat)
        return principal

    def _check_times(self, exp: float, iat: float) -> None:
        now = self._clock()
        if exp + _LEEWAY_SECONDS <= now:
            raise Unauthorized("the access token has expired")
        if iat - _LEEWAY_SECONDS > now:
            raise Unauthorized("the access token was issued in the future")

    def _decode(self, token: str) -> tuple[Principal, float, float]:
        """Signature, algorithm, audience, issuer and claims checked: who and when."""
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], audience=self.audience,
                issuer=self.issuer,
                # exp and iat are checked below against the injected clock.
                options={"require": list(_REQUIRED), "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False})
        except jwt.InvalidAudienceError:
            raise Unauthorized("the access token is not for this API (audience)") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the access token has another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"the access token must be signed with {ALGORITHM}") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid access token ({type(exc).__name__})") from None
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise Unauthorized("the access token's times are malformed")
        try:
            principal = Principal(uuid.UUID(claims["sub"]), UserRole(claims["role"]),
                                  Region(claims["region"]))
        except (KeyError, ValueError, TypeError):
            raise Unauthorized("the access token's claims are malformed") from None
        return principal, exp, iat
