"""The API's settings: one frozen object, built once from router.toml's [api] section and the
environment (plus a `.env` file in the working directory, when present), then passed to
`create_app`. Secrets come only from the environment."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from router.config import Config

__all__ = ["MIN_SECRET_BYTES", "Settings", "SettingsError", "load_dotenv_file", "router_token"]

log = logging.getLogger("georoute.api")

# HS256 keys shorter than the hash output weaken it (RFC 7518, 3.2); pyjwt warns below 32.
MIN_SECRET_BYTES = 32


class SettingsError(Exception):
    """A setting is missing or out of range; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Settings:
    jwt_secret: str = field(repr=False)
    jwt_issuer: str = "georoute"
    jwt_audience: str = "georoute-api"
    access_ttl_seconds: int = 900
    refresh_ttl_seconds: int = 1_209_600
    rate_limit_per_minute: int = 600
    rate_limit_burst: int = 60
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    # Where the OpenAPI document's link to the router's Prometheus metrics points ("" = none).
    metrics_url: str = ""

    def validate(self) -> Settings:
        if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError("api.jwt_secret_env",
                                f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        for key in ("access_ttl_seconds", "refresh_ttl_seconds", "rate_limit_per_minute",
                    "rate_limit_burst", "max_body_bytes"):
            if getattr(self, key) <= 0:
                raise SettingsError(f"api.{key}", f"must be positive, got {getattr(self, key)}")
        if self.refresh_ttl_seconds <= self.access_ttl_seconds:
            raise SettingsError("api.refresh_ttl_seconds", "must exceed api.jwt_ttl_seconds")
        return self

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str] | None = None, *,
                    demo: bool = False) -> Settings:
        """The [api] section with the secret read from `env` (os.environ by default). Outside
        the demo a missing secret is refused; the demo makes up one for its own run."""
        environ = os.environ if env is None else env
        a = config.api
        secret = environ.get(a.jwt_secret_env, "")
        if not secret:
            if not demo:
                raise SettingsError("api.jwt_secret_env",
                                    f"set ${a.jwt_secret_env} (in the environment or .env) to "
                                    f"a random string of at least {MIN_SECRET_BYTES} bytes")
            secret = secrets.token_urlsafe(48)
        m = config.metrics
        return cls(
            jwt_secret=secret,
            jwt_issuer=a.jwt_issuer,
            jwt_audience=a.jwt_audience,
            access_ttl_seconds=a.jwt_ttl_seconds,
            refresh_ttl_seconds=a.refresh_ttl_seconds,
            rate_limit_per_minute=a.rate_limit_per_minute,
            rate_limit_burst=a.rate_limit_burst,
            cors_origins=a.cors_origins,
            max_body_bytes=a.max_body_bytes,
            metrics_url=f"http://{m.host}:{m.port}/metrics" if m.port else "",
        ).validate()


def load_dotenv_file(path: Path | None = None) -> bool:
    """Read `.env` from the working directory (or `path`) into os.environ, never overriding a
    variable already set. Returns whether a file was read."""
    from dotenv import load_dotenv

    target = path if path is not None else Path.cwd() / ".env"
    if not target.is_file():
        return False
    mode = stat.S_IMODE(target.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # It may hold the JWT secret (anyone who reads it can mint any role's token): said
        # loudly, not refused, since a .env may hold only harmless settings.
        log.warning("%s may hold secrets and others may read it (mode %04o): chmod 600 it",
                    target, mode)
    return bool(load_dotenv(target, override=False))


def router_token(config: Config, env: Mapping[str, str] | None = None) -> str:
    """The token the API presents to the router ($router.auth_token_env): refused when
    unset or blank (`georoute demo` sets one for the API it starts)."""
    environ = os.environ if env is None else env
    token = environ.get(config.router.auth_token_env, "")
    if not token.strip():
        raise SettingsError("router.auth_token_env",
                            f"set ${config.router.auth_token_env} to the router's auth token")
    return token
