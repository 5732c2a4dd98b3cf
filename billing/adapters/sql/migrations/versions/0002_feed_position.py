"""Feed positions: ledger.feed_position, its sequence and indexes; existing rows numbered.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Every ledger row gets a position in one global feed after its transaction commits (issue 12).
The rows already there are numbered here, in seq order, a page per UPDATE: on Postgres from the
new sequence (which is thereby past the last position given), on SQLite with their seq (what
SQLite writers give from now on). The indexes are built after the backfill, once.

Written once and never edited: billing/adapters/sql/tables.py must keep matching the sum of the
migrations (tests/integration/sql/test_migrations.py compares them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows numbered per UPDATE; `config.attributes["feed_backfill_page"]` overrides it (tests).
BACKFILL_PAGE = 10_000

# The last seq of the next page, in seq order (the primary key's order).
PAGE_END = sa.text(
    "SELECT max(seq) FROM (SELECT seq FROM ledger WHERE seq > :after ORDER BY seq LIMIT :page)"
    " AS page"
)
# UPDATE has no ORDER BY: positions are drawn in an ordered sub-select, in a CTE (evaluated once,
# as it calls a volatile function), then written by seq.
NUMBER_POSTGRES = sa.text(
    "WITH numbered AS ("
    " SELECT seq, nextval('ledger_feed_position_seq') AS position FROM ("
    " SELECT seq FROM ledger WHERE seq > :after AND seq <= :last ORDER BY seq) AS page)"
    " UPDATE ledger SET feed_position = numbered.position FROM numbered"
    " WHERE ledger.seq = numbered.seq"
)
NUMBER_SQLITE = sa.text(
    "UPDATE ledger SET feed_position = seq WHERE seq > :after AND seq <= :last"
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("ledger", sa.Column("feed_position", sa.BigInteger(), nullable=True))
    if postgres:
        # CACHE 1: never handed out in blocks, so a later draw is always higher, whoever draws.
        op.execute("CREATE SEQUENCE ledger_feed_position_seq AS bigint CACHE 1"
                   " OWNED BY ledger.feed_position")
    _backfill(NUMBER_POSTGRES if postgres else NUMBER_SQLITE)
    op.create_index("ix_ledger_feed_position", "ledger", ["feed_position"], unique=True)
    op.create_index("ix_ledger_user_id_feed_position", "ledger", ["user_id", "feed_position"],
                    unique=False)
    unnumbered = sa.text("feed_position IS NULL")
    op.create_index("ix_ledger_seq", "ledger", ["seq"], unique=False,
                    postgresql_where=unnumbered, sqlite_where=unnumbered)


def _backfill(number: sa.TextClause) -> None:
    bind = op.get_bind()
    config = op.get_context().config
    page = int(config.attributes.get("feed_backfill_page", BACKFILL_PAGE) if config
               else BACKFILL_PAGE)
    after = 0  # seq starts at 1
    while True:
        last = bind.execute(PAGE_END, {"after": after, "page": page}).scalar()
        if last is None:
            return
        bind.execute(number, {"after": after, "last": last})
        after = last


def downgrade() -> None:
    op.drop_index("ix_ledger_seq", table_name="ledger")
    op.drop_index("ix_ledger_user_id_feed_position", table_name="ledger")
    op.drop_index("ix_ledger_feed_position", table_name="ledger")
    op.drop_column("ledger", "feed_position")  # and, on Postgres, the sequence it owns
