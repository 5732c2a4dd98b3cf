"""What every SQL repository shares: its unit, its table's statements, its identity map.

A repository turns domain objects into rows (tuples in its table's column order, see
statements.py) and back; the unit decides how and when those rows travel (unit_of_work.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from billing.adapters.sql.identity import Key, RowCache
from billing.adapters.sql.statements import Read, Row, Statement, TableSql
from billing.domain.errors import TransientConflict

if TYPE_CHECKING:
    from billing.adapters.sql.unit_of_work import SqlUnitOfWork

# Rows fetched per round trip when a scan streams a whole table.
STREAM_BATCH = 1000


def key_of(table: TableSql, *columns: str) -> Key:
    """The function reading `columns` (one value, or a tuple of them) out of a row."""
    return itemgetter(*(table.columns.index(name) for name in columns))


class SqlRepository:
    def __init__(self, unit: SqlUnitOfWork, table: TableSql, keys: Sequence[Key]) -> None:
        self._unit = unit
        self._table = table
        self._cache: RowCache | None = unit.identity_map(keys)

    def _find(self, read: Read, key_number: int, key: Hashable, params: Sequence[Any]
              ) -> Row | None:
        """The row whose key number `key_number` is `key`: from the identity map if the unit
        has it, else by `read` (which the map then keeps)."""
        cache = self._cache
        if cache is not None:
            row = cache.find(key_number, key)
            if row is not None:
                return row
            if key_number == 0 and cache.known_absent(key):
                return None
        rows = self._unit.query(read, params)
        if not rows:
            return None
        if cache is not None:
            cache.put(rows[0])
        return rows[0]

    def _all(self, read: Read, params: Sequence[Any]) -> list[Row]:
        """Rows of a listing. They come from the database, which already has this unit's
        pending writes (sent with the query); a writer's listing locks them, so the map keeps
        them too."""
        rows = self._unit.query(read, params)
        if self._cache is not None:
            for row in rows:
                self._cache.put(row)
        return rows

    def _all_by(self, read: Read, key_number: int, keys: Sequence[Hashable]) -> list[Row]:
        """The rows whose key number `key_number` is one of `keys`, in one round trip (`read`
        takes them as one array); for the identity key, the map also learns which have none."""
        rows = self._all(read, (list(keys),))
        if self._cache is not None and key_number == 0:
            for key in keys:
                self._cache.absent(key)
        return rows

    def _stream(self, statement: Statement, params: Sequence[Any] = ()) -> Iterator[Row]:
        """Every row of `statement`, fetched in batches through a server-side cursor: a scan of
        the whole ledger never sits in memory at once. It takes no locks, even in a writing
        unit (scans are for the audit, which reads one snapshot), so the map keeps none."""
        return self._unit.stream(statement, params, STREAM_BATCH)

    def _add(self, row: Row, what: str) -> None:
        """INSERT `row` with the unit's next round trip. A key this unit already holds is a
        conflict now; one another unit holds surfaces when the INSERT reaches the database."""
        if self._cache is not None and self._cache.clashes(row, new=True):
            raise TransientConflict(f"duplicate {what}")
        self._unit.write(self._table.insert, row)
        if self._cache is not None:
            self._cache.put(row)

    def _save(self, row: Row, what: str) -> None:
        """Write what changed since the unit loaded the row (nothing, if nothing did); a row the
        unit never loaded is inserted or, if present, overwritten (as the memory store does)."""
        cache = self._cache
        old = None if cache is None else cache.find(0, cache.identity(row))
        if old is None:
            self._unit.write(self._table.upsert, row)
        else:
            changed = tuple(i for i, (new, was) in enumerate(zip(row, old, strict=True))
                            if new != was)
            if not changed:
                return
            if cache is not None and cache.clashes(row, new=False):
                raise TransientConflict(f"duplicate {what}")
            table = self._table
            self._unit.write(table.update(changed),
                             [*(row[i] for i in changed), *(row[i] for i in table.key_positions)])
        if cache is not None:
            cache.put(row)


def nullable(value: str) -> str | None:
    """An optional id: "" in the domain, NULL in a unique column (which ignores NULLs)."""
    return value or None


def text(value: str | None) -> str:
    return value or ""
