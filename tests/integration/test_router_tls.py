"""TLS between the client library and a real router process (`router.tls_cert_file`): the
client verifies the router's certificate, plain and wrongly-trusting clients are turned away
without disturbing the router, the Unix socket stays plain, and SIGHUP picks up a renewed
certificate. With `router.tls_client_ca_file` (mutual TLS) only clients that present a
certificate from that CA get in over TCP. Certificates come from throwaway CAs (trustme)."""

from __future__ import annotations

import re
import signal
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import client
from client.errors import NoRouterAvailableError
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.ci import missing
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router


@dataclass
class TLSRouter:
    proc: RouterProcess
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    scratch: Path

    def dsn(self, query: str = "", host: str = "127.0.0.1") -> str:
        return f"georoute://{host}:{self.proc.config.router.listen_port}{query}"


def _issue(ca: trustme.CA, cert_file: Path, key_file: Path) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)  # the router refuses a private key others may read


@pytest.fixture(scope="module")
def tls_router(migrated: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRouter]:
    scratch = tmp_path_factory.mktemp("router-tls")
    ca = trustme.CA()
    cert_file, key_file, ca_file = scratch / "router.pem", scratch / "router.key", scratch / "ca.pem"
    _issue(ca, cert_file, key_file)
    ca.cert_pem.write_to_path(str(ca_file))
    config = router_config(migrated, port_shift=70, tls_cert_file=str(cert_file),
                           tls_key_file=str(key_file))
    with running_router(config, Path(migrated.cluster.state_dir) / "router-tls.toml") as proc:
        yield TLSRouter(proc, ca, ca_file, cert_file, key_file, scratch)


async def _answers(dsn: str, **kwargs: object) -> bool:
    db = await client.connect(dsn, token=TOKEN, connect_rounds=1, **kwargs)  # type: ignore[arg-type]
    async with db:
        encrypted = all(c._transport is not None and c._transport.get_extra_info("ssl_object")
                        for c in db.connections)
        assert await db.fetchval("SELECT 40 + $1::int", 2, shard="europe") == 42
        return encrypted


@pytest.mark.parametrize(("mode", "host"), [("verify-full", "127.0.0.1"),
                                            ("verify-full", "localhost"),
                                            ("verify-ca", "127.0.0.1"), ("require", "127.0.0.1")])
async def test_clients_reach_the_router_over_tls(tls_router: TLSRouter, mode: str,
                                                 host: str) -> None:
    query = f"?sslmode={mode}&sslrootcert={tls_router.ca_file}"
    assert await _answers(tls_router.dsn(query, host))


async def test_an_ssl_context_can_be_given_instead(tls_router: TLSRouter) -> None:
    ctx = ssl.create_default_context(cafile=str(tls_router.ca_file))
    assert await _answers(tls_router.dsn(), ssl=ctx)


async def test_clients_that_cannot_verify_or_speak_tls_are_turned_away(
    tls_router: TLSRouter,
) -> None:
    other = tls_router.scratch / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(NoRouterAvailableError) as info:
        await _answers(tls_router.dsn(f"?sslmode=verify-full&sslrootcert={other}"))
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    with pytest.raises(NoRouterAvailableError):  # plain msgpack to a TLS listener
        await _answers(tls_router.dsn(), connect_timeout=3.0)
    assert tls_router.proc.proc.poll() is None  # the router is still serving
    assert await _answers(tls_router.dsn(f"?sslmode=verify-full&sslrootcert={tls_router.ca_file}"))


async def test_the_unix_socket_stays_plain(tls_router: TLSRouter) -> None:
    socket_dir = tls_router.proc.config.router.listen_socket_dir
    if not socket_dir:
        missing("this config has no router Unix socket (router.listen_socket_dir)")
    encrypted = await _answers(f"georoute://{socket_dir.replace('/', '%2F')}:"
                               f"{tls_router.proc.config.router.listen_port}")
    assert not encrypted


