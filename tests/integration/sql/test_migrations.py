"""Migrations: an empty database reaches head on Postgres and SQLite, the result matches the
tables the code uses, and the service refuses a database that is not at head."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from billing.adapters.sql import SchemaError, SqlStore, migrate
from billing.adapters.sql.schema import alembic_config, head_revision
from billing.adapters.sql.tables import metadata

TABLES = {"accounts", "ledger", "payments", "refunds", "webhook_inbox", "idempotency_records"}


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("empty_postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'var' / 'billing.db'}"


def differences(url: str) -> list[object]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def execute(url: str, statement: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_an_empty_database_migrates_to_head(empty_url: str) -> None:
    migrate(empty_url)

    engine = create_engine(empty_url, poolclass=NullPool)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == (
                head_revision())
    finally:
        engine.dispose()


def test_the_migrations_match_the_tables_exactly(empty_url: str) -> None:
    migrate(empty_url)

    assert differences(empty_url) == []


def test_the_comparison_does_see_a_difference(empty_url: str) -> None:
    migrate(empty_url)
    execute(empty_url, "DROP INDEX ix_ledger_user_id_seq")

    assert [diff[0] for diff in differences(empty_url)] == ["add_index"]  # type: ignore[index]


REPLICA_MIGRATING = """
import sys
from billing.adapters.sql import migrate
print("ready", flush=True)
sys.stdin.readline()
migrate(sys.argv[1])
"""


def test_two_replicas_migrating_at_once_both_succeed(empty_url: str) -> None:
    replicas = [subprocess.Popen([sys.executable, "-c", REPLICA_MIGRATING, empty_url],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for replica in replicas:  # both started and waiting: then both go at once
            assert replica.stdout is not None and replica.stdout.readline().strip() == "ready"
        for replica in replicas:  # "go" to every replica before waiting for any of them
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        outcomes = [replica.communicate(timeout=60) for replica in replicas]
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()

    assert [replica.returncode for replica in replicas] == [0, 0], outcomes
    assert differences(empty_url) == []


def test_migrating_twice_changes_nothing(empty_url: str) -> None:
    migrate(empty_url)
    migrate(empty_url)

    assert differences(empty_url) == []


def test_the_migrations_downgrade_to_nothing_and_back(empty_url: str) -> None:
    migrate(empty_url)
    engine = create_engine(empty_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()

    migrate(empty_url)
    assert differences(empty_url) == []


def test_check_schema_refuses_an_unmigrated_database_then_passes(empty_url: str) -> None:
    store = SqlStore(empty_url)
    try:
        with pytest.raises(SchemaError, match="run `billing migrate`"):
            store.check_schema()
        migrate(empty_url)
        store.check_schema()
    finally:
        store.dispose()


def test_check_schema_refuses_a_missing_or_unknown_revision(empty_url: str) -> None:
    migrate(empty_url)
    store = SqlStore(empty_url)
    try:
        execute(empty_url, "DELETE FROM alembic_version")
        with pytest.raises(SchemaError, match="run `billing migrate`"):
            store.check_schema()
        execute(empty_url, "INSERT INTO alembic_version (version_num) VALUES ('9999')")
        with pytest.raises(SchemaError, match="unknown to this code"):
            store.check_schema()
    finally:
        store.dispose()


def test_migrate_creates_the_directory_of_a_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "var" / "nested" / "billing.db"

    migrate(f"sqlite:///{database}")

    assert database.exists()


def test_a_migrated_sqlite_database_uses_the_write_ahead_log(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"

    migrate(f"sqlite:///{database}")

    connection = sqlite3.connect(database)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def test_the_start_up_check_knows_the_newest_migration() -> None:
    from billing.adapters.sql.schema import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD, "update SCHEMA_HEAD with each new migration"
