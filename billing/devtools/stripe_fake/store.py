"""The fake's state in one SQLite file: objects, events and their delivery, idempotency, timers.

Restarts and the CLI helpers (which talk to the running fake over HTTP) see the same state.
Used from the server's event loop only; each API call is one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,        -- the Stripe-shaped object
    private TEXT NOT NULL,     -- what Stripe knows but does not show (line items, card flow)
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL,
    delivery TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | dropped
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_response TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_due ON events (delivery, next_attempt_at);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    params TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS timers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    due REAL NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due);
"""


@dataclass(slots=True)
class Record:
    body: dict[str, Any]
    private: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    id: str
    type: str
    payload: str  # the JSON text sent and listed
    delivery: str
    attempts: int

    def as_object(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.payload)
        # Stripe's count of endpoints still to be delivered; 0 once delivered or given up.
        event["pending_webhooks"] = 1 if self.delivery == "pending" else 0
        return event


@dataclass(frozen=True, slots=True)
class StoredReply:
    path: str
    params: str
    status: int
    body: str


class FakeStripeStore:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # One connection, used from the server's event loop only (opened on app startup).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo just this block if it raises."""
        self._db.execute("SAVEPOINT operation")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO operation")
            self._db.execute("RELEASE operation")
            raise
        self._db.execute("RELEASE operation")

    # -- objects ----------------------------------------------------------------------------
    def get(self, object_id: str, kind: str) -> Record | None:
        row = self._db.execute(
            "SELECT body, private FROM objects WHERE id = ? AND kind = ?", (object_id, kind)
        ).fetchone()
        return None if row is None else Record(json.loads(row[0]), json.loads(row[1]))

    def put(self, kind: str, record: Record) -> None:
        self._db.execute(
            "INSERT INTO objects (id, kind, body, private, created) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET body = excluded.body, private = excluded.private",
            (record.body["id"], kind, json.dumps(record.body), json.dumps(record.private),
             record.body.get("created", 0)),
        )

    # -- events -----------------------------------------------------------------------------
    def add_event(self, event: dict[str, Any], now: float) -> None:
        self._db.execute(
            "INSERT INTO events (id, type, body, created, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            (event["id"], event["type"], json.dumps(event, indent=2), event["created"], now),
        )

    def last_event_seq(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0])

    def events_after(self, seq: int) -> list[StoredEvent]:
        return self._events("WHERE seq > ? ORDER BY seq", (seq,))

    def event(self, event_id: str) -> StoredEvent | None:
        found = self._events("WHERE id = ?", (event_id,))
        return found[0] if found else None

    def list_events(
        self,
        *,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        delivered: bool | None,
        types: list[str],
    ) -> tuple[list[StoredEvent], bool]:
        """Newest first, like Stripe: a page of at most `limit`, and whether more follow."""
        where: list[str] = []
        args: list[Any] = []
        if before_seq is not None:  # starting_after: older than that event
            where.append("seq < ?")
            args.append(before_seq)
        if after_seq is not None:  # ending_before: newer than that event
            where.append("seq > ?")
            args.append(after_seq)
        if delivered is not None:
            where.append("delivery = 'delivered'" if delivered else "delivery != 'delivered'")
        if types:
            where.append(f"type IN ({', '.join('?' for _ in types)})")
            args.extend(types)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # ending_before pages from the oldest side, then shows the page newest first.
        order = "ASC" if after_seq is not None and before_seq is None else "DESC"
        found = self._events(f"{clause} ORDER BY seq {order} LIMIT ?", (*args, limit + 1))
        page = found[:limit]
        if order == "ASC":
            page.reverse()
        return page, len(found) > limit

    def due_deliveries(self, now: float) -> list[StoredEvent]:
        return self._events(
            "WHERE delivery = 'pending' AND next_attempt_at <= ? ORDER BY seq", (now,)
        )

    def next_delivery_at(self) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM events WHERE delivery = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_delivery(
        self, event_id: str, delivery: str, *, attempts: int, next_attempt_at: float,
        last_response: str,
    ) -> None:
        self._db.execute(
            "UPDATE events SET delivery = ?, attempts = ?, next_attempt_at = ?,"
            " last_response = ? WHERE id = ?",
            (delivery, attempts, next_attempt_at, last_response, event_id),
        )

    def _events(self, clause: str, args: tuple[Any, ...]) -> list[StoredEvent]:
        rows = self._db.execute(
            f"SELECT seq, id, type, body, delivery, attempts FROM events {clause}", args
        ).fetchall()
        return [StoredEvent(*row) for row in rows]

    # -- idempotency ------------------------------------------------------------------------
    def reply(self, key: str) -> StoredReply | None:
        row = self._db.execute(
            "SELECT path, params, status, body FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else StoredReply(*row)

    def save_reply(self, key: str, reply: StoredReply, now: float) -> None:
        self._db.execute(
            "INSERT INTO idempotency (key, path, params, status, body, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, reply.path, reply.params, reply.status, reply.body, int(now)),
        )

    # -- timers -----------------------------------------------------------------------------
    def add_timer(self, due: float, action: str, target: str) -> None:
        self._db.execute(
            "INSERT INTO timers (due, action, target) VALUES (?, ?, ?)", (due, action, target)
        )

    def pop_due_timers(self, now: float) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT id, action, target FROM timers WHERE due <= ? ORDER BY due, id", (now,)
        ).fetchall()
        if rows:
            self._db.executemany("DELETE FROM timers WHERE id = ?", [(row[0],) for row in rows])
        return [(row[1], row[2]) for row in rows]

    def next_timer_at(self) -> float | None:
        row = self._db.execute("SELECT MIN(due) FROM timers").fetchone()
        return None if row[0] is None else float(row[0])