async def test_a_half_renewed_certificate_leaves_the_running_one_serving(
    tls_router: TLSRouter,
) -> None:
    """SIGHUP while only the certificate has been replaced (its key not yet): the pair does not
    match, the reload is refused, and the router goes on serving the old certificate."""
    proc = tls_router.proc
    old_cert = tls_router.cert_file.read_bytes()
    trustme.CA().issue_cert("localhost", "127.0.0.1").cert_chain_pems[0].write_to_path(
        str(tls_router.cert_file))
    refusals = sum("reload refused" in line for line in proc.output)
    try:
        proc.proc.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            return sum("reload refused" in line for line in proc.output) > refusals

        await wait_until(refused, within=10, what="the reload to be refused")
        verify = f"?sslmode=verify-full&sslrootcert={tls_router.ca_file}"
        assert await _answers(tls_router.dsn(verify))  # still the old certificate
    finally:
        tls_router.cert_file.write_bytes(old_cert)


async def test_sighup_loads_a_renewed_certificate(tls_router: TLSRouter) -> None:
    """Last in this module: the router's certificate comes from another CA afterwards."""
    renewed_ca = trustme.CA()
    renewed_ca_file = tls_router.scratch / "renewed-ca.pem"
    renewed_ca.cert_pem.write_to_path(str(renewed_ca_file))
    _issue(renewed_ca, tls_router.cert_file, tls_router.key_file)
    tls_router.proc.proc.send_signal(signal.SIGHUP)
    renewed = tls_router.dsn(f"?sslmode=verify-full&sslrootcert={renewed_ca_file}")

    async def serves_the_renewed_certificate() -> bool:
        try:
            return await _answers(renewed)
        except NoRouterAvailableError:
            return False

    await wait_until(serves_the_renewed_certificate, within=10, what="the renewed certificate")
    with pytest.raises(NoRouterAvailableError):  # the old CA no longer vouches for it
        await _answers(tls_router.dsn(f"?sslmode=verify-full&sslrootcert={tls_router.ca_file}"))

    # Other paths (here: none) need a restart: the listener keeps its own, reload after reload.
    proc = tls_router.proc
    text = proc.path.read_text()
    proc.path.write_text(re.sub(r'(?m)^tls_(cert|key)_file = .*$', r'tls_\1_file = ""', text))
    for times in (1, 2):
        proc.proc.send_signal(signal.SIGHUP)

        async def warned(times: int = times) -> bool:
            return sum("changes need a restart" in line for line in proc.output) >= times

        await wait_until(warned, within=10, what=f"reload {times} to warn")
    assert await _answers(renewed)
    assert proc.proc.poll() is None
    assert not any("Traceback" in line for line in proc.output)


@pytest.fixture(scope="module")
def mtls_router(migrated: Config, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[TLSRouter]:
    """A router whose TCP listener asks every client for a certificate that its client CA
    signed."""
    scratch = tmp_path_factory.mktemp("router-mtls")
    ca, client_ca = trustme.CA(), trustme.CA()
    cert_file, key_file, ca_file = scratch / "router.pem", scratch / "router.key", scratch / "ca.pem"
    _issue(ca, cert_file, key_file)
    ca.cert_pem.write_to_path(str(ca_file))
    client_ca_file = scratch / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    for name, signer in (("member", client_ca), ("stranger", trustme.CA())):
        signer.issue_cert("app-1").private_key_and_cert_chain_pem.write_to_path(
            str(scratch / f"{name}.pem"))
    config = router_config(migrated, port_shift=90, tls_cert_file=str(cert_file),
                           tls_key_file=str(key_file), tls_client_ca_file=str(client_ca_file))
    with running_router(config, Path(migrated.cluster.state_dir) / "router-mtls.toml") as proc:
        yield TLSRouter(proc, ca, ca_file, cert_file, key_file, scratch)


async def test_mutual_tls_lets_in_only_clients_with_a_certificate_from_the_client_ca(
    mtls_router: TLSRouter,
) -> None:
    verify = f"?sslmode=verify-full&sslrootcert={mtls_router.ca_file}"
    member = mtls_router.scratch / "member.pem"
    assert await _answers(mtls_router.dsn(f"{verify}&sslcert={member}"))
    for refused in ("", f"&sslcert={mtls_router.scratch / 'stranger.pem'}"):
        with pytest.raises(NoRouterAvailableError):
            await _answers(mtls_router.dsn(verify + refused), connect_timeout=3.0)
    assert mtls_router.proc.proc.poll() is None  # turned away; the router serves on
    assert await _answers(mtls_router.dsn(f"{verify}&sslcert={member}"))
