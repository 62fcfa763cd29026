"""Session fixtures: the test configuration (router.toml moved 10000 ports up, its own state
dir) and one real local cluster for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from router.config import Config, load_config
from router.tools.config_write import with_port_offset
from router.tools.localcluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
TEST_PORT_OFFSET = 10000
TEST_STATE_DIR = REPO / ".georoute-test"

# Property tests assert what the code does, not how fast: on a loaded machine (CI, or two
# cores shared by several test sessions) an example or its data can take longer than
# Hypothesis's 200 ms deadline and health-check limits for reasons that are not the code's.
# Loaded always, not only under CI, because that describes every machine this runs on.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `chaos` suite (long fault runs, long fuzzing) and the `soak` (half an hour by
    default) run only when asked for by a marker expression that names them (`pytest -m
    chaos`, `pytest -m soak`); `make test` runs the quick subset."""
    for marker in ("chaos", "soak"):
        if marker in (config.option.markexpr or ""):
            continue
        held = [item for item in items if item.get_closest_marker(marker) is not None]
        if held:
            config.hook.pytest_deselected(items=held)
            items[:] = [item for item in items if item.get_closest_marker(marker) is None]


@pytest.fixture(scope="session")
def test_config() -> Config:
    """router.toml with every port moved up by 10000 (16501.., docstore 17117, router 16600).

    Every port the tests and the bench use stays below 32768, outside Linux's ephemeral range:
    a port there can be taken at random by the source port of any client connection."""
    return with_port_offset(
        load_config(REPO / "router.toml"), TEST_PORT_OFFSET, str(TEST_STATE_DIR)
    )


def _other_sessions(lease_dir: Path) -> bool:
    """Whether another live test session still uses the cluster (its pid file is a lease)."""
    for lease in lease_dir.glob("*"):
        if lease.name.isdigit() and int(lease.name) != os.getpid():
            if Path(f"/proc/{lease.name}").exists():
                return True
            lease.unlink(missing_ok=True)
    return False


@pytest.fixture(scope="session")
def cluster(test_config: Config) -> Iterator[LocalCluster]:
    """The running test cluster. GEOROUTE_KEEP_CLUSTER=1 leaves it up for fast reruns.

    Sessions that overlap (several engineers, one checkout) share it: the last one out stops it.
    """
    local = LocalCluster(test_config)
    local.up()
    lease_dir = local.state_dir / "sessions"
    lease_dir.mkdir(exist_ok=True)
    lease = lease_dir / str(os.getpid())
    lease.touch()
    yield local
    lease.unlink(missing_ok=True)
    if os.environ.get("GEOROUTE_KEEP_CLUSTER") != "1" and not _other_sessions(lease_dir):
        local.down(purge=True)


@pytest.fixture(scope="session")
def docstore_uri(cluster: LocalCluster) -> str:
    return cluster.docstore_uri
