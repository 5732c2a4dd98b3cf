"""SqlStore: the database as the use cases' UnitOfWorkFactory, plus what operators need."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from billing.adapters.sql import schema
from billing.adapters.sql.connection import Connector
from billing.adapters.sql.engine import build_engine, build_reader_engine
from billing.adapters.sql.repositories import RepositorySql
from billing.adapters.sql.unit_of_work import SqlUnitOfWork

if TYPE_CHECKING:
    from billing.ports import UnitOfWorkFactory

log = logging.getLogger(__name__)


def _uncounted() -> None:
    pass


class SqlStore:
    """Implements UnitOfWorkFactory over two pools (writers, readers) of one database.

    Creating a store connects to nothing: the first unit of work or ping does.

    `on_round_trip` is called once per round trip a unit or the ping makes (BEGIN and COMMIT
    included: on Postgres they travel with other statements), from the unit's thread.
    `prepared_statements` (Postgres): PREPARE each statement once per connection and EXECUTE it
    by name afterwards. Measured on the credit, SpendCoins and GetBalance paths (issue 11), it
    saves Postgres the parse and plan of every statement; turn it off behind a pooler in
    transaction mode (PgBouncer), where a session's prepared statements are not its own.
    """

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        *,
        pool_timeout_s: float = 10.0,
        sqlite_busy_timeout_s: float = 10.0,
        on_round_trip: Callable[[], None] | None = None,
        prepared_statements: bool = True,
    ) -> None:
        self.engine = build_engine(
            url,
            pool_size=pool_size,
            pool_timeout_s=pool_timeout_s,
            sqlite_busy_timeout_s=sqlite_busy_timeout_s,
            autocommit=True,
        )
        self.reader = build_reader_engine(
            self.engine, pool_size=pool_size, pool_timeout_s=pool_timeout_s
        )
        self._connector = Connector(
            self.engine, self.reader, prepared_statements=prepared_statements,
            count_round_trip=on_round_trip or _uncounted,
        )
        self._sql = RepositorySql.for_database(self.engine.dialect.name)

    def __repr__(self) -> str:
        return f"SqlStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def __call__(self, *, read_only: bool = False, snapshot: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self._connector, self._sql, read_only=read_only, snapshot=snapshot)

    unit_of_work = __call__

    def ping(self) -> bool:
        """True when the database answers SELECT 1; never raises (for /readyz and health). As
        a reader: on SQLite a writer's lock must not make the probe wait or fail."""
        try:
            self._connector.ping()
        except Exception as error:  # a probe answers, whatever went wrong
            log.info("database ping failed: %s", type(error).__name__)
            return False
        return True

    def check_schema(self) -> None:
        """Raise SchemaError (saying to run `billing migrate`) unless the schema is current;
        StoreUnavailable when the database cannot be reached."""
        schema.check_schema(self.engine)

    def pool_in_use(self) -> int:
        """Connections checked out of the pool right now (for the billing_db_pool_in_use gauge)."""
        pools = {id(e.pool): e.pool for e in (self.engine, self.reader)}.values()
        return sum(int(getattr(pool, "checkedout", lambda: 0)()) for pool in pools)

    def dispose(self) -> None:
        """Close every pooled connection (on shutdown)."""
        self.engine.dispose()
        self.reader.dispose()


if TYPE_CHECKING:  # mypy checks that the store and its units implement the ports

    def _implements_the_port(store: SqlStore) -> UnitOfWorkFactory:
        return store
