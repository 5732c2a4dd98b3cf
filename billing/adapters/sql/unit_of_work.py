"""SqlUnitOfWork: one database transaction on one pooled connection (implements UnitOfWork).

A unit of work in Fowler's sense. Repositories register the rows they add and change; nothing is
written until the unit next needs the database: the writes travel with its next read, or with
COMMIT (connection.py says how, per database). Rows the unit loaded or wrote are kept in an
identity map per table (identity.py) and served from it by every key; a save writes only the
columns that changed. So a unit costs one round trip per read that reaches the database, plus
one, and a duplicate key another unit holds surfaces, as a TransientConflict, no later than the
commit.

Two things ride on the COMMIT for the ledger feed, with no round trip of their own: on SQLite, the
positions of the unit's new ledger rows (repositories/accounts.py says why seq will do); on
Postgres, a `pg_notify` on the status channel for each payment whose status changed without a
ledger row in this unit (a change with a row reaches watchers through the sequencer's feed
notification, which the row's position triggers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from billing.adapters.sql.identity import Key, RowCache
from billing.adapters.sql.repositories.accounts import SqlAccountRepository, SqlLedgerRepository
from billing.adapters.sql.repositories.inbox import SqlEventInbox, SqlIdempotencyStore
from billing.adapters.sql.repositories.payments import SqlPaymentRepository, SqlRefundRepository
from billing.adapters.sql.statements import Read, Row, Statement
from billing.domain.events import CoinsCredited, CoinsDebited, DomainEvent, PaymentStatusChanged

if TYPE_CHECKING:
    from billing.adapters.sql.connection import Connector, UnitConnection
    from billing.adapters.sql.repositories import RepositorySql

R = TypeVar("R")


class _MadeOnFirstUse(Generic[R]):
    """A unit's repository, made (with its identity map) the first time it is asked for: a unit
    uses a few of them. Unlike functools.cached_property, no lock: a unit is one thread's."""

    def __init__(self, make: Callable[[SqlUnitOfWork], R]) -> None:
        self._make = make
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, unit: SqlUnitOfWork, owner: type | None = None) -> R:
        repository = unit.__dict__[self._name] = self._make(unit)  # found there from now on
        return repository


class SqlUnitOfWork:
    """Implements UnitOfWork. Rolls back unless `commit()` is called.

    A writing unit locks what it reads (see engine.py for how, per database). After `commit()` or
    `rollback()` the unit stays usable: the next statement begins a new transaction.
    """

    accounts = _MadeOnFirstUse(SqlAccountRepository)
    ledger = _MadeOnFirstUse(SqlLedgerRepository)
    payments = _MadeOnFirstUse(SqlPaymentRepository)
    refunds = _MadeOnFirstUse(SqlRefundRepository)
    inbox = _MadeOnFirstUse(SqlEventInbox)
    idempotency = _MadeOnFirstUse(SqlIdempotencyStore)

    def __init__(
        self,
        connector: Connector,
        sql: RepositorySql,
        *,
        read_only: bool = False,
        snapshot: bool = False,
    ) -> None:
        self._connector = connector
        self.sql = sql
        self.read_only = read_only or snapshot
        self._snapshot = snapshot
        # A writer's reads lock, so what it caches stays true until it ends; a snapshot sees one
        # moment. A plain reader's each read sees the latest commit: it keeps no identity map.
        self._caches: list[RowCache] | None = None if read_only and not snapshot else []
        self.events: list[DomainEvent] = []
        # Postgres: the ledger seq drawn when a user's account was locked, for its next row.
        self.reserved_seqs: dict[str, int] = {}
        # SQLite: the seqs of the ledger rows this transaction added, numbered at its commit.
        self.unnumbered_seqs: list[int] = []
        self._announced = 0  # events before this index went with an earlier commit
        self._connection: UnitConnection | None = None
        self._committed = False

    def __enter__(self) -> Self:
        self._connection = self._connector.open(read_only=self.read_only and not self._snapshot,
                                                snapshot=self._snapshot)
        self._committed = False
        self._announced = len(self.events)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._require_connection()
        self._connection = None
        self._forget()
        connection.close()  # ends whatever transaction is still open; never raises
        if not self._committed:
            self.events.clear()

    def commit(self) -> None:
        assert not self.read_only, "a read-only unit cannot commit"
        connection = self._require_connection()
        self._before_commit(connection)
        self._forget()  # the locks go with the transaction, and so do the rows they guarded
        connection.commit()
        self._committed = True
        self._announced = len(self.events)

    def rollback(self) -> None:
        connection = self._require_connection()
        self._forget()
        connection.rollback()

    # -- for the repositories -----------------------------------------------------------------
    def identity_map(self, keys: Sequence[Key]) -> RowCache | None:
        """A new identity map for a repository, or None in a unit that keeps none."""
        if self._caches is None:
            return None
        cache = RowCache(keys)
        self._caches.append(cache)
        return cache

    def query(self, read: Read, params: Sequence[Any]) -> list[Row]:
        """Rows of `read`, locked when the unit writes; pending writes go first."""
        statement = read.plain if self.read_only else read.locking
        return self._require_connection().query(statement, params)

    def write(self, statement: Statement, params: Sequence[Any]) -> None:
        self._require_connection().write(statement, params)

    def insert_rowid(self, statement: Statement, params: Sequence[Any]) -> int:
        return self._require_connection().insert_rowid(statement, params)

    def stream(self, statement: Statement, params: Sequence[Any], batch: int) -> Iterator[Row]:
        return self._require_connection().stream(statement, params, batch)

    # -- for operators and tests ----------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run `sql` (the driver's parameter style) in this unit's transaction, after whatever
        is pending; its rows, if it returns any."""
        return self._require_connection().text(sql, params)

    def _before_commit(self, connection: UnitConnection) -> None:
        """Queue what the feed needs sent with this COMMIT (see the module's docstring)."""
        ledger = self.sql.ledger
        if not self.sql.dialect.is_postgres:
            if self.unnumbered_seqs:
                connection.write(ledger.number,
                                 (min(self.unnumbered_seqs), max(self.unnumbered_seqs)))
            return
        for session_id in _status_changes_without_a_row(self.events[self._announced:]):
            connection.write(ledger.notify_status, (session_id,))

    def _forget(self) -> None:
        for cache in self._caches or ():
            cache.clear()
        self.reserved_seqs.clear()
        self.unnumbered_seqs.clear()

    def _require_connection(self) -> UnitConnection:
        if self._connection is None:
            raise RuntimeError("use the unit of work inside a `with` block")
        return self._connection


def _status_changes_without_a_row(events: Sequence[DomainEvent]) -> list[str]:
    """The Checkout Session ids of status changes among `events` that no ledger row of theirs
    came with, each once, in order."""
    with_a_row = {event.entry.session_id for event in events
                  if isinstance(event, CoinsCredited | CoinsDebited)}
    return list(dict.fromkeys(
        event.session_id for event in events
        if isinstance(event, PaymentStatusChanged)
        and event.session_id and event.session_id not in with_a_row
    ))
