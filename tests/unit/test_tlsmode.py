"""protocol/tlsmode.py is the one statement of what each libpq sslmode does; the client
library (to a router node) and the router (to PostgreSQL) build their contexts from it and
so check the same things for the same mode."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from client.tls import ssl_context
from protocol.tlsmode import CLIENT_MODES, DATABASE_MODES, tls_policy
from router.backend.tls import client_context, forget_contexts
from router.config import DatabaseConfig


def test_the_table_follows_libpq() -> None:
    assert [m for m in DATABASE_MODES if not tls_policy(m).encrypt] == ["disable"]
    assert [m for m in DATABASE_MODES if tls_policy(m).clear_fallback] == ["prefer"]
    assert [m for m in DATABASE_MODES if tls_policy(m).verify_host] == ["verify-full"]
    assert not tls_policy("require").verify_chain
    # libpq: require with a root certificate checks the chain, as verify-ca does...
    assert tls_policy("require", has_root_cert=True) == tls_policy("verify-ca")
    # ...but prefer never checks (a failed check would only send it back to clear text).
    assert not tls_policy("prefer", has_root_cert=True).verify_chain
    assert not tls_policy("prefer").client_cert and not tls_policy("disable").client_cert


def test_each_side_accepts_its_own_modes_and_names_them() -> None:
    assert "prefer" not in CLIENT_MODES  # a client asking for TLS must get it
    with pytest.raises(ValueError, match="verify-full"):
        tls_policy("prefer", modes=CLIENT_MODES)
    with pytest.raises(ValueError, match="verify-full"):
        tls_policy("verify_full")
    with pytest.raises(ValueError, match="verify-full"):
        ssl_context("prefer")


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
@pytest.mark.parametrize("with_root", [False, True])
def test_client_and_router_build_the_same_checks(mode: str, with_root: bool,
                                                 tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    root = str(ca_file) if with_root else ""
    forget_contexts()
    to_router = ssl_context(mode, root or None)
    to_postgres = client_context(DatabaseConfig(sslmode=mode, sslrootcert=root))
    assert to_router is not None and to_postgres is not None
    policy = tls_policy(mode, has_root_cert=with_root)
    expected = ssl.CERT_REQUIRED if policy.verify_chain else ssl.CERT_NONE
    for ctx in (to_router, to_postgres):
        assert ctx.verify_mode == expected
        assert ctx.check_hostname == policy.verify_host
    assert ssl_context("disable") is None
    assert client_context(DatabaseConfig(sslmode="disable")) is None
