"""SQLAlchemy 2 adapter: Postgres (psycopg2) in production, SQLite as the embedded default.

    store = SqlStore(url)            # implements UnitOfWorkFactory; connects lazily
    with store() as unit: ...        # SqlUnitOfWork, rolls back unless committed
    migrate(url)                     # alembic upgrade head (`billing migrate`)
    store.check_schema()             # SchemaError unless migrated to this code's head
"""

from billing.adapters.sql.errors import SchemaError
from billing.adapters.sql.schema import migrate
from billing.adapters.sql.store import SqlStore
from billing.adapters.sql.unit_of_work import SqlUnitOfWork

__all__ = ["SchemaError", "SqlStore", "SqlUnitOfWork", "migrate"]
