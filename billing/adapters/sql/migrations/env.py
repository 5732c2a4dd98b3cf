"""Alembic environment. Run migrations with `billing migrate` (billing.adapters.sql.migrate),
which passes an open connection in `config.attributes["connection"]`.

To write the next revision, compare against a database at head, e.g.:
    from alembic import command
    from billing.adapters.sql.schema import alembic_config
    with engine.begin() as c:
        command.revision(alembic_config(c), message="...", autogenerate=True)
then edit the generated file by hand.
"""

from alembic import context

from billing.adapters.sql.tables import metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `billing migrate`, which opens the connection")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later migrations copy-and-move tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
