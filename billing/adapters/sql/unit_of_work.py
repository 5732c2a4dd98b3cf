"""SqlUnitOfWork: one database transaction on one pooled connection (implements UnitOfWork)."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, CursorResult, Engine, Executable, Result

from billing.adapters.sql.engine import unit_options
from billing.adapters.sql.errors import translated_errors
from billing.adapters.sql.repositories.accounts import SqlAccountRepository, SqlLedgerRepository
from billing.adapters.sql.repositories.inbox import SqlEventInbox, SqlIdempotencyStore
from billing.adapters.sql.repositories.payments import SqlPaymentRepository, SqlRefundRepository
from billing.domain.events import DomainEvent

log = logging.getLogger(__name__)


class SqlUnitOfWork:
    """Implements UnitOfWork. Rolls back unless `commit()` is called.

    A writing unit locks what it reads (see engine.py for how, per database). After `commit()` or
    `rollback()` the unit stays usable: the next statement begins a new transaction.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        read_only: bool = False,
        snapshot: bool = False,
        reader: Engine | None = None,
    ) -> None:
        # Plain reads go to the reader's autocommit pool; a snapshot needs a real transaction.
        separate_reader = reader is not None and reader is not engine
        self._autocommit = read_only and not snapshot and separate_reader
        self._engine = reader if self._autocommit and reader is not None else engine
        self.read_only = read_only or snapshot
        self._snapshot = snapshot
        self.dialect_name = engine.dialect.name
        self.events: list[DomainEvent] = []
        self._connection: Connection | None = None
        self._committed = False
        self.accounts = SqlAccountRepository(self)
        self.ledger = SqlLedgerRepository(self)
        self.payments = SqlPaymentRepository(self)
        self.refunds = SqlRefundRepository(self)
        self.inbox = SqlEventInbox(self)
        self.idempotency = SqlIdempotencyStore(self)

    def __enter__(self) -> Self:
        with translated_errors():
            connection = self._engine.connect()
            try:
                if not self._autocommit:
                    if self._snapshot or self.dialect_name == "sqlite":
                        connection.execution_options(
                            **unit_options(self.dialect_name, read_only=self.read_only))
                    # Begin now, not at the first statement: on SQLite a writer waits for the
                    # write lock here.
                    connection.begin()
            except BaseException:
                connection.close()
                raise
        self._connection = connection
        self._committed = False
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._require_connection()
        self._connection = None
        try:
            if connection.in_transaction():
                connection.rollback()
        except Exception:
            # Nothing uncommitted survives a lost connection: the server discards it. Raising
            # here would only hide the error the unit is already leaving with, if any.
            log.warning("rollback failed; the connection is discarded", exc_info=True)
        finally:
            connection.close()
            if not self._committed:
                self.events.clear()

    def commit(self) -> None:
        assert not self.read_only, "a read-only unit cannot commit"
        with translated_errors(committing=True):
            self._require_connection().commit()
        self._committed = True

    def rollback(self) -> None:
        with translated_errors():
            self._require_connection().rollback()

    def execute(self, statement: Executable) -> CursorResult[Any]:
        """Run one statement in the unit's transaction (beginning a new one after a commit)."""
        connection = self._require_connection()
        with translated_errors():
            return connection.execute(statement)

    def stream(self, statement: Executable, batch: int) -> Result[Any]:
        """Like `execute`, but rows arrive `batch` at a time through a server-side cursor."""
        connection = self._require_connection()
        with translated_errors():
            return connection.execute(statement, execution_options={"yield_per": batch})

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("use the unit of work inside a `with` block")
        return self._connection
