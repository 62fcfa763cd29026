"""Pure parts of the API: token buckets on a driven clock, access tokens on a driven clock,
the table from client errors to HTTP problems, settings, and the import boundary (api/
reaches data only through client/, never PostgreSQL or the document store)."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest

import client
from api.domain.failures import translate
from api.domain.tokens import RefreshToken, TokenIssuer
from api.errors import (
    ApiError,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
)
from api.http.ratelimit import TokenBuckets
from api.settings import Settings, SettingsError
from api.types import Principal, Region, UserRole
from router.config import load_config

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_and_caps_at_its_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_minute=60, burst=2, clock=clock)
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(1.0)  # one token a second
    assert buckets.take("b") == 0  # keys are independent
    clock.now += 0.5
    assert buckets.take("a") == pytest.approx(0.5)  # a refused take takes nothing
    clock.now += 0.5
    assert buckets.take("a") == 0
    clock.now += 3600  # a long rest refills only up to the burst
    assert [buckets.take("a") for _ in range(3)][:2] == [0, 0]
    assert TokenBuckets.retry_after(0.01) == 1 and TokenBuckets.retry_after(2.2) == 3


def test_token_bucket_table_is_bounded() -> None:
    buckets = TokenBuckets(rate_per_minute=1, burst=1, max_keys=10, clock=Clock())
    for i in range(100):
        buckets.take(f"k{i}")
    assert len(buckets._buckets) == 10


def test_access_tokens_expire_on_the_injected_clock() -> None:
    clock = Clock()
    issuer = TokenIssuer("s" * 40, issuer="i", audience="a", ttl_seconds=60, clock=clock)
    who = Principal(uuid.uuid4(), UserRole.INSTRUCTOR, Region.ASIA)
    token = issuer.issue(who)
    assert issuer.verify(token) == who
    clock.now += 64  # within the 5 s leeway
    assert issuer.verify(token) == who
    clock.now += 2
    with pytest.raises(Unauthorized, match="expired"):
        issuer.verify(token)
    clock.now -= 1000  # a token issued "in the future" of the verifier's clock
    with pytest.raises(Unauthorized, match="future"):
        issuer.verify(token)


def test_a_verified_token_is_remembered_as_those_bytes_only_and_boundedly() -> None:
    """The memory of verified tokens (tokens.py) skips pyjwt for the same string again; any
    other string is verified in full, and the memory stays bounded."""
    clock = Clock()
    issuer = TokenIssuer("s" * 40, issuer="i", audience="a", ttl_seconds=60, clock=clock)
    other = TokenIssuer("t" * 40, issuer="i", audience="a", ttl_seconds=60, clock=clock)
    who = Principal(uuid.uuid4(), UserRole.STUDENT, Region.EUROPE)
    token = issuer.issue(who)
    assert issuer.verify(token) == who
    assert issuer.verify(token) == who  # remembered
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(Unauthorized):
        issuer.verify(f"{header}.{payload}.{flipped}")
    with pytest.raises(Unauthorized):
        issuer.verify(other.issue(who))  # another secret's token, never remembered
    for _ in range(10_050):
        issuer.verify(issuer.issue(who))
    assert len(issuer._verified) <= 10_000


def test_refresh_tokens_parse_and_refuse_garbage() -> None:
    token = RefreshToken(uuid.uuid4(), RefreshToken.new_secret())
    assert RefreshToken.parse(str(token)) == token
    for bad in ("", "nodot", "not-a-uuid.secretsecretsecretsecret", f"{uuid.uuid4()}.short"):
        with pytest.raises(Unauthorized):
            RefreshToken.parse(bad)


@pytest.mark.parametrize(("error", "expected", "status"), [
    (client.PostgresError("course x does not exist", sqlstate="P0002"), NotFound, 404),
    (client.PostgresError("duplicate key value violates unique constraint \"u\"",
                          sqlstate="23505"), Conflict, 409),
    (client.PostgresError("course x is full", sqlstate="GR001"), Conflict, 409),
    (client.PostgresError("rating must be between 1 and 5", sqlstate="22023"),
     InvalidInput, 422),
    (client.PostgresError("user is deactivated", sqlstate="GR009"), Forbidden, 403),
    (client.IdempotencyKeyReusedError("key reused"), IdempotencyKeyReused, 422),
    (client.CrossShardError("spans shards"), InvalidInput, 422),
    (client.NodeUnavailableError("europe-primary down"), Unavailable, 503),
    (client.NoRouterAvailableError("no router"), Unavailable, 503),
    (client.RequestTimeoutError("timed out"), Unavailable, 503),
    (client.PoolExhaustedError("pool"), Unavailable, 503),
    (client.SQLSyntaxError("syntax error at or near SELECT"), ApiError, 500),
    # Rolled back or refused for now: a retry may succeed.
    (client.PostgresError("deadlock detected", sqlstate="40P01"), Unavailable, 503),
    (client.PostgresError("could not serialize access", sqlstate="40001"), Unavailable, 503),
    (client.PostgresError("could not obtain lock on row", sqlstate="55P03"), Unavailable, 503),
    (client.PostgresError("canceling statement due to statement timeout", sqlstate="57014"),
     Unavailable, 503),
    (client.PostgresError("sorry, too many clients already", sqlstate="53300"),
     Unavailable, 503),
    (client.PostgresError("terminating connection due to administrator command",
                          sqlstate="57P01"), Unavailable, 503),
    (client.PostgresError("division by zero", sqlstate="22012"), ApiError, 500),
])
def test_client_errors_become_problems(error: client.GeorouteError, expected: type[ApiError],
                                       status: int) -> None:
    problem = translate(error)
    assert type(problem) is expected and problem.status == status
    if status == 503:
        assert problem.headers["Retry-After"] == "1"
    assert "constraint" not in problem.detail and "SELECT" not in problem.detail


def test_settings_refuse_a_missing_or_short_secret() -> None:
    config = load_config(REPO / "router.toml")
    with pytest.raises(SettingsError, match="GEOROUTE_JWT_SECRET"):
        Settings.from_config(config, env={})
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        Settings.from_config(config, env={"GEOROUTE_JWT_SECRET": "short"})
    demo = Settings.from_config(config, env={}, demo=True)
    assert len(demo.jwt_secret) >= 32
    real = Settings.from_config(config, env={"GEOROUTE_JWT_SECRET": "k" * 32})
    assert real.access_ttl_seconds == 900 and real.rate_limit_burst == 60
    assert real.metrics_url == "http://127.0.0.1:9600/metrics"


def test_api_reaches_data_only_through_the_client() -> None:
    """api/ imports client/, its own modules, and from router only the config leaf (for
    settings); never asyncpg, pymongo or the router's internals."""
    allowed_router = {"router.config"}
    forbidden = {"asyncpg", "pymongo", "motor", "psycopg", "psycopg2"}
    for path in (REPO / "api").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden, f"{path.name} imports {name}"
                if top == "router":
                    assert name in allowed_router, f"{path.name} imports {name}"
