"""Engines for Postgres (psycopg2) and SQLite, and how their transactions begin.

Postgres runs at READ COMMITTED. A writing unit takes row locks (SELECT ... FOR UPDATE) on
everything it reads before deciding, so the next writer waits for the commit and then reads the
new row versions; READ COMMITTED gives each statement a fresh snapshot, which is exactly what the
waiter needs after the wait (REPEATABLE READ or SERIALIZABLE would abort it with a serialization
failure instead, only to re-run the same work). What row locks cannot cover, a row that does not
exist yet, unique keys settle: the loser gets a unique violation and the whole use case re-runs.
The units' connections are all in psycopg2's autocommit mode: a writing unit sends its own
BEGIN ISOLATION LEVEL READ COMMITTED, so that it can send it together with its first statement
(connection.py). Read-only units use a second pool: one round trip per read, no locks, and no
writer waiting on a lock can starve them of connections. A snapshot unit (the audit) sends BEGIN
ISOLATION LEVEL REPEATABLE READ, READ ONLY: one consistent view for all its reads, and never a
serialization failure (read-only transactions cannot cause one). Migrations use an engine of
their own at READ COMMITTED, driven by SQLAlchemy's transactions.

SQLite has no row locks: a writing unit opens with BEGIN IMMEDIATE, which takes the database's
write lock up front (others wait up to the busy timeout), so a read-decide-write sequence can never
interleave with another writer. pysqlite's own transaction handling is switched off so that we
can emit BEGIN ourselves (SQLAlchemy's documented recipe for SQLite transactions).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

# Execution option set on a unit's connection; read by the SQLite "begin" listener below.
READ_ONLY_OPTION = "billing_read_only"

POSTGRES_CONNECT_TIMEOUT_S = 5


def build_engine(
    url: str | URL,
    *,
    pool_size: int = 10,
    pool_timeout_s: float = 10.0,
    sqlite_busy_timeout_s: float = 10.0,
    autocommit: bool = False,
) -> Engine:
    """An engine for `url`; nothing connects until the first unit of work or ping. On Postgres
    `autocommit` leaves BEGIN to the caller (the units); else SQLAlchemy begins at READ
    COMMITTED (explicit: a server default must not change it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, pool_size, pool_timeout_s, sqlite_busy_timeout_s)
    isolation_level = "AUTOCOMMIT" if autocommit else "READ COMMITTED"
    return _postgres_engine(parsed, pool_size, pool_timeout_s, isolation_level)


def build_reader_engine(engine: Engine, *, pool_size: int, pool_timeout_s: float) -> Engine:
    """The engine of read-only units. On Postgres its own pool of AUTOCOMMIT connections: each
    read is one round trip (no BEGIN, no ROLLBACK) and sees what was committed when it ran. On
    SQLite the writer's engine (a reading unit begins with a plain BEGIN)."""
    if engine.dialect.name != "postgresql":
        return engine
    return _postgres_engine(engine.url, pool_size, pool_timeout_s, "AUTOCOMMIT")


def _postgres_engine(
    url: URL, pool_size: int, pool_timeout_s: float, isolation_level: str
) -> Engine:
    # URL query parameters (?connect_timeout=..&application_name=..) take precedence.
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "billing"
    # No pre-ping (it would cost a round trip per unit): a connection the server dropped fails
    # its first statement instead, every pooled connection as old as it is discarded, and the
    # unit, which had committed nothing, runs again on a new one (connection.py, errors.py).
    return create_engine(
        url,
        isolation_level=isolation_level,
        pool_size=pool_size,
        max_overflow=pool_size // 2,  # a burst may open a few more, closed once returned
        pool_timeout=pool_timeout_s,
        # In autocommit mode psycopg2's rollback() sends nothing, so the pool's reset on return
        # would be a call for nothing: the units end their own transactions (connection.py).
        pool_reset_on_return=None if isolation_level == "AUTOCOMMIT" else "rollback",
        connect_args=connect_args,
    )


def _sqlite_engine(
    url: URL, pool_size: int, pool_timeout_s: float, busy_timeout_s: float
) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    pool_options: dict[str, Any] = (
        {} if in_memory else {"pool_size": pool_size, "max_overflow": pool_size,
                              "pool_timeout": pool_timeout_s}
    )
    # No pre-ping: a database file has no server that could drop the connection.
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s}, **pool_options)
    event.listen(engine, "connect", _connect_sqlite)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def unit_options(dialect_name: str, *, read_only: bool) -> dict[str, Any]:
    """Execution options for a SQLAlchemy Connection that only reads (the schema check), set
    before its transaction begins: on SQLite no write lock, on Postgres a read-only snapshot."""
    options: dict[str, Any] = {READ_ONLY_OPTION: read_only}
    if read_only and dialect_name == "postgresql":
        options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return options


def _connect_sqlite(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None  # pysqlite must not BEGIN on its own
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")  # off by default, per connection
    finally:
        cursor.close()


def _begin_sqlite(connection: Connection) -> None:
    # SQLAlchemy Connections only (migrations, the schema check): the units send their own.
    read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
