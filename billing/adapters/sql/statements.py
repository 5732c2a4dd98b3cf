"""SQL text, built once per store for its database, never per call.

Building and compiling a SQLAlchemy statement costs more than running it on a fast database
(issue 11 measured 85 % of a worker's time in `Connection.execute`), so the repositories' SQL is
rendered here once, in the driver's own parameter style, and run through the raw DBAPI cursor
(connection.py) with rows mapped by position. The tables in tables.py stay the one description
of the schema: every statement names its columns from them, and a table's column list is checked
against them when the statements are built.

The repositories write SQL with "?" for each parameter. On Postgres a statement is also given a
name, so a connection can PREPARE it once and EXECUTE it by name afterwards (connection.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table

from billing.adapters.sql.types import as_utc, aware, from_sqlite_text, to_sqlite_text

# A row as the driver returns it, or as a repository writes it: values in the column order its
# repository gave TableSql, which builds every statement of the table from that order.
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement, rendered for one driver."""

    name: str  # unique per SQL text: what Postgres prepares it as
    sql: str  # in the driver's parameter style (%s for psycopg2, ? for sqlite3)
    prepare: bytes  # Postgres: PREPARE <name> AS <sql with $1, $2, ...>
    execute: str  # Postgres: EXECUTE <name>(%s, ...)


@dataclass(frozen=True, slots=True)
class Read:
    """A query in two forms: as a read-only unit runs it, and as a writing unit does (locking
    the rows it returns, FOR UPDATE, on Postgres; SQLite's writers hold the database's lock)."""

    plain: Statement
    locking: Statement


class Dialect:
    """How one database spells what the repositories say; built once per store."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_postgres = name == "postgresql"
        # Timestamps (types.py): psycopg2 adapts an aware datetime and returns one in the
        # session's time zone; sqlite3 stores and returns text.
        self.time_to_db: Callable[[datetime], Any] = aware if self.is_postgres else to_sqlite_text
        self.time_from_db: Callable[[Any], datetime] = (
            as_utc if self.is_postgres else from_sqlite_text
        )

    def statement(self, name: str, sql: str) -> Statement:
        assert "%" not in sql, "psycopg2 would read % as a placeholder"
        assert len(name) < 64, "Postgres would cut the name short (NAMEDATALEN)"
        parts = sql.split("?")
        if not self.is_postgres:
            return Statement(name, sql, b"", "")
        count = len(parts) - 1
        numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
        arguments = f"({', '.join(['%s'] * count)})" if count else ""
        return Statement(
            name, "%s".join(parts), f"PREPARE {name} AS {numbered}".encode(),
            f"EXECUTE {name}{arguments}",
        )

    def read(self, name: str, sql: str, *, skip_locked: bool = False) -> Read:
        """`sql` without a locking clause; a writer's form adds FOR UPDATE [SKIP LOCKED]
        (rows another unit holds are left out instead of waited for)."""
        plain = self.statement(name, sql)
        if not self.is_postgres:
            return Read(plain, plain)
        clause = " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"
        return Read(plain, self.statement(f"{name}_l", sql + clause))

    def time_or_none_to_db(self, value: datetime | None) -> Any:
        return None if value is None else self.time_to_db(value)

    def time_or_none_from_db(self, value: Any) -> datetime | None:
        return None if value is None else self.time_from_db(value)


class TableSql:
    """The statements every repository needs of its table: select by a condition, insert,
    update of the columns that changed, and insert-or-update of a row the unit never loaded.

    `columns` fixes the order of every row the repository reads or writes; it must name each
    column of `table` once.
    """

    def __init__(
        self, dialect: Dialect, table: Table, columns: Sequence[str], key: Sequence[str]
    ) -> None:
        assert sorted(columns) == sorted(table.c.keys()), f"{table.name}: columns differ"
        self.dialect = dialect
        self.table = table.name
        self.columns = tuple(columns)
        self.key = tuple(key)
        self.key_positions = tuple(self.columns.index(name) for name in key)
        self.select = f"SELECT {', '.join(self.columns)} FROM {self.table}"
        self.insert = self.statement("insert", self.insert_sql(self.columns))
        others = [name for name in self.columns if name not in key]
        updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in others)
        conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        self.upsert = self.statement("upsert", f"{self.insert_sql(self.columns)} {conflict}")
        self._updates: dict[tuple[int, ...], Statement] = {}

    def statement(self, name: str, sql: str) -> Statement:
        return self.dialect.statement(f"billing_{self.table}_{name}", sql)

    def read(self, name: str, where: str, *, skip_locked: bool = False) -> Read:
        """SELECT every column WHERE `where` (which may go on with ORDER BY and LIMIT)."""
        return self.dialect.read(
            f"billing_{self.table}_{name}", f"{self.select} WHERE {where}", skip_locked=skip_locked
        )

    def insert_sql(self, columns: Sequence[str]) -> str:
        return f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES ({_marks(len(columns))})"

    def update(self, changed: tuple[int, ...]) -> Statement:
        """UPDATE of the columns at positions `changed`, by key: parameters are the new values,
        then the key's. One statement per set of columns, made on first use and kept."""
        statement = self._updates.get(changed)
        if statement is None:
            assignments = ", ".join(f"{self.columns[i]} = ?" for i in changed)
            mask = sum(1 << i for i in changed)
            statement = self._updates.setdefault(changed, self.statement(
                f"update_{mask:x}", f"UPDATE {self.table} SET {assignments} WHERE {self.where_key}"
            ))
        return statement

    @property
    def where_key(self) -> str:
        return " AND ".join(f"{name} = ?" for name in self.key)


def _marks(count: int) -> str:
    return ", ".join(["?"] * count)
