"""One pooled DBAPI connection as a unit of work uses it: few round trips, little CPU per call.

The units run their SQL on the raw driver cursor of a connection checked out of SQLAlchemy's pool
(`engine.raw_connection()`: the pool still recycles and invalidates it), with statements rendered
once (statements.py). No SQLAlchemy Connection, statement construction or cache key on the way.

**Postgres.** Connections run in psycopg2's autocommit mode and the unit sends BEGIN itself, so
it can decide what travels together. A writing unit keeps a buffer of what it must send before
its next read: BEGIN first, then each registered INSERT/UPDATE, rendered client-side with
`cursor.mogrify`. The buffer goes out with the next read as one multi-statement simple query (one
round trip; psycopg2 hands back the rows of the last statement), or with COMMIT. A unit thus costs
one round trip per read that reaches the database, plus one. An error in a piggybacked write
surfaces on that round trip, and is translated like any other (errors.py).

With autocommit on, neither psycopg2's rollback() nor the pool's reset-on-return ends a
transaction we opened with our own BEGIN: `close()` sends ROLLBACK whenever the server says a
transaction is still open, and discards the connection if even that fails.

Statements can be prepared on the server (PREPARE once per physical connection, then EXECUTE by
name: Postgres then skips parsing and, for these single-row lookups, planning). Which names a
connection has prepared is kept in the pool's `info` dict of that connection (_PerConnection),
which SQLAlchemy empties whenever it replaces the connection. Prepared statements outlive a
rolled-back transaction, so after a failed round trip that carried a PREPARE the set is
uncertain: the next unit on that connection starts with DEALLOCATE ALL.

**SQLite** is in-process: each statement runs when it is issued, inside BEGIN IMMEDIATE (writers)
or BEGIN (readers), as engine.py explains.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import psycopg2
import psycopg2.extensions
from sqlalchemy import exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

from billing.adapters.sql.errors import pool_exhausted, translate
from billing.adapters.sql.statements import Row, Statement

log = logging.getLogger(__name__)

Params = Sequence[Any]
B = TypeVar("B")

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_OPEN = frozenset({psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
                   psycopg2.extensions.TRANSACTION_STATUS_INERROR})

# How each kind of unit begins on Postgres (None: autocommit, every statement on its own). The
# level is explicit: a server default must not change it.
BEGIN_WRITER = b"BEGIN ISOLATION LEVEL READ COMMITTED"
BEGIN_SNAPSHOT = b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
BEGIN_SCAN = b"BEGIN READ ONLY"  # a server-side cursor needs a transaction, even in a reader

_STATE = "billing_connection"  # key of a connection's _PerConnection in the pool's info


class UnitConnection(Protocol):
    """What SqlUnitOfWork needs of its connection."""

    def query(self, statement: Statement, params: Params) -> list[Row]:
        """Send whatever is pending, then run `statement`; its rows."""
        ...

    def write(self, statement: Statement, params: Params) -> None:
        """Run `statement` (a writer's INSERT/UPDATE) before the next read or the commit."""
        ...

    def insert_rowid(self, statement: Statement, params: Params) -> int:
        """SQLite only: run an INSERT now; the rowid the database gave the row."""
        ...

    def text(self, sql: str, params: Params) -> list[Row]:
        """Ad-hoc SQL in the driver's parameter style (tests, operators); its rows, if any."""
        ...

    def stream(self, statement: Statement, params: Params, batch: int) -> Iterator[Row]:
        """The rows of `statement`, fetched `batch` at a time."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None:
        """End any transaction still open and give the connection back to its pool."""
        ...


class Connector:
    """Opens the connection each kind of unit runs on (both pools, both databases)."""

    def __init__(
        self,
        writer: Engine,
        reader: Engine,
        *,
        prepared_statements: bool,
        count_round_trip: Callable[[], None],
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._postgres = writer.dialect.name == "postgresql"
        self._prepare = prepared_statements and self._postgres
        self._count = count_round_trip

    def open(self, *, read_only: bool, snapshot: bool) -> UnitConnection:
        if not self._postgres:
            connection = SqliteConnection(
                _checkout(self._writer), "BEGIN" if read_only or snapshot else "BEGIN IMMEDIATE",
                self._count,
            )
            try:
                connection.begin()  # a writer waits for the database's write lock here
            except BaseException:
                connection.close()
                raise
            return connection
        if read_only and not snapshot:
            return PostgresConnection(_checkout(self._reader), self._reader, None,
                                      self._prepare, self._count)
        begin = BEGIN_SNAPSHOT if snapshot else BEGIN_WRITER
        return PostgresConnection(_checkout(self._writer), self._writer, begin, self._prepare,
                                  self._count)

    def ping(self) -> None:
        """SELECT 1 on a reader's connection; raises the domain's error when it fails."""
        connection = self.open(read_only=True, snapshot=False)
        try:
            connection.text("SELECT 1", ())
        finally:
            connection.close()


def _checkout(engine: Engine) -> PoolProxiedConnection:
    try:
        return engine.raw_connection()
    except exc.TimeoutError as error:
        raise pool_exhausted() from error
    except (psycopg2.Error, sqlite3.Error) as error:  # refused, or a file that cannot be opened
        translated = translate(error, lost=False)
        if translated is None:
            raise
        raise translated from error


class _PerConnection:
    """What outlives a unit on one physical connection: its cursor, and the statements it has
    prepared. Kept in the pool's `info` dict of that connection, which SQLAlchemy empties when it
    replaces the connection."""

    __slots__ = ("cursor", "prepared", "uncertain")

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.prepared: set[str] = set()
        self.uncertain = False  # a round trip carrying PREPARE failed: DEALLOCATE ALL first


class _Pooled(Generic[B]):
    """A connection checked out of the pool for one unit, and how that unit begins."""

    def __init__(self, pooled: PoolProxiedConnection, begin: B, count: Callable[[], None]
                 ) -> None:
        self._pooled = pooled
        self._raw: Any = pooled.dbapi_connection
        state = pooled.info.get(_STATE)
        if state is None:
            state = pooled.info[_STATE] = _PerConnection(pooled.cursor())
        self._state: _PerConnection = state
        self._cursor: Any = state.cursor
        self._begin = begin
        self._count = count
        self._begun = False  # BEGIN is pending or was sent, and the transaction not ended


class PostgresConnection(_Pooled[bytes | None]):
    """Implements UnitConnection for psycopg2 (see the module's docstring)."""

    _scans = itertools.count(1)

    def __init__(
        self,
        pooled: PoolProxiedConnection,
        engine: Engine,
        begin: bytes | None,
        prepare: bool,
        count: Callable[[], None],
    ) -> None:
        super().__init__(pooled, begin, count)
        self._engine = engine
        self._pending: list[bytes] = []
        self._valid = True
        self._prepare = prepare
        self._preparing: set[str] = set()  # PREPAREs rendered, not yet acknowledged
        self._deallocate = self._state.uncertain
        if self._deallocate:
            self._state.prepared.clear()

    # -- UnitConnection -------------------------------------------------------------------------
    def query(self, statement: Statement, params: Params) -> list[Row]:
        if not self._begun:
            self._start()
        self._pending.append(self._render(statement, params))
        self._send_pending()
        rows: list[Row] = self._cursor.fetchall()
        return rows

    def write(self, statement: Statement, params: Params) -> None:
        assert self._begin is not None, "a read-only unit does not write"
        if not self._begun:
            self._start()
        self._pending.append(self._render(statement, params))

    def insert_rowid(self, statement: Statement, params: Params) -> int:
        raise NotImplementedError("on Postgres a ledger row's seq comes from its sequence")

    def text(self, sql: str, params: Params) -> list[Row]:
        if not self._begun:
            self._start()
        self._pending.append(self._cursor.mogrify(sql, params or None))
        self._send_pending()
        if self._cursor.description is None:
            return []
        rows: list[Row] = self._cursor.fetchall()
        return rows

    def stream(self, statement: Statement, params: Params, batch: int) -> Iterator[Row]:
        if not self._begun:
            self._start(scan=True)
        name = f"billing_scan_{next(self._scans)}".encode()
        fetch = b"FETCH FORWARD %d FROM %s" % (batch, name)
        self._pending += [
            b"DECLARE %s NO SCROLL CURSOR FOR %s" % (name, self._cursor.mogrify(
                statement.sql, params or None)),
            fetch,
        ]
        while True:
            self._send_pending()
            rows = self._cursor.fetchall()
            yield from rows
            if len(rows) < batch:
                break
            self._pending.append(fetch)
        self._pending.append(b"CLOSE " + name)  # with the next round trip

    def commit(self) -> None:
        if not self._begun:
            return  # nothing happened since the transaction before ended
        self._pending.append(b"COMMIT")
        self._begun = False
        self._send_pending(committing=True)

    def rollback(self) -> None:
        self._discard_pending()
        if self._valid and self._raw.info.transaction_status in _OPEN:
            self._send(b"ROLLBACK")

    def close(self) -> None:
        try:
            self._discard_pending()
            if self._valid:
                status = None if self._raw.closed else self._raw.info.transaction_status
                if status in _OPEN:
                    self._send(b"ROLLBACK")  # a DEALLOCATE ALL due waits for the next unit
                elif status != _IDLE:  # broken, or a statement still running
                    self._invalidate(None)
        except Exception:
            # Nothing uncommitted survives a lost connection: the server discards it. Raising
            # here would only hide the error the unit is already leaving with, if any.
            log.warning("ending a unit's transaction failed; the connection is discarded",
                        exc_info=True)
            if self._valid:
                self._invalidate(None)
        finally:
            self._pooled.close()

    # -- how statements travel ------------------------------------------------------------------
    def _start(self, *, scan: bool = False) -> None:
        begin = self._begin or (BEGIN_SCAN if scan else None)
        if begin is not None:
            self._pending.append(begin)
            self._begun = True

    def _render(self, statement: Statement, params: Params) -> bytes:
        if not self._prepare:
            rendered: bytes = self._cursor.mogrify(statement.sql, params or None)
            return rendered
        execute: bytes = self._cursor.mogrify(statement.execute, params or None)
        name = statement.name
        if name in self._state.prepared or name in self._preparing:
            return execute
        self._preparing.add(name)
        return statement.prepare + b";" + execute

    def _send_pending(self, *, committing: bool = False) -> None:
        parts, self._pending = self._pending, []
        deallocating = self._deallocate
        if deallocating:  # after a BEGIN: a statement before it would fix the snapshot that
            # BEGIN ISOLATION LEVEL REPEATABLE READ must still be free to set
            parts.insert(1 if parts and parts[0].startswith(b"BEGIN") else 0, b"DEALLOCATE ALL")
        self._send(b";".join(parts), committing=committing)
        if self._preparing:
            self._state.prepared |= self._preparing
            self._preparing.clear()
        if deallocating:
            self._deallocate = self._state.uncertain = False

    def _send(self, query: bytes, *, committing: bool = False) -> None:
        self._count()
        try:
            self._cursor.execute(query)
        except psycopg2.Error as error:
            lost = self._failed(error)
            translated = translate(error, lost=lost, committing=committing)
            if translated is None:
                raise
            raise translated from error

    def _failed(self, error: psycopg2.Error) -> bool:
        """Bookkeeping after a failed round trip; True when the connection is lost."""
        lost = bool(self._engine.dialect.is_disconnect(error, self._raw, self._cursor))
        if lost:
            self._invalidate(error)
        elif self._preparing or self._deallocate:
            self._state.uncertain = True  # some of the batch ran, some did not
        self._preparing.clear()
        self._begun = self._begun and not lost
        return lost

    def _discard_pending(self) -> None:
        self._pending = []
        self._preparing.clear()
        self._begun = False

    def _invalidate(self, error: BaseException | None) -> None:
        """Discard this connection, and recycle every pooled one as old as it at its next
        checkout: what SQLAlchemy's own Connection does on a disconnect, so that after a server
        restart each re-run gets a live connection instead of the next dead one."""
        self._valid = False
        self._engine.pool._invalidate(self._pooled, error)


class SqliteConnection(_Pooled[str]):
    """Implements UnitConnection for sqlite3: statement by statement, in-process."""

    def begin(self) -> None:
        if not self._begun:
            self._execute(self._cursor, self._begin, ())
            self._begun = True

    def query(self, statement: Statement, params: Params) -> list[Row]:
        self._run(statement.sql, params)
        rows: list[Row] = self._cursor.fetchall()
        return rows

    def write(self, statement: Statement, params: Params) -> None:
        self._run(statement.sql, params)

    def insert_rowid(self, statement: Statement, params: Params) -> int:
        self._run(statement.sql, params)
        rowid: int = self._cursor.lastrowid
        return rowid

    def text(self, sql: str, params: Params) -> list[Row]:
        self._run(sql, params)
        rows: list[Row] = self._cursor.fetchall()
        return rows

    def stream(self, statement: Statement, params: Params, batch: int) -> Iterator[Row]:
        self.begin()
        cursor = self._raw.cursor()  # its own: the unit may read elsewhere meanwhile
        try:
            self._execute(cursor, statement.sql, params)
            while rows := cursor.fetchmany(batch):
                yield from rows
        finally:
            cursor.close()

    def commit(self) -> None:
        self._end("COMMIT", committing=True)

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def close(self) -> None:
        try:
            self._end("ROLLBACK")
        except Exception:
            log.warning("ending a unit's transaction failed; the connection is discarded",
                        exc_info=True)
            self._pooled.invalidate()
        finally:
            self._pooled.close()

    def _run(self, sql: str, params: Params) -> None:
        self.begin()
        self._execute(self._cursor, sql, params)

    def _end(self, how: str, *, committing: bool = False) -> None:
        self._begun = False
        if self._raw.in_transaction:
            self._execute(self._cursor, how, (), committing=committing)

    def _execute(self, cursor: Any, sql: str, params: Params, *,
                 committing: bool = False) -> None:
        self._count()
        try:
            cursor.execute(sql, params)
        except sqlite3.Error as error:
            translated = translate(error, lost=False, committing=committing)
            if translated is None:
                raise
            raise translated from error
