"""Database errors, translated once into the domain's vocabulary.

- A lost race (unique violation, serialization failure, deadlock, SQLite's "database is locked")
  becomes TransientConflict: the use-case runner re-runs the whole unit.
- A connection dropped by the server (a restart) before COMMIT: TransientConflict too, so the
  unit re-runs on a fresh connection and the caller never sees the restart.
- A refused or broken connection (and a pool with no connection to give) becomes
  StoreUnavailable: the caller gets a retryable error. That includes a failed COMMIT, whose
  outcome we cannot know: every write is keyed, so the retry is safe either way.
- Anything else (a CHECK violation, SQL that does not fit the schema) is a bug and propagates.

The units of work meet the driver's own exceptions (they run SQL on the raw DBAPI cursor, see
connection.py); migrations, the schema check and the tests' helpers meet SQLAlchemy's wrappers of
them. Both come through `translate`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from sqlalchemy import exc

from billing.domain.errors import StoreUnavailable, TransientConflict

log = logging.getLogger(__name__)

# Postgres SQLSTATEs: unique_violation, serialization_failure, deadlock_detected.
_PG_CONFLICTS = frozenset({"23505", "40001", "40P01"})
# Connection exceptions (class 08), server going away (57P01-57P03), out of connections (53300).
_PG_UNAVAILABLE_PREFIXES = ("08", "57P0", "53")

# Extended result codes refine these (SQLITE_BUSY_TIMEOUT, SQLITE_LOCKED_SHAREDCACHE, ...).
_SQLITE_CONFLICT_PREFIXES = ("SQLITE_BUSY", "SQLITE_LOCKED")
_SQLITE_UNIQUE_VIOLATIONS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_SQLITE_UNAVAILABLE_PREFIXES = ("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_NOMEM")


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs."""


@contextmanager
def translated_errors(*, committing: bool = False) -> Iterator[None]:
    """Run a database call through SQLAlchemy, raising the domain's error for a lost race or a
    lost database (see `translate`)."""
    try:
        yield
    except exc.DBAPIError as error:
        translated = translate(error.orig, lost=error.connection_invalidated,
                               committing=committing)
        if translated is None:
            raise
        raise translated from error
    except exc.TimeoutError as error:
        raise pool_exhausted() from error


def translate(
    error: BaseException | None, *, lost: bool, committing: bool = False
) -> Exception | None:
    """The domain error for a driver's `error`, or None when it is a bug to propagate as it is.

    `lost`: the connection is gone (the caller has invalidated it). Lost before COMMIT, it took
    nothing with it (the server rolled the transaction back): the unit runs again, on a fresh
    connection. Lost during COMMIT, the outcome is unknown: the caller gets STORE_UNAVAILABLE,
    and its retry is safe because every write is keyed.
    """
    if lost and not committing:
        return TransientConflict("the database connection was lost; re-run")
    if isinstance(error, sqlite3.Error):
        return _translate_sqlite(error)
    sqlstate = getattr(error, "pgcode", None) or ""
    if sqlstate in _PG_CONFLICTS:
        return TransientConflict(f"lost a race in the database (SQLSTATE {sqlstate})")
    if lost or sqlstate.startswith(_PG_UNAVAILABLE_PREFIXES):
        return _unavailable(error)
    # psycopg2 reports a refused connection or a dropped socket without any SQLSTATE.
    if not sqlstate and isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError):
        return _unavailable(error)
    return None


def pool_exhausted() -> StoreUnavailable:
    """Every pooled connection stayed busy for the pool's timeout."""
    return StoreUnavailable("the database is too busy to take the request; retry")


def _translate_sqlite(original: sqlite3.Error) -> Exception | None:
    name = getattr(original, "sqlite_errorname", "")
    if name.startswith(_SQLITE_CONFLICT_PREFIXES) or name in _SQLITE_UNIQUE_VIOLATIONS:
        return TransientConflict(f"lost a race in the database ({name})")
    if name.startswith(_SQLITE_UNAVAILABLE_PREFIXES):
        log.warning("SQLite database unusable: %s", _first_line(str(original)))
        return StoreUnavailable("the database cannot be opened or written; retry later")
    return None


def _unavailable(error: BaseException | None) -> StoreUnavailable:
    # The driver's message may name the host; it goes to the log, never to the caller.
    log.warning("database unavailable: %s", _first_line(str(error)))
    return StoreUnavailable("the database is unavailable; retry later")


def _first_line(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[0] if lines else ""


def brief(error: BaseException) -> str:
    """The error's type and the first line of its message, for a log line (the rest of a
    driver's message may name hosts and queries)."""
    first = _first_line(str(error))
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
