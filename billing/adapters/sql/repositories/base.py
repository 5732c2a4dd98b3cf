"""What every SQL repository shares: the unit's transaction, row locks, insert-or-update,
streaming."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import RowMapping, Select, Table, and_, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from billing.adapters.sql.errors import translated_errors

if TYPE_CHECKING:
    from billing.adapters.sql.unit_of_work import SqlUnitOfWork

# Rows fetched per round trip when a scan streams a whole table.
STREAM_BATCH = 1000


class SqlRepository:
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._unit = unit

    def _locking(self, statement: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """A writing unit locks the rows it reads until it ends: FOR UPDATE on Postgres (SKIP
        LOCKED: rows another unit holds are left out instead of waited for). SQLite has no row
        locks; there a writing unit holds the whole database's write lock instead (BEGIN
        IMMEDIATE), which already keeps every other writer out."""
        if self._unit.read_only or self._unit.dialect_name == "sqlite":
            return statement
        return statement.with_for_update(skip_locked=skip_locked)

    def _first(self, statement: Select[Any], *, skip_locked: bool = False) -> RowMapping | None:
        locked = self._locking(statement, skip_locked=skip_locked)
        return self._unit.execute(locked).mappings().first()

    def _all(self, statement: Select[Any]) -> Sequence[RowMapping]:
        return self._unit.execute(self._locking(statement)).mappings().all()

    def _stream(self, statement: Select[Any]) -> Iterator[RowMapping]:
        """Every row of `statement`, fetched in batches through a server-side cursor: a scan of
        the whole ledger never sits in memory at once. It takes no locks, even in a writing
        unit (scans are for the audit, which reads one snapshot)."""
        with translated_errors():  # a connection lost halfway through a scan
            result = self._unit.stream(statement, STREAM_BATCH)
            yield from result.mappings()

    def _insert(self, table: Table, values: Mapping[str, object]) -> None:
        self._unit.execute(insert(table).values(dict(values)))

    def _insert_unless_present(self, table: Table, values: Mapping[str, object]) -> None:
        """INSERT ... ON CONFLICT DO NOTHING: never fails on a row another unit just added."""
        dialect = postgresql if self._unit.dialect_name == "postgresql" else sqlite
        self._unit.execute(dialect.insert(table).values(dict(values)).on_conflict_do_nothing())

    def _save(self, table: Table, key: Mapping[str, object], values: Mapping[str, object]) -> None:
        """Update the row with `key`, or insert it if there is none (as the memory store does)."""
        matches = and_(*(table.c[name] == value for name, value in key.items()))
        result = self._unit.execute(update(table).where(matches).values(dict(values)))
        if result.rowcount == 0:
            self._insert(table, {**key, **values})


def nullable(value: str) -> str | None:
    """An optional id: "" in the domain, NULL in a unique column (which ignores NULLs)."""
    return value or None


def text(value: str | None) -> str:
    return value or ""
