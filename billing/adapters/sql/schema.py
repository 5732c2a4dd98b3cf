"""Alembic, driven from code: `migrate(url)` and the schema check at start-up.

The migrations live in this package (migrations/), so an installed wheel carries them and no
alembic.ini is needed. The connection is handed to env.py through `config.attributes`, never the
URL: a password with "%" in it would trip ConfigParser's interpolation.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, exc
from sqlalchemy.engine import URL, make_url

from billing.adapters.sql.engine import build_engine, unit_options
from billing.adapters.sql.errors import SchemaError, translated_errors

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

# The newest migration in migrations/versions (a test keeps the two in step). The start-up check
# compares it with the database's alembic_version without importing Alembic, which would add a
# quarter of a second to every start.
SCHEMA_HEAD = "0002"

MIGRATIONS = Path(__file__).resolve().with_name("migrations")

# Two replicas starting `billing migrate` together: the second waits, then finds nothing to do.
_MIGRATION_LOCK = 0x62696C6C  # "bill", a Postgres advisory lock id of our own
# Alembic keeps the running migration in module globals (alembic.context, alembic.op): two
# threads of one process must not migrate at the same time, whatever the database.
_ONE_MIGRATION_PER_PROCESS = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships its migrations"
    return head


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema (alembic upgrade head), in one
    transaction on Postgres. Creates the directory of a SQLite database file if needed."""
    from alembic import command

    parsed = make_url(url)
    _create_sqlite_directory(parsed)
    engine = build_engine(parsed, pool_size=1)
    try:
        with _ONE_MIGRATION_PER_PROCESS, translated_errors(), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            command.upgrade(alembic_config(connection), "head")
        if engine.dialect.name == "sqlite":
            _use_write_ahead_log(engine)
    finally:
        engine.dispose()


def _use_write_ahead_log(engine: Engine) -> None:
    """WAL lets readers go on while a unit writes; the database file remembers the setting.

    Switching needs the file to itself, and SQLite refuses at once (no busy wait) when another
    connection is open: that is harmless (rollback-journal mode is just as correct, only readers
    wait for a commit), so it is logged and left to the next `billing migrate`.
    """
    connection = engine.raw_connection()  # outside any transaction, as the PRAGMA needs
    try:
        connection.cursor().execute("PRAGMA journal_mode = WAL")
    except sqlite3.OperationalError as error:
        log.warning("SQLite stays in rollback-journal mode for now: %s", error)
    finally:
        connection.close()


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database is at this code's newest migration."""
    url = engine.url
    if _sqlite_file(url) is not None and not _sqlite_file_exists(url):
        raise SchemaError(
            f"database schema is missing: {url.database} does not exist; run `billing migrate`"
        )
    with translated_errors(), engine.connect() as connection:
        connection.execution_options(**unit_options(connection.dialect.name, read_only=True))
        current = _current_revision(connection)
    head = SCHEMA_HEAD
    if current == head:
        return
    if current is None:
        raise SchemaError(
            "database schema is missing (no migration applied): run `billing migrate`"
        )
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(current)
    except CommandError:
        raise SchemaError(
            f"database schema is at revision {current!r}, unknown to this code (newest {head!r}):"
            " it was migrated by a newer release; deploy that release"
        ) from None
    raise SchemaError(
        f"database schema is outdated (revision {current!r}, this code needs {head!r}):"
        " run `billing migrate`"
    )


def _current_revision(connection: Connection) -> str | None:
    """The database's Alembic revision; None when no migration was ever applied."""
    try:
        with connection.begin_nested() if connection.in_transaction() else connection.begin():
            row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    except exc.ProgrammingError:  # Postgres: no such table
        return None
    except exc.OperationalError as error:  # SQLite: "no such table"
        if "no such table" not in str(error.orig):
            raise
        return None
    return str(row[0]) if row else None


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None (another backend, or in memory)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    database = str(url.database)
    if database.startswith("file:"):  # a URI filename; leave it to SQLite
        return None
    return Path(database)


def _sqlite_file_exists(url: URL) -> bool:
    path = _sqlite_file(url)
    return path is None or path.exists()


def _create_sqlite_directory(url: URL) -> None:
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
