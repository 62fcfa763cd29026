"""A scratch cluster of its own for tests that stop, kill or promote nodes, so the session's
cluster (which other test sessions may share) is never disturbed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from router.config import Config
from router.tools.config_write import with_port_offset
from router.tools.localcluster import LocalCluster


@contextlib.contextmanager
def scratch_cluster(test_config: Config, offset: int,
                    name: str) -> Iterator[tuple[LocalCluster, Config]]:
    """The test cluster's layout `offset` ports further, in a state dir of its own (`name`),
    up for the block and purged after it."""
    config = with_port_offset(test_config, offset, str(Path(test_config.cluster.state_dir) / name))
    local = LocalCluster(config)
    try:
        local.up()  # inside: a start that fails half-way (a port taken meanwhile) stops
        yield local, config  # what it had started, e.g. the document store, rather than leak it
    finally:
        local.down(purge=True)
