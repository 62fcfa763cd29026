"""The migration files as `georoute db migrate` finds them (no database needed)."""

from pathlib import Path

import pytest

from router.tools.db.migrate import SQL_DIR, MigrationError, load_migrations


def test_the_packaged_directory_is_the_repositorys_sql_folder() -> None:
    repo_sql = Path(__file__).resolve().parents[2] / "sql"
    assert SQL_DIR == repo_sql
    versions = [m.version for m in load_migrations()]
    assert versions and versions == sorted(versions)
    assert len(versions) == len(list(repo_sql.glob("*.sql")))


def test_a_missing_directory_is_refused_rather_than_applying_nothing(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no such migrations directory"):
        load_migrations(tmp_path / "absent")
