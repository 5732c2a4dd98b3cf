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
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.pool import NullPool

from billing.adapters.sql import SchemaError, SqlStore, migrate
from billing.adapters.sql.schema import alembic_config, head_revision
from billing.adapters.sql.tables import FEED_SEQUENCE, metadata

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


def test_the_feed_migration_numbers_existing_rows_in_seq_order_page_by_page(
    empty_url: str,
) -> None:
    """0002 numbers the rows already there: in seq order (not the order they were written in),
    three rows an UPDATE here, so the seven take three pages; on Postgres from the feed's
    sequence, which then goes on after the last of them."""
    if empty_url.startswith("sqlite:///"):  # `migrate` would make its directory
        Path(empty_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(empty_url, poolclass=NullPool)
    seqs = [7, 3, 11, 1, 5, 2, 9]
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO accounts (user_id, balance) VALUES ('u', 7)"))
            for seq in seqs:
                connection.execute(text(
                    "INSERT INTO ledger (seq, key, user_id, type, coins, balance_after,"
                    " shortfall, description, session_id, payment_id, caller, request_id,"
                    " created_at) VALUES (:seq, :key, 'u', 'GRANT', 1, 1, 0, '', '', '', '',"
                    " '', CURRENT_TIMESTAMP)"), {"seq": seq, "key": f"grant:{seq}"})
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))  # (connection, cursor, sql...)
        with engine.begin() as connection:
            config = alembic_config(connection)
            config.attributes["feed_backfill_page"] = 3
            command.upgrade(config, "head")
        with engine.connect() as connection:
            numbered = [tuple(row) for row in connection.execute(
                text("SELECT seq, feed_position FROM ledger ORDER BY seq"))]
            postgres = connection.dialect.name == "postgresql"
            following = connection.execute(
                text(f"SELECT nextval('{FEED_SEQUENCE}')")).scalar() if postgres else None
    finally:
        engine.dispose()

    ordered = sorted(seqs)
    assert len([sql for sql in statements if "SET feed_position" in sql]) == 3
    if postgres:
        assert numbered == list(zip(ordered, range(1, 8), strict=True))
        assert following == 8
    else:
        assert numbered == [(seq, seq) for seq in ordered]  # SQLite writers give seq, too
    assert differences(empty_url) == []


def test_the_feed_sequence_hands_out_no_blocks(empty_postgres_url: str) -> None:
    """CACHE 1: a later draw is higher than every earlier one, whichever session draws."""
    migrate(empty_postgres_url)
    engine = create_engine(empty_postgres_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            cache = connection.execute(text(
                "SELECT cache_size FROM pg_sequences WHERE sequencename = :name"),
                {"name": FEED_SEQUENCE}).scalar()
    finally:
        engine.dispose()

    assert cache == 1
