"""Databases for the tests: a fresh Postgres database per run, a fresh SQLite file per test.

Postgres comes from BILLING_TEST_DATABASE_URL (default: the local server). With no server
reachable, Postgres tests are skipped with one line saying why, except under CI=true, where
that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from billing.adapters.sql import migrate
from billing.adapters.sql.tables import metadata

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _base_url() -> URL:
    return make_url(os.environ.get("BILLING_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL))


def _as_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _admin_engine(base: URL) -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                         connect_args={"connect_timeout": 5})


class PostgresServer:
    """Creates and drops throwaway databases on the test server."""

    def __init__(self, base: URL) -> None:
        self.base = base
        self._admin = _admin_engine(base)
        self._created: list[str] = []
        self._scratch: str | None = None

    def check_reachable(self) -> None:
        try:
            with self._admin.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as error:
            where = self.base.render_as_string(hide_password=True)
            reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
            message = f"Postgres unreachable at {where}: {reason}"
            if os.environ.get("CI") == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"billing_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return _as_string(self.base.set(database=name))

    def emptied_scratch_database(self) -> str:
        """One database per run, emptied on each call: dropping its schema takes milliseconds,
        dropping a database about a second (a checkpoint)."""
        if self._scratch is None:
            self._scratch = self.create_database()
        engine = create_engine(self._scratch, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                _terminate_others(connection, str(make_url(self._scratch).database))
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
        finally:
            engine.dispose()
        return self._scratch

    def drop_all(self) -> None:
        with self._admin.connect() as connection:
            for name in self._created:
                # Connections a test left open (a pool, a killed replica) must not keep it alive.
                _terminate_others(connection, name)
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        self._created.clear()
        self._admin.dispose()


def _terminate_others(connection: Connection, database: str) -> None:
    connection.execute(
        text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
             " WHERE datname = :name AND pid <> pg_backend_pid()"),
        {"name": database},
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(_base_url())
    server.check_reachable()
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A database of this run's own, migrated to head; dropped when the run ends.

    Tests share it: they use unique random ids, so they need no cleanup.
    """
    url = postgres_server.create_database()
    migrate(url)
    return url


@pytest.fixture
def empty_postgres_url(postgres_server: PostgresServer) -> str:
    """A database with nothing in it at all (the run's scratch database, emptied for each test;
    connections still open to it are closed first)."""
    return postgres_server.emptied_scratch_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite database file, migrated to head."""
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    migrate(url)
    return url


@pytest.fixture
def clean_postgres_url(postgres_url: str) -> str:
    """The run's database with every table emptied, for tests that list everything a store
    holds (most tests use unique ids instead and need no cleanup)."""
    engine = create_engine(postgres_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            # A connection some test left inside a transaction must fail this, not hang it.
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            names = ", ".join(table.name for table in metadata.sorted_tables)
            connection.execute(text(f"TRUNCATE {names}"))
    finally:
        engine.dispose()
    return postgres_url
