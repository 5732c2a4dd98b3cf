"""A look at what psycopg2 sends, from below the store: every round trip it makes, and the query
text of each. Independent of the store's own round-trip counter, which the tests check against
it; also used by `python -m bench.db_ops`.

Installed with SQLAlchemy's public `do_connect` event, so only connections opened afterwards are
watched: attach before the store's first unit.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2.extensions
from sqlalchemy import Engine, event

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class DriverProbe:
    """Round trips counted at the driver: one per query psycopg2 sends (plus the BEGIN it sends
    first outside autocommit mode), one per COMMIT or ROLLBACK it sends."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.queries: list[bytes] = []
        self._lock = threading.Lock()

    def attach(self, *engines: Engine) -> None:
        probe = self

        class Cursor(psycopg2.extensions.cursor):
            def execute(self, query: Any, vars: Any = None) -> Any:
                connection = self.connection
                implicit_begin = (not connection.autocommit
                                  and connection.info.transaction_status == _IDLE)
                probe._sent(self.mogrify(query, vars), 2 if implicit_begin else 1)
                return super().execute(query, vars)

        class Connection(psycopg2.extensions.connection):
            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("cursor_factory", Cursor)
                return super().cursor(*args, **kwargs)

            def commit(self) -> None:
                self._end(b"COMMIT")
                super().commit()

            def rollback(self) -> None:
                self._end(b"ROLLBACK")
                super().rollback()

            def _end(self, what: bytes) -> None:
                if not self.autocommit and self.info.transaction_status != _IDLE:
                    probe._sent(what, 1)

        def use_probed_connections(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
            cparams["connection_factory"] = Connection

        for engine in {id(engine): engine for engine in engines}.values():
            event.listen(engine, "do_connect", use_probed_connections)

    def _sent(self, query: bytes, round_trips: int) -> None:
        with self._lock:
            self.round_trips += round_trips
            self.queries.append(query)
